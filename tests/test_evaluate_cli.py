"""`machine-monitor evaluate` end to end on the demo recordings: report, JSON, plots, bad clips."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from machine_monitor.cli import main
from machine_monitor.reports.evaluate import evaluate_scores, infer_label
from machine_monitor.reports.plots import PLOT_FILES


@pytest.fixture(scope="module")
def demo_model(recordings, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "demo"
    assert main(["-q", "train", str(recordings / "normal"), "--out", str(out), "--epochs", "10", "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def demo_run(demo_model, recordings, tmp_path_factory):
    """One evaluation of recordings/test with --json and --plots, shared by several tests."""
    out = tmp_path_factory.mktemp("evaluate")
    argv = ["-q", "evaluate", "--model", str(demo_model), str(recordings / "test"),
            "--json", str(out / "metrics.json"), "--plots", str(out / "plots")]
    return argv, out


def test_evaluate_reports_every_metric_and_exits_0(demo_run, capsys):
    argv, out = demo_run
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    for key in ("AUC", "pAUC", "precision", "recall", "F1", "true normal", "true anomaly"):
        assert key in stdout
    assert "12 scored of 12 (6 anomalous, 6 normal); 0 could not be read" in stdout
    assert "AUC by domain" not in stdout  # the demo names carry no domain
    doc = json.loads((out / "metrics.json").read_text())
    # The demo faults are loud: a model trained for a few epochs already ranks them first.
    assert doc["auc"] > 0.9
    assert f"AUC        {doc['auc']:.4f}" in stdout and f"F1         {doc['f1']:.4f}" in stdout


def test_json_holds_every_clip_and_numbers_that_follow_from_them(demo_run, demo_model, capsys):
    argv, out = demo_run
    if not (out / "metrics.json").exists():
        assert main(argv) == 0
    doc = json.loads((out / "metrics.json").read_text())
    clips = doc["clips"]
    assert len(clips) == doc["n_clips"] == doc["n"] == 12 and doc["n_errors"] == 0 and doc["errors"] == []
    assert [c["label"] for c in clips] == [infer_label(c["path"]) for c in clips]
    labels = np.array([c["label"] for c in clips])
    scores = np.array([c["score"] for c in clips])
    from machine_monitor.detectors.detector import Detector

    det = Detector.load(demo_model)
    assert doc["threshold"] == pytest.approx(det.threshold_value_)
    np.testing.assert_allclose(scores, det.score([c["path"] for c in clips]), rtol=1e-5)
    expected = evaluate_scores(labels, scores, det.threshold_value_)
    for key in ("auc", "pauc", "precision", "recall", "f1"):
        assert doc[key] == pytest.approx(expected[key]), key
    assert doc["confusion_matrix"] == expected["confusion_matrix"]
    (tn, fp), (fn, tp) = doc["confusion_matrix"]
    assert (tn + fp, fn + tp) == (6, 6)


def test_plots_are_valid_pngs_with_content(demo_run):
    import matplotlib.image

    argv, out = demo_run
    if not (out / "plots").exists():
        assert main(argv) == 0
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(PLOT_FILES)
    for name in PLOT_FILES:
        path = out / "plots" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = matplotlib.image.imread(path)
        assert img.shape[0] >= 400 and img.shape[1] >= 600, (name, img.shape)
        assert img[..., :3].std() > 0.05, f"{name} looks blank"
        # Red (anomaly) ink is drawn on every plot.
        red = (img[..., 0] > 0.7) & (img[..., 1] < 0.35) & (img[..., 2] < 0.35)
        assert red.sum() > 100, name


@pytest.fixture
def test_dir_with_bad_clips(recordings, tmp_path):
    d = tmp_path / "test"
    shutil.copytree(recordings / "test", d)
    (d / "anomaly_broken_099.wav").write_bytes(b"RIFF not really a wav file")
    import soundfile as sf

    # As long as the real clips, so that silence is the only thing wrong with it.
    n = sf.info(recordings / "test" / "normal_000.wav").frames
    sf.write(d / "normal_silent_099.wav", np.zeros(n, dtype=np.float32), 16000)
    return d


def test_unreadable_clips_are_listed_and_the_metrics_cover_the_rest(demo_model, test_dir_with_bad_clips, tmp_path,
                                                                    capsys):
    out = tmp_path / "m.json"
    code = main(["-q", "evaluate", "--model", str(demo_model), str(test_dir_with_bad_clips), "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0  # a report, not an alarm; the count below says what it covers
    assert "12 scored of 14 (6 anomalous, 6 normal); 2 could not be read (left out of the metrics)" in stdout
    errors = [line for line in stdout.splitlines() if line.startswith("  error")]
    assert len(errors) == 2
    assert any("anomaly_broken_099.wav: not a readable audio file" in e for e in errors)
    assert any("normal_silent_099.wav: is digitally silent" in e for e in errors)
    doc = json.loads(out.read_text())
    assert doc["n_clips"] == 14 and doc["n_errors"] == 2 and doc["n"] == 12
    bad = {Path(c["path"]).name: c["score"] for c in doc["clips"] if c["score"] is None}
    assert set(bad) == {"anomaly_broken_099.wav", "normal_silent_099.wav"}
    good = [c for c in doc["clips"] if c["score"] is not None]
    again = evaluate_scores([c["label"] for c in good], [c["score"] for c in good], doc["threshold"])
    assert doc["auc"] == pytest.approx(again["auc"]) and doc["confusion_matrix"] == again["confusion_matrix"]


def test_clips_of_the_stopped_machine_are_counted_apart_and_left_out_of_the_metrics(demo_model, recordings,
                                                                                    tmp_path, capsys):
    import soundfile as sf

    d = tmp_path / "test"
    shutil.copytree(recordings / "test", d)
    y, sr = sf.read(recordings / "test" / "normal_000.wav", dtype="float32")
    sf.write(d / "normal_off_099.wav", 0.003 * y, sr)  # -50 dB: the machine switched off, the room still there
    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", "--model", str(demo_model), str(d), "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert ("12 scored of 13 (6 anomalous, 6 normal); 0 could not be read, 1 with the machine stopped "
            "(left out of the metrics)") in stdout
    assert [line.split()[0] for line in stdout.splitlines() if "normal_off_099.wav" in line] == ["stopped"]
    doc = json.loads(out.read_text())
    assert (doc["n"], doc["n_errors"], doc["n_stopped"]) == (12, 0, 1) and doc["errors"] == []
    assert [Path(p).name for p in doc["stopped"]] == ["normal_off_099.wav"]


def test_a_split_file_gives_labels_and_domains(demo_model, recordings, tmp_path, capsys):
    # Labels from the split, not the names: the file names below carry none.
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for i, src in enumerate(sorted((recordings / "test").glob("*.wav"))):
        shutil.copy(src, data / f"clip_{i:02d}.wav")
        rows.append([f"data/clip_{i:02d}.wav", infer_label(src), "source" if i % 2 else "target"])
    (tmp_path / "splits").mkdir()
    split = tmp_path / "splits" / "demo.json"
    split.write_text(json.dumps({"root": "..", "train": [], "test": rows}))
    out = tmp_path / "m.json"
    assert main(["-q", "evaluate", "--model", str(demo_model), str(split), "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["n"] == 12 and set(doc["domains"]) == {"source", "target"}
    assert doc["domains"]["source"]["n_normal"] + doc["domains"]["target"]["n_normal"] == 6
    assert all(d["n_anomaly"] == 6 for d in doc["domains"].values())
    assert "AUC by domain" in stdout and "source" in stdout and "target" in stdout


def test_clips_without_labels_are_an_error_exit_2(demo_model, recordings, tmp_path, capsys):
    shutil.copy(recordings / "test" / "normal_000.wav", tmp_path / "clip_a.wav")
    assert main(["evaluate", "--model", str(demo_model), str(tmp_path)]) == 2
    assert "no label for 1 of 1 files" in capsys.readouterr().err


def test_one_class_only_is_an_error_exit_2(demo_model, recordings, tmp_path, capsys):
    for name in ("normal_000.wav", "normal_001.wav"):
        shutil.copy(recordings / "test" / name, tmp_path / name)
    assert main(["evaluate", "--model", str(demo_model), str(tmp_path)]) == 2
    assert "needs both normal and anomalous clips" in capsys.readouterr().err


def test_missing_input_is_an_error_exit_2(demo_model, tmp_path, capsys):
    assert main(["evaluate", "--model", str(demo_model), str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_evaluating_on_recordings_the_model_trained_on_warns_and_counts_them(demo_model, recordings, tmp_path,
                                                                             capsys):
    # Training clips mixed into a test set flatter every metric: scored anyway, but said loudly.
    mixed = tmp_path / "mixed"
    shutil.copytree(recordings / "test", mixed)
    for f in sorted((recordings / "normal").glob("*.wav"))[:2]:
        shutil.copy(f, mixed / f"normal_old_{f.name}")
    assert main(["-q", "evaluate", "--model", str(demo_model), str(mixed), "--json", str(tmp_path / "m.json")]) == 0
    assert "2 of the 14 clips trained this model (normal_old_" in capsys.readouterr().err
    assert json.loads((tmp_path / "m.json").read_text())["n_heard"] == 2
