"""`machine-monitor threshold`: re-set a saved model's alarm level from fresh recordings."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from machine_monitor import Detector
from machine_monitor.cli import main
from tests.conftest import PEAK


@pytest.fixture(scope="module")
def demo_model(recordings, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "demo"
    Detector(**PEAK).fit(sorted((recordings / "normal").glob("*.wav"))).save(path)
    return path


@pytest.fixture
def model(demo_model, tmp_path):
    return shutil.copytree(demo_model, tmp_path / "demo")


def test_recalibrate_on_fresh_normal_recordings_saves_the_model_in_place(model, recordings, capsys):
    normals = sorted((recordings / "test").glob("normal_*.wav"))
    before = Detector.load(model)
    assert main(["threshold", "--model", str(model), "--false-alarms-per-day", "1", *map(str, normals)]) == 0
    after = Detector.load(model)  # hashes were rewritten: it loads
    cal = after.calibration_
    # The model never heard these recordings: it scores them itself, no folds needed.
    assert "never heard" in cal["how"] and cal["n_recordings"] == len(normals)
    assert after.threshold_["n"] == len(normals) and after.threshold_["method"] == "gamma"
    assert cal["live"]["target_false_alarms_per_day"] == 1.0
    assert before.calibration_["live"]["target_false_alarms_per_day"] == 0.1
    out = capsys.readouterr()
    assert "clip threshold" in out.out and "live alerts" in out.out
    assert "only 6" in out.err  # six recordings are thin evidence, and it says so


def test_percentile_recalibration_is_that_percentile_of_the_fresh_scores(model, recordings, capsys):
    normals = sorted((recordings / "test").glob("normal_*.wav"))
    scores = Detector.load(model).score(normals)
    assert main(["threshold", "--model", str(model), "--method", "percentile", "--percentile", "50",
                 *map(str, normals)]) == 0
    after = Detector.load(model)
    assert after.threshold_["method"] == "percentile"
    assert after.threshold_value_ == pytest.approx(float(np.percentile(scores, 50)))
    assert "3 of their 6 clip scores above the new threshold" in capsys.readouterr().out


def test_contamination_from_a_known_mix_and_output_elsewhere(model, recordings, tmp_path):
    out = tmp_path / "recal"
    code = main(["threshold", "--model", str(model), "--method", "contamination", "--contamination", "0.25",
                 "--out", str(out), str(recordings / "test")])
    assert code == 0
    recal = Detector.load(out)
    assert recal.threshold_["method"] == "contamination"
    # 12 clips, 6 of them faulty: a 25 % cut flags the 3 worst, all faults.
    flagged = recal.predict(sorted((recordings / "test").glob("*.wav")))
    assert flagged.sum() == 3
    assert Detector.load(model).threshold_["method"] == "gamma"  # the original is untouched


def test_contamination_without_a_fraction_is_a_usage_error(model, recordings, capsys):
    assert main(["threshold", "--model", str(model), "--method", "contamination", str(recordings / "test")]) == 2
    assert "contamination" in capsys.readouterr().err
