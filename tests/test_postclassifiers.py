"""Post-classifiers on the reconstruction difference: hist-rf, diff-rf, iforest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from machine_monitor import Detector, ModelError
from machine_monitor.errors import ConfigError
from machine_monitor.scorers.postclassifiers import (
    DifferenceForestScorer,
    HistogramForestScorer,
    HistogramIsolationForestScorer,
    difference_histogram,
    out_of_fold_scores,
)
from machine_monitor.scorers.registry import make_scorer
from machine_monitor.scorers.residual import Reconstruction
from tests.conftest import FAST, clicks, hum

SMALL = {"n_estimators": 40}


def rec(seed: int, *, anomalous: bool = False, noise: float = 0.3, n: int = 30, context: int = 5,
        dims: int = 8) -> Reconstruction:
    """A synthetic reconstruction: anomalous clips have a few windows badly off in the top bands."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, context * dims)).astype(np.float32)
    x_hat = x + noise * rng.standard_normal(x.shape).astype(np.float32)
    if anomalous:
        bad = x_hat.reshape(n, context, dims)
        bad[: n // 10 + 1, :, dims // 2:] -= 3.0  # 1 window in 10: the top half of the bands
    return Reconstruction(x=x, x_hat=x_hat)


@pytest.fixture(scope="module")
def labelled():
    recons = [rec(s) for s in range(16)] + [rec(100 + s, anomalous=True) for s in range(8)]
    return recons, np.r_[np.zeros(16, int), np.ones(8, int)]


def test_difference_histogram_has_fixed_bins_per_band_group_and_each_sums_to_one():
    # One window of 2 frames x 3 bands: frame 0 = (-20, -1, 0.1), frame 1 = (0.2, 9.9, 30).
    z = np.array([[-20.0, -1.0, 0.1, 0.2, 9.9, 30.0]], np.float32)
    h = difference_histogram(z, context=2, bins=4, value_range=10.0, bands=3).reshape(3, 4)
    # bins [-10,-5) [-5,0) [0,5) [5,10]; values outside the range count in the outer bins
    assert h.tolist() == [[0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.5, 0.5]]
    two = difference_histogram(z, context=2, bins=4, value_range=10.0, bands=1)
    assert np.allclose(two, [1 / 6, 1 / 6, 2 / 6, 2 / 6])
    with pytest.raises(ConfigError, match="bands"):
        difference_histogram(z, context=2, bands=4)


def test_registered_as_scorers_by_name():
    assert isinstance(make_scorer("hist-rf"), HistogramForestScorer)
    assert isinstance(make_scorer("diff-rf"), DifferenceForestScorer)
    assert isinstance(make_scorer("iforest"), HistogramIsolationForestScorer)
    assert make_scorer("hist-rf").supervised and not make_scorer("iforest").supervised


@pytest.mark.parametrize("name", ["hist-rf", "diff-rf"])
def test_forests_score_the_probability_of_the_anomaly_class(labelled, name):
    recons, y = labelled
    scorer = make_scorer(name, context=5, bands=4, **SMALL) if name == "hist-rf" else make_scorer(name, **SMALL)
    scorer.fit(recons, y)
    s = scorer.score([rec(500), rec(501), rec(600, anomalous=True), rec(601, anomalous=True)])
    assert ((s >= 0) & (s <= 1)).all()
    assert s[2:].min() > s[:2].max()  # higher = more anomalous
    assert scorer.window_scores(recons[0]).shape == (30,)


def test_an_unknown_scorer_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="'hist-rf'.*trees"):
        make_scorer("hist-rf", trees=5)


def test_supervised_forest_needs_both_classes(labelled):
    recons, y = labelled
    with pytest.raises(ConfigError, match="labelled anomalies"):
        make_scorer("hist-rf").fit(recons)
    with pytest.raises(ConfigError, match="both normal and anomalous"):
        make_scorer("hist-rf").fit(recons[:16], y[:16])


def test_isolation_forest_learns_from_normal_clips_only_and_higher_is_more_anomalous(labelled):
    recons, y = labelled
    scorer = make_scorer("iforest", context=5, bands=1, bins=8, n_estimators=200).fit(recons[:16])
    normal = scorer.score([rec(700 + s) for s in range(5)])
    # An isolation forest only splits within the range it saw: this fault widens the
    # whole residual distribution (a machine the network no longer knows).
    faulty = scorer.score([rec(800 + s, noise=0.6) for s in range(5)])
    assert faulty.min() > normal.max()


def test_out_of_fold_scores_never_come_from_a_forest_that_saw_the_clip(labelled):
    recons, y = labelled
    scorer = make_scorer("hist-rf", context=5, bands=4, **SMALL)
    oof = out_of_fold_scores(scorer, recons, y, n_splits=4, seed=0)
    in_sample = make_scorer("hist-rf", context=5, bands=4, **SMALL).fit(recons, y).score(recons)
    # A forest scoring its own training clips is nearly certain; out-of-fold it is not.
    assert np.abs(in_sample - y).mean() < np.abs(oof - y).mean()
    assert np.array_equal(oof, out_of_fold_scores(scorer, recons, y, n_splits=4, seed=0))  # seeded


@pytest.fixture(scope="module")
def hist_rf_detector():
    normal = [hum(1.0, seed=s) for s in range(10)]
    faults = [clicks(1.0, seed=s) for s in range(100, 106)]
    return Detector(features="logmel", scorer="hist-rf", scorer_params=SMALL, **FAST).fit(normal, anomalies=faults)


def test_detector_with_anomalies_fits_a_forest_and_thresholds_on_held_out_normal_clips(hist_rf_detector):
    det = hist_rf_detector
    assert det.n_anomalies_ == 6 and det.scorer_.context == 5
    # Only 2 held-out normal clips: no distribution can be fitted, so the clip threshold is their
    # maximum, and the calibration says how thin that is (see test_calibration*).
    assert det.threshold_["method"] == "max" and det.threshold_["n_scores"] == len(det.val_clips_) == 2
    normal = det.score([hum(1.0, seed=s) for s in range(20, 24)])
    faulty = det.score([clicks(1.0, seed=s) for s in range(20, 24)])
    assert faulty.min() > normal.max()
    assert det.predict([clicks(1.0, seed=30)]).tolist() == [1]
    assert det.window_scores(hum(1.0, seed=31)).shape == (26,)  # 30 frames in 1 s, windows of 5


def test_detector_refuses_anomalies_for_an_unsupervised_scorer_and_vice_versa():
    normal = [hum(1.0, seed=s) for s in range(4)]
    with pytest.raises(ConfigError, match="hist-rf or diff-rf"):
        Detector(scorer="mse", **FAST).fit(normal, anomalies=[clicks()])
    with pytest.raises(ConfigError, match="labelled anomalies"):
        Detector(scorer="diff-rf", **FAST).fit(normal)


def test_save_load_round_trip_gives_identical_scores(hist_rf_detector, tmp_path):
    clips = [hum(1.0, seed=50), clicks(1.0, seed=51)]
    path = hist_rf_detector.save(tmp_path / "m")
    assert (path / "scorer.skops").is_file()
    m = json.loads((path / "model.json").read_text())
    assert m["detector"] == "ae" and m["scorer"]["name"] == "hist-rf" and m["training"]["n_anomalies"] == 6
    loaded = Detector.load(path)
    assert np.array_equal(loaded.score(clips), hist_rf_detector.score(clips))
    assert loaded.threshold_ == hist_rf_detector.threshold_


def test_a_skops_file_with_a_type_outside_the_allow_list_is_refused(hist_rf_detector, tmp_path):
    import hashlib

    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    path = hist_rf_detector.save(tmp_path / "m")
    # skops itself trusts every scikit-learn class; the model directory trusts only its own.
    x = np.random.default_rng(0).standard_normal((20, 2))
    sio.dump({"estimator": LogisticRegression().fit(x, x[:, 0] > 0)}, path / "scorer.skops")
    m = json.loads((path / "model.json").read_text())
    m["files"]["scorer.skops"] = hashlib.sha256((path / "scorer.skops").read_bytes()).hexdigest()
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="outside the trusted list: .*LogisticRegression"):
        Detector.load(path)


# -- real audio: the DCASE 2023 valve split ------------------------------------------


@pytest.fixture(scope="module")
def valve_hist_rf(valve_split):
    """The default front-end's AE on the training list; the forest also gets the first 40 anomalous test clips."""
    anomalies = [p for p, label in zip(valve_split["test"], valve_split["labels"]) if label][:40]
    det = Detector(scorer="hist-rf", scorer_params={"n_estimators": 100}, seed=0).fit(valve_split["train"],
                                                                                      anomalies=anomalies)
    return det, anomalies


@pytest.mark.realaudio
@pytest.mark.slow
def test_hist_rf_cross_validated_on_valve_beats_the_reconstruction_error(valve_hist_rf, valve_split):
    from sklearn.metrics import roc_auc_score

    det, _ = valve_hist_rf
    y = valve_split["labels"]
    # The network trained on normal training clips only; forests are cross-validated over the test clips.
    recons = [det.reconstruct_signal(det.load_signal(p)) for p in valve_split["test"]]
    oof = out_of_fold_scores(make_scorer("hist-rf", context=det.scorer_.context, n_estimators=100), recons, y,
                             seed=0)
    mse = [float(np.mean(np.square(r.residual))) for r in recons]
    # Measured (seed 0): 0.997 for hist-rf, 5-fold CV, against 0.925 for the mean squared error.
    assert roc_auc_score(y, oof) >= 0.97 > roc_auc_score(y, mse)


@pytest.mark.realaudio
@pytest.mark.slow
def test_hist_rf_detector_on_valve_flags_unseen_faults_and_reloads_identically(valve_hist_rf, valve_split, tmp_path):
    from sklearn.metrics import roc_auc_score

    det, seen = valve_hist_rf
    assert det.n_anomalies_ == 40 and np.isfinite(det.threshold_value_)
    rest = [p for p in valve_split["test"] if p not in seen]
    labels = np.array([int(label) for p, label in zip(valve_split["test"], valve_split["labels"]) if p not in seen])
    scores = det.score(rest)  # 50 normal clips and 60 faults the forest never saw
    assert roc_auc_score(labels, scores) >= 0.95  # measured: 0.997
    loaded = Detector.load(det.save(tmp_path / "valve"))
    assert np.array_equal(loaded.score(rest[:10]), scores[:10])
