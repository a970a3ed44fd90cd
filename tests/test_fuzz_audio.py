"""Fuzzing the audio front-end: mutated real WAV/FLAC/OGG/MP3 bytes never crash, hang or blow up memory.

Each case goes through ``load_audio``, ``score_file``, ``read_blocks`` and the monitor's
``FileSource`` replay (see ``benchmarks/fuzz_audio.py``, which runs the long version).
The cases run in a child process: a hang in C code can only be stopped by its watchdog
(``faulthandler``, which exits the child), and its peak memory is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CASES = 300
CASE_SECONDS = 10  # one file through all four readers; a normal case takes ~0.02 s
PEAK_RSS_MB = 1500  # python + torch + numpy is ~500 MB; one 1 s file must not add a GB


@pytest.mark.slow
def test_mutated_audio_files_give_project_errors_only(tmp_path):
    progress = tmp_path / "progress.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MM_FUZZ_KEEP": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz_audio.py"), "--cases", str(CASES), "--seed", "0",
         "--case-seconds", str(CASE_SECONDS), "--progress", str(progress), "--json"],
        capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert proc.returncode in (0, 1), (
        f"fuzzing stopped (exit {proc.returncode}): a case hung or crashed the process; "
        f"{progress.read_text() if progress.exists() else ''}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cases"] == CASES
    assert result["findings"] == 0, result["first_findings"]
    assert result["ok"] + result["project_errors"] == CASES
    # Both outcomes occur: the mutations reach past the header, and they do break files.
    assert result["ok"] > CASES // 10 and result["project_errors"] > CASES // 10
    assert set(result["per_format"]) >= {".wav", ".flac", ".ogg"}
    assert result["peak_rss_mb"] < PEAK_RSS_MB, result
