"""Hostile command lines: exit 2 with one line on stderr (never a traceback, never exit 1), and no data lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.cli import build_parser, main
from machine_monitor.errors import AudioReadError
from machine_monitor.scan import OutputLock
from tests.conftest import ROOT, SR, hum


@pytest.fixture(scope="module")
def model(fitted_detector, tmp_path_factory):
    return fitted_detector.save(tmp_path_factory.mktemp("m") / "hum")


@pytest.fixture()
def recs(tmp_path):
    d = tmp_path / "recs"
    d.mkdir()
    for s in range(3):
        sf.write(d / f"r{s}.wav", hum(1.0, seed=s + 30), SR)
    return d


def one_line_error(capsys, code, expect: str):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert expect in err, err
    return err


def run_cli(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return exc.code


# -- never destroy a user's files -----------------------------------------------------
def test_train_refuses_to_overwrite_its_own_training_folder(recs, capsys):
    before = sorted(p.name for p in recs.iterdir())
    code = run_cli(["train", str(recs), "--out", str(recs)])
    one_line_error(capsys, code, "exists and is not a model directory")
    assert sorted(p.name for p in recs.iterdir()) == before


def test_train_refuses_to_replace_an_existing_file(recs, tmp_path, capsys):
    f = tmp_path / "pump3"
    f.write_text("precious")
    code = run_cli(["train", str(recs), "--out", str(f)])
    one_line_error(capsys, code, "exists and is not a model directory")
    assert f.read_text() == "precious"
    assert not list(tmp_path.glob(".pump3*"))  # no hidden .NAME.old-PID copy


def test_threshold_out_refuses_an_existing_folder(model, recs, tmp_path, capsys):
    keep = tmp_path / "reports"
    keep.mkdir()
    (keep / "q1.csv").write_text("x")
    code = run_cli(["threshold", "--model", str(model), str(recs), "--out", str(keep)])
    one_line_error(capsys, code, "exists and is not a model directory")
    assert (keep / "q1.csv").read_text() == "x"


def test_a_second_scan_of_the_same_output_is_refused_while_the_first_runs(model, recs, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    out.write_text("path,score\nfirst scan's row,1\n")
    lock = OutputLock(out)  # what a running scan holds
    try:
        code = run_cli(["-q", "scan", "--model", str(model), str(recs), "-o", str(out)])
        one_line_error(capsys, code, "another scan")
        assert out.read_text() == "path,score\nfirst scan's row,1\n"
    finally:
        lock.release()
    assert run_cli(["-q", "scan", "--model", str(model), str(recs), "-o", str(out)]) in (0, 1)
    assert not (tmp_path / ".rows.csv.lock").exists()


def test_resume_matches_files_by_resolved_path(model, recs, tmp_path, monkeypatch):
    out = tmp_path / "rows.jsonl"
    monkeypatch.chdir(recs.parent)
    assert run_cli(["-q", "scan", "--model", str(model), "recs", "-o", str(out)]) in (0, 1)
    spelled = os.path.join("..", recs.parent.name, "recs")
    assert run_cli(["-q", "scan", "--model", str(model), spelled, "-o", str(out), "--resume"]) in (0, 1)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3  # no file scored (and listed) twice under two spellings


# -- usage errors: exit 2, one line ---------------------------------------------------
@pytest.mark.parametrize("argv, expect", [
    (["--epochs", "-5"], "argument --epochs: must be >= 1"),
    (["--epochs", "0"], "argument --epochs: must be >= 1"),
    (["--lr", "-1"], "argument --lr: must be > 0"),
    (["--lr", "nan"], "argument --lr"),
    (["--batch-size", "0"], "argument --batch-size"),
    (["--val-fraction", "1.5"], "argument --val-fraction"),
    (["--percentile", "101"], "argument --percentile"),
    (["--device", "nonsense"], "argument --device: must be cpu, cuda, cuda:N or mps"),
])
def test_bad_training_options_are_usage_errors(recs, argv, expect, capsys):
    one_line_error(capsys, run_cli(["train", str(recs), *argv]), expect)


def test_cuda_without_a_gpu_is_a_one_line_error(recs, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code = run_cli(["train", str(recs), "--device", "cuda", "--out", str(tmp_path / "m")])
    one_line_error(capsys, code, "--device cuda: no CUDA GPU is available")


@pytest.mark.parametrize("flag, target, expect", [
    ("-o", "missing/x.csv", "folder"),
    ("-o", ".", "is a directory"),
    ("--report", ".", "is a directory"),
])
def test_scan_outputs_that_cannot_be_written_are_usage_errors(model, recs, tmp_path, flag, target, expect, capsys):
    code = run_cli(["scan", "--model", str(model), str(recs), flag, str(tmp_path / target)])
    one_line_error(capsys, code, expect)


def test_evaluate_outputs_that_cannot_be_written_are_usage_errors(model, tmp_path, capsys):
    d = tmp_path / "labelled"
    (d / "normal").mkdir(parents=True)
    sf.write(d / "normal" / "a.wav", hum(1.0), SR)
    one_line_error(capsys, run_cli(["evaluate", "--model", str(model), str(d), "--json", str(tmp_path)]),
                   "is a directory")
    f = tmp_path / "plots.png"
    f.write_bytes(b"x")
    one_line_error(capsys, run_cli(["evaluate", "--model", str(model), str(d), "--plots", str(f)]),
                   "is a file, not a folder")


def test_quiet_is_accepted_after_the_command():
    args = build_parser().parse_args(["scan", "-m", "x", "y", "-q"])
    assert args.quiet is True


def test_help_has_no_default_none_no_doubled_defaults_and_every_option_explained():
    from machine_monitor.commands.common import DefaultsHelpFormatter

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    fmt = DefaultsHelpFormatter("machine-monitor")
    for name, p in sub.choices.items():
        assert "(default: None)" not in p.format_help(), name
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"
                added = fmt._get_help_string(action) != action.help
                assert not (added and "default" in action.help), f"{name} {action.option_strings}: default twice"


def test_monitor_window_help_says_what_it_uses():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = " ".join(sub.choices["monitor"].format_help().split())
    assert "peak models their span, 10 s or the training clips' length" in text


# -- monitor --input of unusable files ---------------------------------------------------
@pytest.mark.parametrize("make, expect", [
    (lambda d: sf.write(d / "short.wav", hum(0.5), SR) or d / "short.wav", "shorter than one"),
    (lambda d: d, "is a directory"),
    (lambda d: sf.write(d / "empty.wav", np.zeros(0, np.float32), SR) or d / "empty.wav", "header only"),
])
def test_monitor_input_that_cannot_be_monitored_is_an_input_error(model, tmp_path, make, expect, capsys):
    path = make(tmp_path)
    code = run_cli(["-q", "monitor", "--model", str(model), "--input", str(path), "--speed", "0",
                    "--alert-log", str(tmp_path / "a.jsonl"), "--evidence-dir", str(tmp_path / "ev")])
    one_line_error(capsys, code, expect)


# -- Python API ----------------------------------------------------------------------------
def test_score_takes_a_single_path_and_refuses_a_zero_rate(fitted_detector, tmp_path):
    p = tmp_path / "x.wav"
    sf.write(p, hum(1.0, seed=5), SR)
    assert fitted_detector.score(str(p)).shape == (1,)
    assert fitted_detector.score(p)[0] == pytest.approx(fitted_detector.score([p])[0])
    with pytest.raises(AudioReadError, match="implausible sample rate 0 Hz"):
        fitted_detector.score([(hum(1.0), 0)])


# -- stopping ---------------------------------------------------------------------------
@pytest.mark.slow
def test_sigterm_while_an_alert_command_runs_stops_within_seconds(model, tmp_path):
    from tests.conftest import clicks

    wav = tmp_path / "faulty.wav"
    sf.write(wav, np.concatenate([clicks(6.0, seed=7)] * 3), SR)
    marker = tmp_path / "started"
    cmd = f"{sys.executable} -c \"import pathlib,time; pathlib.Path(r'{marker}').touch(); time.sleep(120)\""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "machine_monitor", "-q", "monitor", "--model", str(model),
                             "--input", str(wav), "--speed", "1", "--margin", "0", "--on-alert", cmd,
                             "--alert-log", str(tmp_path / "a.jsonl"), "--evidence-dir", str(tmp_path / "ev")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "no alert command started"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - t0 < 8
        assert proc.returncode == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_training_on_two_or_three_clips_never_crashes(tmp_path, capsys):
    # Issue 14: 2 or 3 clips gave tracebacks with exit 1. Now: a model, or one line and exit 2.
    for n in (2, 3):
        d = tmp_path / f"n{n}"
        d.mkdir()
        for s in range(n):
            sf.write(d / f"c{s}.wav", hum(1.0, seed=s + 60), SR)
        code = run_cli(["-q", "train", str(d), "--out", str(tmp_path / f"m{n}"), "--epochs", "3"])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert code == 0 or (code == 2 and err.count("machine-monitor: error:") == 1), (n, code, err)
        assert code != 0 or (tmp_path / f"m{n}" / "model.json").is_file()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_a_fifo_given_to_scan_or_train_is_refused_not_waited_on(model, recs, tmp_path, capsys):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    out = tmp_path / "rows.jsonl"
    assert run_cli(["-q", "scan", "--model", str(model), str(fifo), "-o", str(out)]) == 2
    assert "is a FIFO (named pipe)" in json.loads(out.read_text())["error"]
    code = run_cli(["-q", "train", str(recs), str(fifo), "--out", str(tmp_path / "m")])
    one_line_error(capsys, code, "pipe.wav: is a FIFO (named pipe), not an audio file")
    assert time.monotonic() - t0 < 30


def test_monitor_banner_shows_the_margin_as_a_percentage(model, tmp_path, capsys):
    wav = tmp_path / "normal.wav"
    sf.write(wav, hum(4.0, seed=41), SR)
    code = run_cli(["monitor", "--model", str(model), "--input", str(wav), "--speed", "0", "--margin", "0.1",
                    "--alert-log", str(tmp_path / "a.jsonl"), "--evidence-dir", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code in (0, 1), err
    assert "clip threshold + 10 %" in err
