"""`machine-monitor scan` as a user meets it: formats, order, exit codes, --resume, interruption, --report."""

from __future__ import annotations

import copy
import csv
import json
import re

import numpy as np
import pytest
import soundfile as sf

import machine_monitor.scan as scan_lib
from machine_monitor.cli import main
from tests.conftest import SR, clicks, hum


@pytest.fixture(scope="module")
def model_dir(fitted_detector, tmp_path_factory):
    """The test detector with its threshold well clear of normal hum (tiny models are borderline)."""
    det = copy.deepcopy(fitted_detector)
    normal = [det.score_signal(hum(1.0, seed=s)) for s in range(100, 110)]
    det.set_threshold(scores=[2 * max(normal)], method="percentile", percentile=100)
    return det.save(tmp_path_factory.mktemp("model") / "hum")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Five 1-second files: 2 with clicks (anomalous), 2 normal hums, 1 broken."""
    d = tmp_path_factory.mktemp("archive")
    sf.write(d / "a_normal.wav", hum(1.0, seed=1), SR)
    sf.write(d / "b_clicks.wav", clicks(1.0, seed=2), SR)
    sf.write(d / "c_normal.flac", hum(1.0, seed=3), SR)
    sf.write(d / "d_clicks.wav", 2 * clicks(1.0, seed=4), SR, subtype="FLOAT")
    (d / "e_broken.wav").write_text("not audio")
    (d / "notes.txt").write_text("ignored: not an audio extension")
    return d


def scan(model_dir, *args) -> int:
    return main(["-q", "scan", "--model", str(model_dir), *map(str, args)])


def test_csv_rows_are_sorted_worst_first_with_errors_last(model_dir, archive, tmp_path):
    out = tmp_path / "scan.csv"
    assert scan(model_dir, archive, "--output", out) == 2  # an unreadable file: exit 2
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows[:2]] == ["d_clicks.wav", "b_clicks.wav"]
    assert [r["verdict"] for r in rows[:2]] == ["ANOMALY", "ANOMALY"]
    assert rows[-1]["verdict"] == "error" and "not a readable audio file" in rows[-1]["error"]
    assert len(rows) == 5  # notes.txt is not audio
    scores = [float(r["score"]) for r in rows[:-1]]
    assert scores == sorted(scores, reverse=True)
    assert set(rows[0]) == set(scan_lib.RECORD_FIELDS)
    assert (rows[0]["windows"], rows[0]["worst_offset_s"], rows[0]["duration_s"]) == ("1", "0.0", "1.0")


def test_jsonl_in_input_order_and_exit_codes(model_dir, archive, tmp_path, capsys):
    files = [archive / n for n in ("b_clicks.wav", "a_normal.wav")]
    assert scan(model_dir, *files, "--format", "jsonl", "--order", "input") == 1  # anomalies, no errors
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(f) for f in files]
    assert rows[0]["verdict"] == "ANOMALY" and rows[0]["error"] is None
    capsys.readouterr()
    assert scan(model_dir, archive / "a_normal.wav", archive / "e_broken.wav") == 2  # errors win over anomalies


def test_a_stopped_machine_is_listed_after_the_scored_files_and_is_no_alarm(model_dir, archive, tmp_path, capsys):
    off = tmp_path / "z_weekend.wav"
    sf.write(off, (0.002 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32), SR)  # machine off
    assert scan(model_dir, archive / "a_normal.wav", off) == 0  # nothing anomalous: not an alarm, not an error
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].split()[-1] == "scored)" and "stopped (machine off" in out.splitlines()[-1]
    assert "2 files: 0 anomalous, 1 with the machine stopped (not scored), 0 errors" in err
    assert scan(model_dir, off, archive / "b_clicks.wav", "--format", "jsonl") == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["verdict"], r["score"], r["stopped_windows"]) for r in rows][1:] == [("stopped", None, 1)]
    assert rows[0]["verdict"] == "ANOMALY"


def test_nothing_anomalous_exits_0(fitted_detector, archive, tmp_path):
    lenient = copy.deepcopy(fitted_detector).set_threshold(scores=[1e9], method="percentile", percentile=100)
    model = lenient.save(tmp_path / "lenient")
    assert scan(model, archive / "a_normal.wav", archive / "b_clicks.wav") == 0


def test_table_on_stdout_and_summary_on_stderr(model_dir, archive, capsys):
    assert scan(model_dir, archive) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["path", "score", "threshold", "windows", "worst_at", "verdict"]
    assert lines[1].split()[-1] == "ANOMALY" and lines[1].split()[3:5] == ["1/1", "0.0s"]
    assert "e_broken.wav" in lines[-1] and "error: not a readable audio file" in lines[-1]
    assert re.match(r"5 files: 2 anomalous, 1 errors \(5 scanned now: .* h of audio in .* s", err)


def test_rows_are_streamed_so_an_interrupted_scan_keeps_them_and_resume_finishes(model_dir, archive, tmp_path,
                                                                                 monkeypatch):
    out = tmp_path / "scan.jsonl"
    real = scan_lib.scan_files

    def interrupted(det, files, **kw):  # Ctrl-C after two files
        it = real(det, files, **kw)
        yield next(it)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_lib, "scan_files", interrupted)
    assert scan(model_dir, archive, "--output", out) == 130
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 2

    # Resume: the two finished files are not scanned again (a marker score survives), the rest are.
    first[0]["score"] = 1e6
    out.write_text("".join(json.dumps(r) + "\n" for r in first) + '{"path": "torn by a kill')
    monkeypatch.setattr(scan_lib, "scan_files", real)
    assert scan(model_dir, archive, "--output", out, "--resume") == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["path"] for r in rows}) == 5
    assert rows[0]["score"] == 1e6 and rows[0]["path"] == first[0]["path"]  # kept, and sorted first


def test_resume_needs_an_output_in_a_resumable_format(model_dir, archive, tmp_path, capsys):
    assert scan(model_dir, archive, "--resume") == 2
    assert "--resume needs --output" in capsys.readouterr().err
    table = tmp_path / "scan.txt"
    table.write_text("path score\n")
    assert scan(model_dir, archive, "--output", table, "--resume") == 2
    assert "resuming needs a csv or jsonl output" in capsys.readouterr().err


def test_html_report_is_self_contained_with_table_histogram_and_spectrograms(model_dir, archive, tmp_path):
    report = tmp_path / "report.html"
    assert scan(model_dir, archive, "--report", report, "--format", "csv") == 2
    page = report.read_text()
    assert page.startswith("<!doctype html>")
    images = re.findall(r"src='(data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+)'", page)
    assert len(images) == 1 + 2  # the histogram and one spectrogram per anomaly
    assert "threshold" in page and "2</b>" in page  # summary: 2 anomalous files
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # nothing fetched from the network
    assert "table class='sortable'" in page and "addEventListener('click'" in page
    for name in ("a_normal.wav", "b_clicks.wav", "c_normal.flac", "d_clicks.wav", "e_broken.wav"):
        assert name in page
    assert page.count("<tr class='ANOMALY'>") == 2 and page.count("<tr class='error'>") == 1


def test_long_file_row_and_report_mark_the_worst_window(model_dir, tmp_path, capsys):
    y = np.concatenate([hum(3.0, seed=8), clicks(1.0, seed=8), hum(2.0, seed=9)])
    sf.write(tmp_path / "long.wav", y, SR)
    report = tmp_path / "r.html"
    assert scan(model_dir, tmp_path / "long.wav", "--format", "jsonl", "--report", report) == 1
    row = json.loads(capsys.readouterr().out)
    assert (row["windows"], row["worst_offset_s"], row["duration_s"]) == (6, 3.0, 6.0)
    assert "worst window from 3.0 s" in report.read_text()
