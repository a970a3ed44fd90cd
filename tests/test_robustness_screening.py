"""Bad-clip screening: clips that do not belong are left out (named), a majority of odd clips is refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from machine_monitor.errors import ConfigError
from machine_monitor.screening import ClipStats, screen_clips, signal_stats, warn_left_out
from tests.conftest import hum

CHAIN = {"sample_rate": 16_000, "format": "WAV", "channels": 1}


def good(n=12, seconds=2.0):
    return [signal_stats(hum(seconds, seed=s), f"good{s}.wav", chain=CHAIN) for s in range(n)]


def reasons(result):
    return {d["clip"]: d["reason"] for d in result.left_out}


def test_constant_clip_is_left_out_and_named():
    dc = signal_stats(np.full(32_000, 0.3, np.float32), "dc.wav", chain=CHAIN)
    r = screen_clips(good() + [dc])
    assert list(reasons(r)) == ["dc.wav"]
    assert reasons(r)["dc.wav"].startswith("constant signal (DC offset +0.3")
    assert r.keep.tolist() == [True] * 12 + [False]


def test_half_level_and_double_level_clips_are_left_out():
    half = signal_stats(hum(2.0, seed=40) * 0.5, "half.wav", chain=CHAIN)
    loud = signal_stats(hum(2.0, seed=41) * 2.0, "loud.wav", chain=CHAIN)
    r = screen_clips(good() + [half, loud])
    assert reasons(r)["half.wav"].startswith("level") and "-6.0 dB" in reasons(r)["half.wav"]
    assert "+6.0 dB" in reasons(r)["loud.wav"]
    assert len(r.left_out) == 2


def test_clip_from_another_recording_chain_is_left_out():
    other = signal_stats(hum(2.0, seed=50), "phone.ogg", chain={"sample_rate": 44_100, "format": "OGG", "channels": 2})
    r = screen_clips(good() + [other])
    assert "sample rate 44100 Hz, most clips 16000 Hz" in reasons(r)["phone.ogg"]
    assert "channel count 2" in reasons(r)["phone.ogg"]
    lossy = signal_stats(hum(2.0, seed=51), "same_mic.ogg", chain={**CHAIN, "format": "OGG"})
    assert reasons(screen_clips(good() + [lossy]))["same_mic.ogg"].startswith("coding lossy, most clips lossless")


def test_clip_with_another_spectrum_is_left_out_but_a_group_of_them_is_a_mode():
    def screech(seed):
        # Same level as the others, energy two octaves higher.
        return signal_stats(hum(2.0, seed=seed, f0=2_400.0), f"s{seed}.wav", chain=CHAIN)

    r = screen_clips(good(20) + [screech(60)])
    assert "spectrum" in reasons(r)["s60.wav"]
    # Three clips like it: another operating mode of the machine, kept.
    r = screen_clips(good(20) + [screech(60), screech(61), screech(62), screech(63)])
    assert r.left_out == []


def test_natural_spread_is_not_screened():
    rng = np.random.default_rng(0)
    clips = [signal_stats(hum(2.0, seed=s) * rng.uniform(0.8, 1.25), f"c{s}", chain=CHAIN) for s in range(30)]
    assert screen_clips(clips).left_out == []


def test_refuses_when_too_few_clips_remain():
    dc = [signal_stats(np.full(32_000, v, np.float32), f"dc{v}.wav") for v in (0.1, 0.2)]
    with pytest.raises(ConfigError, match=r"only 1 of 3 training clips .* left out dc0\.1\.wav: constant signal"):
        screen_clips([signal_stats(hum(2.0), "ok.wav")] + dc)
    # Half of the clips odd: no majority says what normal is.
    dead = [signal_stats(np.full(32_000, 0.1 * s, np.float32), f"dead{s}.wav", chain=CHAIN) for s in range(1, 5)]
    with pytest.raises(ConfigError, match=r"only 4 of 8 training clips .* too few to learn"):
        screen_clips(good(4) + dead)


def test_with_few_clips_only_the_absolute_check_runs():
    # Two or three clips cannot estimate a spread: a quieter one is kept, a constant one is not.
    r = screen_clips([signal_stats(hum(2.0), "a"), signal_stats(hum(2.0, seed=1) * 0.5, "b"),
                      signal_stats(hum(2.0, seed=2), "c")])
    assert r.left_out == []


def test_blockwise_statistics_equal_whole_signal_statistics():
    y = hum(7.3, seed=3)
    whole = signal_stats(y, "a", block=len(y))
    parts = ClipStats("a")
    for i in range(0, len(y), 12_345):
        parts.update(y[i:i + 12_345])
    assert parts.level_db == pytest.approx(whole.level_db, abs=1e-6)
    assert np.allclose(parts.bands_db(), whole.bands_db(), atol=1e-3)


def test_warning_names_each_clip(caplog):
    dc = signal_stats(np.full(32_000, 0.3, np.float32), "dc.wav", chain=CHAIN)
    with caplog.at_level(logging.WARNING):
        warn_left_out(screen_clips(good() + [dc]))
    assert "dc.wav: left out of training: constant signal" in caplog.text


def test_record_is_json_ready():
    import json

    r = screen_clips(good() + [signal_stats(np.full(32_000, 0.3, np.float32), "dc.wav", chain=CHAIN)])
    rec = json.loads(json.dumps(r.record()))
    assert rec["n_clips"] == 13 and rec["n_kept"] == 12 and rec["left_out"][0]["clip"] == "dc.wav"


@pytest.mark.parametrize("kind", ["logmel", "raw", "peak"])
def test_training_clips_are_read_in_blocks_with_the_same_frames(tmp_path, kind, monkeypatch):
    import soundfile as sf

    import machine_monitor.screening as scr
    from machine_monitor.audio.io import load_audio
    from machine_monitor.features import FeatureConfig, frames
    from machine_monitor.screening import read_training_clip

    cfg = FeatureConfig.for_kind(kind)
    p = tmp_path / "long.wav"
    sf.write(p, hum(25.3, seed=4), 16_000, subtype="FLOAT")
    monkeypatch.setattr(scr, "LONG_FILE_SECONDS", 5.0)  # stream this 25 s file as a long one
    monkeypatch.setattr(scr, "FEATURE_BLOCK_SECONDS", 3.3)
    f, stats = read_training_clip(p, cfg)
    whole = frames(load_audio(p), cfg)
    assert f.shape == whole.shape
    assert np.allclose(f, whole, atol=1e-3)
    assert stats.n == 25.3 * 16_000 and stats.chain["sample_rate"] == 16_000


def test_training_clip_validation_names_the_clip(tmp_path):
    from machine_monitor.errors import AudioReadError, SilentAudioError
    from machine_monitor.features import FeatureConfig
    from machine_monitor.screening import read_training_clip

    cfg = FeatureConfig.for_kind("logmel")
    y = hum(1.0)
    y[10] = np.nan
    with pytest.raises(AudioReadError, match=r"array\[3\]: contains 1 non-finite"):
        read_training_clip(y, cfg, name="array[3]")
    with pytest.raises(SilentAudioError, match="digitally silent"):
        read_training_clip(np.zeros(16_000, np.float32), cfg)
    with pytest.raises(AudioReadError, match="shorter than one feature window"):
        read_training_clip(hum(0.01), cfg)


# -- in training ---------------------------------------------------------------------
@pytest.mark.slow
def test_one_bad_clip_no_longer_switches_the_detector_off(fitted_detector, normal_arrays):
    # Issue 14: one DC clip raised the threshold 10,000-fold, one half-level clip hid every fault.
    from machine_monitor import Detector
    from tests.conftest import PEAK

    dc = np.full(16_000, 0.3, np.float32)
    det = Detector(**PEAK).fit(normal_arrays + [dc, normal_arrays[3] * 0.5])
    assert [d["clip"] for d in det.screening_["left_out"]] == ["array[15]", "array[16]"]
    assert det.threshold_value_ == pytest.approx(fitted_detector.threshold_value_)
    assert det.n_clips_ == fitted_detector.n_clips_


@pytest.mark.slow
def test_files_from_another_chain_are_left_out_and_recorded_in_model_json(tmp_path, caplog):
    import json

    import soundfile as sf
    import soxr

    from machine_monitor import Detector

    for s in range(10):
        sf.write(tmp_path / f"n{s:02d}.wav", hum(1.0, seed=s), 16_000)
    sf.write(tmp_path / "phone.wav", soxr.resample(hum(1.0, seed=20), 16_000, 44_100), 44_100)
    sf.write(tmp_path / "dc.wav", np.full(16_000, 0.25, np.float32), 16_000)
    files = sorted(tmp_path.glob("*.wav"))
    with caplog.at_level(logging.WARNING):
        det = Detector(features="logmel", epochs=2, patience=1, folds=1, seed=0).fit(files)
    assert f"{tmp_path / 'phone.wav'}: left out of training: sample rate 44100 Hz" in caplog.text
    assert f"{tmp_path / 'dc.wav'}: left out of training: constant signal" in caplog.text
    m = json.loads((det.save(tmp_path / "model") / "model.json").read_text())
    screening = m["training"]["screening"]
    assert [d["clip"] for d in screening["left_out"]] == [str(tmp_path / "dc.wav"), str(tmp_path / "phone.wav")]
    assert screening["n_kept"] == 10
    assert screening["chain"] == {"channels": 1, "format": "WAV", "sample_rate": 16_000}


def test_training_refuses_when_too_few_clips_remain(normal_arrays):
    from machine_monitor import Detector

    dc = [np.full(16_000, v, np.float32) for v in (0.1, 0.2)]
    with pytest.raises(ConfigError, match=r"only 1 of 3 training clips .* left out array\[1\]: constant signal"):
        Detector(features="logmel", epochs=1).fit([normal_arrays[0], *dc])


# -- out of fold: a recording of the right machine and level that is not normal ------------------
def _knocked(seed: int, amp: float) -> np.ndarray:
    """A hum with three short knocks: its level and mean spectrum pass the screening above."""
    y = hum(1.0, seed=seed).copy()
    for t in (3000, 8000, 13000):
        y[t:t + 80] += amp * np.hanning(80).astype(np.float32) * np.sign(
            np.random.default_rng(t).standard_normal(80)).astype(np.float32)
    return y


def test_out_of_fold_outliers_are_the_recordings_far_above_the_others():
    from machine_monitor.threshold import out_of_fold_outliers

    rng = np.random.default_rng(0)
    scores = np.exp(rng.normal(3.0, 0.2, 30))  # distances of 30 normal recordings
    recordings = np.arange(30)
    assert out_of_fold_outliers(scores, recordings) == []
    scores[7] = 40 * scores[7]
    [(rec, score, z)] = out_of_fold_outliers(scores, recordings)
    assert rec == 7 and score == scores[7] and z > 6
    # Units of one recording count as one (its worst); fewer than 5 recordings: no statistics.
    assert out_of_fold_outliers(np.r_[scores, 1.0], np.r_[recordings, 7])[0][0] == 7
    assert out_of_fold_outliers(scores[:4], recordings[:4]) == []
    # At most a tenth of the recordings, worst first.
    scores[[3, 11, 19, 25]] *= [30, 60, 90, 120]
    assert [r for r, _, _ in out_of_fold_outliers(scores, recordings)] == [25, 19, 11]
    # Standardised scores are compared as they are, not as logs.
    z_scores = rng.normal(0.0, 1.0, 30)
    z_scores[4] = 12.0
    assert [r for r, _, _ in out_of_fold_outliers(z_scores, recordings, scale="z")] == [4]


@pytest.mark.parametrize("amp", [0.1, 0.3])
def test_a_faulty_recording_among_normal_ones_is_left_out_by_its_out_of_fold_score(fitted_detector, normal_arrays,
                                                                                  amp):
    # Issue 14: "robust statistics across clips: level, spectrum, out-of-fold score". Knocks
    # at 0.3 passed the level and spectrum checks and lifted the threshold 100-fold (284 -> 27,152).
    from machine_monitor import Detector
    from tests.conftest import PEAK

    det = Detector(**PEAK).fit(normal_arrays + [_knocked(99, amp)])
    [left] = det.screening_["left_out"]
    assert left["clip"] == "array[15]" and left["reason"].startswith("out-of-fold score")
    assert det.screening_["out_of_fold"]["left_out"] == 1 and det.screening_["n_kept"] == 15
    assert det.threshold_value_ == pytest.approx(fitted_detector.threshold_value_)


def test_a_suspect_the_refitted_model_does_not_flag_is_kept(fitted_detector, normal_arrays, monkeypatch):
    # Out-of-fold scores only raise a suspicion: a model fitted without the suspect must flag it.
    import machine_monitor.threshold as threshold
    from machine_monitor import Detector
    from tests.conftest import PEAK

    monkeypatch.setattr(threshold, "out_of_fold_outliers", lambda *a, **k: [(3, 1e6, 99.0)])
    det = Detector(**PEAK).fit(normal_arrays)
    assert det.screening_["left_out"] == [] and det.screening_["out_of_fold"]["suspects"] == 1
    assert det.n_clips_ == fitted_detector.n_clips_
    assert det.threshold_value_ == pytest.approx(fitted_detector.threshold_value_)
