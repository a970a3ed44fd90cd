"""Detector: fit on normal clips, score, predict, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from machine_monitor import AudioReadError, Detector, ModelError, NotFittedError
from machine_monitor.errors import ConfigError
from tests.conftest import FAST, PEAK, clicks, hum


def test_default_fit_is_a_cross_fitted_ensemble_with_an_out_of_fold_threshold(fitted_detector):
    det = fitted_detector
    assert det.ensemble_size == 5 and len(set(det.fold_of_)) == 5
    # Every one of the 15 clips scored by a network and a scorer that never saw it.
    assert det.threshold_["method"] == "gamma" and det.threshold_["percentile"] == 99.0
    assert det.threshold_["n_scores"] == 15
    assert det.feature_mean_.shape == det.feature_std_.shape == (128,)
    assert det.feature_mean_.dtype == np.float32
    assert {h["fold"] for h in det.history_} == set(range(5))  # early-stopped per network


def test_one_network_holds_out_whole_clips_for_early_stopping_and_threshold(normal_arrays):
    det = Detector(folds=1, **PEAK).fit(normal_arrays)
    assert det.ensemble_size == 1
    assert det.threshold_["n_scores"] == len(det.val_clips_) == 3  # 20 % of 15 clips, whole clips
    assert det.threshold_value_ > det.val_scores_.max()  # the gamma fit extrapolates past them
    assert 1 <= len(det.history_) <= 1000  # early-stopped


def test_an_ensemble_scores_new_audio_with_the_mean_of_its_networks(fitted_detector):
    y = hum(1.0, seed=77)
    f = fitted_detector._frames(y)
    each = [fitted_detector.scorer_.window_scores(fitted_detector._reconstruct(f, net))
            for net in fitted_detector.networks_]
    assert fitted_detector.score_signal(y) == pytest.approx(float(np.mean(each)))


def test_with_few_recordings_each_fold_network_learns_its_chosen_epochs_from_every_clip_outside_the_fold(
        normal_arrays):
    """Five recordings (fewer than base.REFIT_BELOW_RECORDINGS outside each fold): early
    stopping on held-out clips chooses a fold network's epochs, then the network learns that
    many from every clip outside its fold, none left unheard."""
    det = Detector(**PEAK).fit(normal_arrays, groups=[f"rec{i % 5}" for i in range(15)])
    for k in range(det.ensemble_size):
        hist = [h for h in det.history_ if h["fold"] == k]
        assert hist and all(h.get("refit") and "val_loss" not in h for h in hist)
    # Fifteen recordings (12 outside each fold): early stopping's own networks are kept.
    assert all("val_loss" in h and not h.get("refit") for h in Detector(**PEAK).fit(normal_arrays).history_)


def test_higher_score_means_more_anomalous(fitted_detector):
    normal = fitted_detector.score([hum(1.0, seed=s) for s in range(20, 25)])
    faulty = fitted_detector.score([clicks(1.0, seed=s) for s in range(20, 25)])
    assert faulty.min() > normal.max()
    assert fitted_detector.predict([clicks(1.0, seed=30)]).tolist() == [1]


def test_scores_paths_arrays_and_resampled_tuples_alike(fitted_detector, tmp_path):
    y = hum(1.0, seed=40)
    sf.write(tmp_path / "a.wav", y, 16_000, subtype="FLOAT")
    from_path, from_array = fitted_detector.score([tmp_path / "a.wav", y])
    assert from_path == pytest.approx(from_array, rel=1e-5)
    y48 = hum(3.0, seed=40)  # 48,000 samples: one second at 48 kHz
    assert np.isfinite(fitted_detector.score([(y48, 48_000)])).all()


def test_unfitted_detector_says_so():
    with pytest.raises(NotFittedError, match="not fitted"):
        Detector().score([hum()])


def test_fit_needs_two_clips():
    with pytest.raises(ConfigError, match="at least 2"):
        Detector(**FAST).fit([hum()])


def test_bad_clip_raises_an_error_naming_it(fitted_detector, tmp_path):
    with pytest.raises(AudioReadError, match="missing.wav"):
        fitted_detector.score([hum(), tmp_path / "missing.wav"])
    with pytest.raises(AudioReadError, match=r"array\[0\]: is digitally silent"):
        fitted_detector.score([np.zeros(16_000, np.float32)])


def test_training_is_deterministic_for_a_seed(normal_arrays):
    a = Detector(**FAST).fit(normal_arrays[:6])
    b = Detector(**FAST).fit(normal_arrays[:6])
    assert np.array_equal(a.score([clicks()]), b.score([clicks()]))


def test_save_load_round_trip_gives_identical_scores(fitted_detector, tmp_path):
    clips = [hum(1.0, seed=50), clicks(1.0, seed=51)]
    path = fitted_detector.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "model.json", "network.safetensors"]
    loaded = Detector.load(path)
    assert np.array_equal(loaded.score(clips), fitted_detector.score(clips))
    assert loaded.threshold_ == fitted_detector.threshold_


def test_model_json_describes_everything_needed(fitted_detector, tmp_path):
    m = json.loads((fitted_detector.save(tmp_path / "m") / "model.json").read_text())
    assert m["schema_version"] == 1 and m["sample_rate"] == 16_000
    # 1 s training clips: the 10 s peak span shrinks to the 28 frames of 128 ms a clip has.
    assert m["features"] == {"kind": "peak", "sr": 16_000, "n_fft": 2048, "hop_length": 512, "n_mels": 128,
                             "context": 28, "stride": 16, "fmax": 7400.0}
    assert m["network"] == {"input_dim": 128, "hidden": [128, 128, 128, 128], "bottleneck": 8, "ensemble": 5}
    assert m["scorer"]["name"] == "mahalanobis"
    assert m["threshold"]["method"] == "gamma" and "value" in m["threshold"]
    assert {"train", "validation"} <= set(m["scores"]) and m["scores"]["validation"]["n"] == 15
    assert {"numpy", "torch", "scikit-learn"} <= set(m["versions"])
    assert set(m["files"]) == {"arrays.safetensors", "network.safetensors"}


def test_saving_over_an_existing_model_replaces_it_whole(fitted_detector, tmp_path):
    fitted_detector.save(tmp_path / "m")
    (tmp_path / "m" / "stale.txt").write_text("from an older model")
    fitted_detector.save(tmp_path / "m")
    assert not (tmp_path / "m" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary leftovers


def test_tampered_weights_are_refused(fitted_detector, tmp_path):
    path = fitted_detector.save(tmp_path / "m")
    w = path / "network.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="network.safetensors: sha256 does not match"):
        Detector.load(path)


def test_feature_mismatch_is_refused_even_with_fixed_hashes(fitted_detector, tmp_path):
    path = fitted_detector.save(tmp_path / "m")
    m = json.loads((path / "model.json").read_text())
    m["features"]["n_mels"] = 64
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="does not match the features"):
        Detector.load(path)


@pytest.mark.parametrize("breakage, match", [
    (lambda p: (p / "model.json").unlink(), "not a model directory"),
    (lambda p: (p / "arrays.safetensors").unlink(), "arrays.safetensors: missing"),
    (lambda p: (p / "model.json").write_text("{"), "not valid JSON"),
])
def test_broken_model_directories_give_clear_errors(fitted_detector, tmp_path, breakage, match):
    path = fitted_detector.save(tmp_path / "m")
    breakage(path)
    with pytest.raises(ModelError, match=match):
        Detector.load(path)


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        Detector.load(tmp_path / "nothing")


def test_default_detector_pools_peak_spectra_over_the_training_clip_length(fitted_detector):
    cfg = fitted_detector.feature_config
    assert (cfg.kind, cfg.context, cfg.stack, cfg.window_dims) == ("peak", 28, 1, 128)
    assert fitted_detector.window_seconds() == pytest.approx((2048 + 27 * 512) / 16_000)
    # 2 s = 59 frames: spans start at frames 0 and 16, and the last one ends at the last frame.
    assert fitted_detector.window_scores(hum(2.0, seed=3)).shape == (3,)
    with pytest.raises(AudioReadError, match="shorter than one feature window"):
        fitted_detector.score([hum(0.5)])


def test_frame_autoencoder_is_the_dcase_baseline(normal_arrays):
    det = Detector(features="logmel", scorer="mse", **FAST).fit(normal_arrays)
    assert det.network_config_.input_dim == 640
    assert det.feature_config.context == 5
    normal = det.score([hum(1.0, seed=s) for s in range(20, 23)])
    assert det.score([clicks(1.0, seed=20)])[0] > normal.max()


def test_raw_features_work_end_to_end(normal_arrays):
    det = Detector(features="raw", **FAST).fit(normal_arrays)
    assert det.network_config_.input_dim == 1024
    assert np.isfinite(det.score([hum(1.0, seed=60)])).all()


def test_contamination_threshold_from_a_known_mix(fitted_detector):
    import copy

    det = copy.deepcopy(fitted_detector)
    mix = [hum(1.0, seed=s) for s in range(70, 79)] + [clicks(1.0, seed=80)]
    det.set_threshold(mix, contamination=0.1)
    assert det.threshold_["method"] == "contamination"
    assert det.predict(mix).sum() == 1


def test_a_stray_short_clip_is_left_out_instead_of_shrinking_the_span(caplog):
    clips = [hum(1.0, seed=s) for s in range(8)] + [hum(0.5, seed=99)]
    det = Detector(**PEAK).fit(clips)
    assert det.feature_config.context == 28  # the 1 s clips' 28 frames, not the short clip's 12
    assert det.skipped_clips_ == ["array[8]"] and det.n_clips_ == 8
    assert "array[8]: shorter than the other clips' 0.99 s span: not used for training" in caplog.text
