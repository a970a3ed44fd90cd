"""The command line as a user meets it: train on the demo recordings, scan, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.cli import main
from machine_monitor.commands.common import default_model_name
from tests.conftest import ROOT

FAST_ARGS = ["--epochs", "30", "--seed", "0"]


def run_cli(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "machine_monitor", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_help_lists_commands_and_does_not_import_torch():
    code = ("import sys\nfrom machine_monitor.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'librosa', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "train" in out and "scan" in out
    assert "HEAVY []" in out


def test_python_dash_m_shows_help_and_version():
    assert run_cli("--help").returncode == 0
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.startswith("machine-monitor ")


def test_no_command_is_a_usage_error():
    assert run_cli().returncode == 2


def test_default_model_name_skips_generic_folder_names(tmp_path):
    assert default_model_name("recordings/normal") == "recordings"
    (tmp_path / "pump-3" / "train").mkdir(parents=True)
    assert default_model_name(tmp_path / "pump-3" / "train") == "pump-3"


@pytest.fixture(scope="module")
def demo_model(recordings, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "demo"
    assert main(["train", str(recordings / "normal"), "--out", str(out), *FAST_ARGS]) == 0
    return out


def test_train_saves_the_model_and_prints_the_threshold(demo_model, capsys):
    assert (demo_model / "model.json").is_file()


def test_train_writes_to_models_name_by_default(recordings, tmp_path):
    clips = sorted((recordings / "normal").glob("*.wav"))[:4]
    machine = tmp_path / "fan-7" / "normal"
    machine.mkdir(parents=True)
    for c in clips:
        (machine / c.name).write_bytes(c.read_bytes())
    res = run_cli("train", str(machine), "--epochs", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "models" / "fan-7" / "model.json").is_file()
    assert "threshold" in res.stdout and "saved models/fan-7" in res.stdout


def test_scan_flags_the_anomalous_demo_clips_and_exits_1(demo_model, recordings, capsys):
    code = main(["scan", "--model", str(demo_model), str(recordings / "test")])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0].split() == ["path", "score", "threshold", "windows", "worst_at", "verdict"]
    rows = {Path(line.split()[0]).name: line.split()[-1] for line in out[1:]}
    assert len(rows) == 12
    assert all(v == "ANOMALY" for n, v in rows.items() if n.startswith("anomaly")), rows
    assert all(v == "normal" for n, v in rows.items() if n.startswith("normal")), rows


def test_scan_of_normal_clips_exits_0(demo_model, recordings, capsys):
    normal = sorted((recordings / "test").glob("normal_*.wav"))
    assert main(["scan", "--model", str(demo_model), *map(str, normal)]) == 0


def test_scan_reports_an_unreadable_file_in_its_row_and_exits_2(demo_model, recordings, tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_text("not audio")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(5 * 16_000, np.float32), 16_000)
    good = sorted((recordings / "test").glob("normal_*.wav"))[0]
    code = main(["scan", "--model", str(demo_model), str(good), str(bad), str(silent)])
    out = capsys.readouterr().out
    assert code == 2
    assert "broken.wav" in out and "error: not a readable audio file" in out
    assert "silent.wav" in out and "error: is digitally silent" in out
    assert good.name in out  # the good file still has its row


def test_user_mistakes_are_one_line_errors_with_exit_2(tmp_path):
    res = run_cli("scan", "--model", str(tmp_path / "nope"), str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"machine-monitor: error: {tmp_path / 'nope'}: no such model directory"]
    res = run_cli("train", str(tmp_path / "empty"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().endswith(f"{tmp_path / 'empty'}: no such file or folder")
    (tmp_path / "empty").mkdir()
    res = run_cli("train", str(tmp_path / "empty"))
    assert res.returncode == 2 and res.stderr.strip().endswith("no audio files in " + str(tmp_path / "empty"))


def test_train_folds_option_sets_the_ensemble_size(recordings, tmp_path):
    import json

    clips = sorted((recordings / "normal").glob("*.wav"))[:6]
    for folds, expected in (("1", 1), ("3", 3)):
        out = tmp_path / f"m{folds}"
        assert main(["train", *map(str, clips), "--out", str(out), "--detector", "ae", "--folds", folds]) == 0
        assert json.loads((out / "model.json").read_text())["network"]["ensemble"] == expected


def test_one_long_recording_trains_on_its_consecutive_parts_and_stays_known(tmp_path, capsys, caplog):
    # The usual first try: "a few minutes of normal running", in one file.
    from machine_monitor.detectors.registry import load_detector
    from machine_monitor.synth import machine_sound

    wav = tmp_path / "pump_1min.wav"
    sf.write(wav, machine_sound(62.0, seed=4242), 16000, subtype="PCM_16")
    out = tmp_path / "pump"
    assert main(["train", str(wav), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "one recording (1.0 min): cut into 3 consecutive parts of 20.7 s" in err
    assert "record a second session" in caplog.text  # one session: what the calibration cannot tell
    det = load_detector(out)
    assert det.calibration_["n_recordings"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([wav.name, "pump"])  # the parts are gone
    faulty = tmp_path / "faulty.wav"
    sf.write(faulty, machine_sound(20.0, seed=4243, anomaly="squeal"), 16000)
    assert main(["-q", "scan", "--model", str(out), str(faulty)]) == 1
    # The recording itself (not its parts) is what the model heard.
    assert main(["threshold", "--model", str(out), str(wav)]) == 2
    assert "trained this model" in capsys.readouterr().err


def test_one_recording_too_short_to_cut_is_a_one_line_error(tmp_path):
    sf.write(tmp_path / "short.wav", np.zeros(16000 * 30, np.float32) + 0.01, 16000)
    res = run_cli("train", str(tmp_path / "short.wav"), "--out", str(tmp_path / "m"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "one recording of 30.0 s is too short to train on: record at least 40 s" in res.stderr
