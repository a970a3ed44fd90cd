"""One-class SVM and isolation forest on segment statistics of the log-mel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from machine_monitor import Detector
from machine_monitor.detectors.baselines import IForestDetector, OCSVMDetector, segment_stats
from machine_monitor.errors import ConfigError
from tests.conftest import clicks, hum


def test_segment_stats_are_time_mean_and_std_per_band():
    w = np.arange(12, dtype=np.float32).reshape(1, 12)  # one window: 3 frames x 4 bands
    s = segment_stats(w, context=3)
    assert s.shape == (1, 8)
    assert s[0, :4].tolist() == [4, 5, 6, 7]
    assert np.allclose(s[0, 4:], np.std([0, 4, 8]))


@pytest.fixture(scope="module", params=[OCSVMDetector, IForestDetector], ids=["ocsvm", "iforest"])
def fitted(request):
    return request.param(context=16, seed=0).fit([hum(2.0, seed=s) for s in range(8)])


def test_higher_score_means_more_anomalous(fitted):
    normal = fitted.score([hum(2.0, seed=s) for s in range(20, 24)])
    faulty = fitted.score([clicks(2.0, seed=s) for s in range(20, 24)])
    assert faulty.min() > normal.max()
    assert fitted.predict([clicks(2.0, seed=30)]).tolist() == [1]
    # A window is a 16-frame segment (0.54 s): 61 frames in 2 s give 46 of them.
    assert fitted.window_scores(hum(2.0, seed=31)).shape == (46,)
    assert fitted.window_seconds() == pytest.approx((1024 + 15 * 512) / 16_000)


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    clips = [hum(2.0, seed=50), clicks(2.0, seed=51)]
    path = fitted.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "model.json", "scorer.skops"]
    assert json.loads((path / "model.json").read_text())["detector"] == fitted.kind
    loaded = Detector.load(path)
    assert type(loaded) is type(fitted)
    assert np.array_equal(loaded.score(clips), fitted.score(clips))


def test_peak_features_are_refused():
    with pytest.raises(ConfigError, match="logmel or raw"):
        IForestDetector(features="peak").fit([hum(), hum(seed=1)])


@pytest.mark.realaudio
@pytest.mark.slow
@pytest.mark.parametrize("cls", [OCSVMDetector, IForestDetector], ids=["ocsvm", "iforest"])
def test_trains_on_the_valve_split_and_reloads_identically(cls, valve_split, tmp_path):
    det = cls(seed=0).fit(valve_split["train"])
    scores = det.score(valve_split["test"][:30])
    assert scores.shape == (30,) and np.isfinite(scores).all() and np.isfinite(det.threshold_value_)
    assert det.clip_seconds_ == pytest.approx(10.0)
    assert np.array_equal(Detector.load(det.save(tmp_path / "m")).score(valve_split["test"][:5]), scores[:5])
