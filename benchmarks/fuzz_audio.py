"""Fuzz the audio front-end with seeded mutations of real WAV / FLAC / OGG / MP3 bytes.

Every case is one mutated file pushed through the four ways audio enters the project:
``load_audio``, ``score_file`` (what scan/evaluate do with a file), ``read_blocks``
(streaming long files) and ``FileSource`` (the monitor's file replay, ``speed=0``). A
case passes when each either works or raises an error of the project's hierarchy
(``MachineMonitorError``), within ``--case-seconds``; anything else is a finding.

A case that hangs is caught by ``faulthandler``'s watchdog, which dumps the stack and
exits the process (exit code 3; the last case started is in ``--progress``): a hang in C
code cannot be interrupted any other way. Peak memory (``ru_maxrss``) is reported.

    python benchmarks/fuzz_audio.py --cases 10000 --seed 0          # the long run
    python benchmarks/fuzz_audio.py --cases 300 --json               # what the test suite runs

Output: one JSON object (cases, ok, project_errors, findings by kind, seconds, peak RSS).
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SR = 16_000
# Values that break parsers: zero, all ones, sign bits, size fields near 2**31 / 2**32.
INTERESTING = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00",
               b"\x01\x00\x00\x00", b"\x00\x00\x00\x80", b"\xfe\xff\xff\x7f", b"\x10\x00\x00\x00"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_files(seconds: float = 1.0) -> dict[str, bytes]:
    """Real encoded audio to mutate: a machine-like hum as WAV (16/24-bit, float, stereo), FLAC, OGG, MP3."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    y = (0.1 * np.sin(2 * np.pi * 120 * t) + 0.05 * np.sin(2 * np.pi * 240 * t)
         + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    out = {}
    for name, fmt, subtype, sr, data in [
        ("pcm16.wav", "WAV", "PCM_16", SR, y),
        ("pcm24_48k.wav", "WAV", "PCM_24", 48_000, np.repeat(y, 3)),
        ("float_stereo.wav", "WAV", "FLOAT", SR, np.stack([y, -y], axis=1)),
        ("a.flac", "FLAC", "PCM_16", SR, y),
        ("stereo44k.flac", "FLAC", "PCM_16", 44_100, np.stack([np.interp(np.arange(44_100 * seconds) / 44_100,
                                                                          t, y)] * 2, axis=1)),
        ("a.ogg", "OGG", "VORBIS", SR, y),
        ("a.mp3", "MP3", "MPEG_LAYER_III", SR, y),
    ]:
        buf = io.BytesIO()
        try:
            sf.write(buf, data, sr, format=fmt, subtype=subtype)
        except Exception:  # noqa: BLE001 - a libsndfile without MP3 support: fuzz the rest
            continue
        out[name] = buf.getvalue()
    return out


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """1-4 seeded mutations: bit flips, interesting 32-bit values (often in the header),
    random bytes, truncation, duplicated or deleted ranges."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 7))
        n = len(b)
        if n == 0:
            b = bytearray(rng.bytes(int(rng.integers(1, 64))))
            continue
        head = min(n, 128)
        if op == 0:  # flip bits anywhere
            for _ in range(int(rng.integers(1, 9))):
                i = int(rng.integers(0, n))
                b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:  # an interesting value in the header (sizes, rates, counts)
            i = int(rng.integers(0, max(1, head - 4)))
            v = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
            b[i:i + 4] = v
        elif op == 2:  # random bytes in the header
            i = int(rng.integers(0, head))
            k = int(rng.integers(1, 9))
            b[i:i + k] = rng.bytes(k)
        elif op == 3:  # truncate
            b = b[: int(rng.integers(0, n))]
        elif op == 4:  # duplicate a range (repeated chunks / frames)
            i = int(rng.integers(0, n))
            k = int(rng.integers(1, min(4096, n - i) + 1))
            b[i:i] = b[i:i + k] * int(rng.integers(1, 4))
        elif op == 5:  # delete a range
            i = int(rng.integers(0, n))
            del b[i:i + int(rng.integers(1, 512))]
        else:  # random bytes in the body
            i = int(rng.integers(0, n))
            k = int(rng.integers(1, 65))
            b[i:i + k] = rng.bytes(k)
    return bytes(b)


def small_detector():
    """A quickly fitted detector (frame log-mel, a few epochs) for ``score_file``."""
    from machine_monitor import Detector

    rng = np.random.default_rng(1)
    t = np.arange(SR) / SR
    clips = [(0.1 * np.sin(2 * np.pi * 120 * t + p) + 0.01 * rng.standard_normal(SR)).astype(np.float32)
             for p in rng.uniform(0, 6, 6)]
    return Detector(features="logmel", epochs=2, patience=1, batch_size=256, folds=1, seed=0).fit(clips)


def _score_file():
    try:
        from machine_monitor.filescore import score_file
    except ImportError:
        from machine_monitor.scan import score_file
    return score_file


def run_case(path: Path, det, score_file, stages: list[str]) -> tuple[str, str | None]:
    """``("ok" | "project_error" | "finding", detail)`` for one file through every stage."""
    from machine_monitor.audio.io import load_audio, read_blocks
    from machine_monitor.audio.sources import FileSource
    from machine_monitor.errors import MachineMonitorError

    outcome = "ok"
    for stage in stages:
        try:
            if stage == "load_audio":
                load_audio(path)
            elif stage == "read_blocks":
                total = 0
                for block in read_blocks(path, block_seconds=0.5):
                    total += block.size
            elif stage == "score_file":
                row = score_file(det, path)
                if row.error is not None and row.error.startswith("unexpected"):
                    return "finding", f"{stage}: {row.error}"
                if row.error is None and not row.stopped and not np.isfinite(row.score):  # stopped: no score
                    return "finding", f"{stage}: non-finite score {row.score}"
            elif stage == "file_source":
                src = FileSource(path, speed=0)
                src.start()
                try:
                    deadline = time.monotonic() + 30
                    while not src.finished:
                        src.read(timeout=0.05)
                        if time.monotonic() > deadline:
                            return "finding", f"{stage}: replay did not finish"
                finally:
                    src.stop()
        except MachineMonitorError:
            outcome = "project_error"
        except Exception as exc:  # noqa: BLE001 - the finding this harness looks for
            return "finding", f"{stage}: {type(exc).__name__}: {exc}"[:300]
    return outcome, None


STAGES = ["load_audio", "read_blocks", "score_file", "file_source"]


def fuzz(cases: int, seed: int = 0, *, case_seconds: float = 20.0, progress: Path | None = None,
         stages: list[str] = STAGES) -> dict:
    """Run ``cases`` mutated files; returns counts and the first findings."""
    seeds = seed_files()
    names = sorted(seeds)
    det = small_detector() if "score_file" in stages else None
    score_file = _score_file()
    rng = np.random.default_rng(seed)
    counts: collections.Counter = collections.Counter()
    findings: list[dict] = []
    per_format: collections.Counter = collections.Counter()
    rss0, t0, slowest = rss_mb(), time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory(prefix="mm-fuzz-") as tmp:
        for k in range(cases):
            name = names[k % len(names)]
            path = Path(tmp) / f"case{k}{Path(name).suffix}"
            path.write_bytes(mutate(seeds[name], rng))
            if progress is not None:
                progress.write_text(f"case {k} seed {seed} from {name}\n")
            faulthandler.dump_traceback_later(case_seconds, exit=True)
            t = time.perf_counter()
            outcome, detail = run_case(path, det, score_file, stages)
            slowest = max(slowest, time.perf_counter() - t)
            faulthandler.cancel_dump_traceback_later()
            counts[outcome] += 1
            per_format[Path(name).suffix] += 1
            if detail is not None:
                findings.append({"case": k, "from": name, "detail": detail})
                keep = Path(os.environ.get("MM_FUZZ_KEEP", tmp)) / f"finding{k}{Path(name).suffix}"
                if keep.parent != Path(tmp):
                    keep.write_bytes(path.read_bytes())
            path.unlink()
    return {"cases": cases, "seed": seed, "ok": counts["ok"], "project_errors": counts["project_error"],
            "findings": counts["finding"], "first_findings": findings[:20], "per_format": dict(per_format),
            "seconds": round(time.perf_counter() - t0, 1), "slowest_case_s": round(slowest, 2),
            "rss_before_mb": round(rss0), "peak_rss_mb": round(rss_mb())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-seconds", type=float, default=20.0, help="a case running longer is a hang")
    ap.add_argument("--progress", type=Path, default=None, help="file naming the case in progress")
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    args = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    result = fuzz(args.cases, args.seed, case_seconds=args.case_seconds, progress=args.progress,
                  stages=[x for x in args.stages.split(",") if x])
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result["findings"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
