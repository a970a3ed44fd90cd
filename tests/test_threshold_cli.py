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


def test_recalibrate_on_fresh_normal_recordings_saves_the_model_in_place(model, recordings, capsys, caplog):
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
    assert caplog.text.count("clip threshold rests on only 6") == 1  # thin evidence, and it says so (once)


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


def test_the_model_keeps_a_fingerprint_of_every_recording_it_trained_on(model, recordings):
    assert len(Detector.load(model).training_fingerprints_) == len(list((recordings / "normal").glob("*.wav")))


def test_recordings_the_model_trained_on_are_refused_under_any_name(model, recordings, tmp_path, capsys):
    # Re-calibrating on the training folder (a natural mistake) would set thresholds from
    # scores the networks learnt: far too low, a flood of false alarms. Renamed copies too.
    again = tmp_path / "renamed"
    again.mkdir()
    for f in sorted((recordings / "normal").glob("*.wav"))[:4]:
        shutil.copy(f, again / f"recent_{f.name}")
    before = Detector.load(model).threshold_value_
    for method in (["--method", "gamma"], ["--method", "contamination", "--contamination", "0.25"]):
        assert main(["threshold", "--model", str(model), *method, str(again)]) == 2
        assert "all 4 recordings trained this model" in capsys.readouterr().err
    assert Detector.load(model).threshold_value_ == before  # nothing saved


def test_heard_recordings_in_a_mix_are_left_out_and_named(model, recordings, tmp_path, caplog):
    mix = tmp_path / "mix"
    mix.mkdir()
    for f in sorted((recordings / "normal").glob("*.wav"))[:3]:
        shutil.copy(f, mix / f"old_{f.name}")
    normals = sorted((recordings / "test").glob("normal_*.wav"))
    for f in normals:
        shutil.copy(f, mix / f.name)
    assert main(["threshold", "--model", str(model), str(mix)]) == 0
    assert Detector.load(model).calibration_["n_recordings"] == len(normals)
    assert f"3 of the {3 + len(normals)} recordings trained this model and were left out (old_" in caplog.text


def test_recordings_of_the_stopped_machine_are_left_out_and_named(model, recordings, tmp_path, caplog, capsys):
    import soundfile as sf

    recent = tmp_path / "recent"
    recent.mkdir()
    normals = sorted((recordings / "test").glob("normal_*.wav"))
    for f in normals:
        shutil.copy(f, recent / f.name)
    y, sr = sf.read(normals[0], dtype="float32")
    sf.write(recent / "weekend.wav", 0.003 * y, sr)  # -50 dB: the machine was off
    before = Detector.load(model)
    assert main(["threshold", "--model", str(model), str(recent)]) == 0
    after = Detector.load(model)
    # Scored, the quiet recording would have pushed the clip threshold far above every fault.
    assert after.calibration_["n_recordings"] == len(normals)
    assert after.threshold_value_ < 2 * before.threshold_value_
    assert f"1 of the {1 + len(normals)} recordings were left out: the machine was stopped in (part of) them" \
        in caplog.text
    assert "weekend.wav" in caplog.text
    off = tmp_path / "off"
    off.mkdir()
    shutil.move(recent / "weekend.wav", off / "weekend.wav")
    capsys.readouterr()
    assert main(["threshold", "--model", str(model), str(off)]) == 2
    assert "in the one recording the machine was stopped" in capsys.readouterr().err


def test_a_recording_with_the_machine_stopped_for_a_window_or_longer_is_left_out_too(model, recordings, tmp_path,
                                                                                     caplog):
    import soundfile as sf

    from machine_monitor.detectors.calibration import recalibrate

    normals = sorted((recordings / "test").glob("normal_*.wav"))
    y, sr = sf.read(normals[0], dtype="float32")
    paused = tmp_path / "paused.wav"  # running, stopped for 4 s (longer than a live window), running again
    sf.write(paused, np.concatenate([y, 0.003 * y, 0.003 * y[: sr], y]), sr)
    det = Detector.load(model)
    window = det.calibration_["live"]["window_seconds"]
    assert window < 4.0
    cal = recalibrate(det, [*normals, paused])
    assert cal["n_recordings"] == len(normals) and "paused.wav" in caplog.text
    blip = tmp_path / "blip.wav"  # a quiet second: shorter than a window, the monitor would score around it
    sf.write(blip, np.concatenate([y, 0.003 * y[: sr], y]), sr)
    assert recalibrate(Detector.load(model), [*normals, blip])["n_recordings"] == len(normals) + 1


def test_the_library_recalibration_refuses_them_too(model, recordings):
    from machine_monitor.detectors.calibration import recalibrate
    from machine_monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="all 2 recordings trained this model"):
        recalibrate(Detector.load(model), sorted((recordings / "normal").glob("*.wav"))[:2])
