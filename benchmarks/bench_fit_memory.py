"""Peak memory of training: 1,000 ten-second clips, or long files (features must fit in ~1 GB).

Default: trains the default detector for one epoch on the valve split's 50 training clips,
each listed 20 times (1,000 clips, 10,000 s of audio), and reports the peak resident memory
of the process and the size of the frame matrix the training set is built from.

``--long-hours H``: instead, trains on long files holding H hours of audio in all
(``--long-mix``: ``two`` 16 kHz mono files of H/2 hours, or ``mixed``: files of H/2, H/4, H/8
and H/8 hours at 48 kHz stereo), written from the valve clips (looped)
to a temporary folder (``--files DIR``: written there once and reused); long training files
are read in blocks, as scan reads them. Issue 14's bound: <= 1 GB for up to 3 hours of audio
in any mix of files (exit status 1 above 1,000 MB). ``--profile`` prints where in the
package's code the resident memory peaks (RSS sampled every 20 ms).

    OMP_NUM_THREADS=2 python benchmarks/bench_fit_memory.py [--repeat 20] [--features peak|logmel]
    OMP_NUM_THREADS=1 python benchmarks/bench_fit_memory.py --long-hours 3 --long-mix mixed [--detector ae]
    OMP_NUM_THREADS=1 python benchmarks/bench_fit_memory.py --long-hours 3 --long-mix two --files /tmp/mm --profile
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT.parent / "shared" / "data" / "splits" / "dcase2023-valve.json"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakWhere:
    """Where the resident memory peaks: a thread samples RSS every ``interval`` s and keeps,
    for each place in the package's code (the innermost ``machine_monitor`` frames of the
    main thread), the largest RSS seen there. ``--profile`` prints the top places."""

    def __init__(self, interval: float = 0.02, depth: int = 6):
        import threading

        self.interval, self.depth, self.best = interval, depth, {}
        self.main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import os
        import traceback

        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        with open("/proc/self/statm") as statm:
            while not self._stop.wait(self.interval):
                statm.seek(0)
                rss = int(statm.read().split()[1]) * page
                frame = sys._current_frames().get(self.main)
                if frame is None:
                    continue
                where = tuple(f"{Path(fs.filename).name}:{fs.lineno} {fs.name}" for fs in traceback.extract_stack(frame)
                              if "machine_monitor" in fs.filename)[-self.depth:] or ("(outside the package)",)
                if rss > self.best.get(where, 0.0):
                    self.best[where] = rss

    def report(self, top: int = 12) -> None:
        print(f"largest RSS by place (sampled every {self.interval * 1000:.0f} ms):")
        for where, rss in sorted(self.best.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {rss:7.0f} MB  {' <- '.join(reversed(where))}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="times each of the 50 training clips is listed")
    ap.add_argument("--features", default="peak", help="peak (default detector) or logmel (5-frame windows)")
    ap.add_argument("--long-hours", type=float, default=None, help="train on long files of this many hours")
    ap.add_argument("--long-mix", choices=("two", "mixed"), default="mixed")
    ap.add_argument("--detector", default=None, help="detector kind for --long-hours (default: train's default)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the long files (default: a temp dir)")
    ap.add_argument("--files", type=Path, default=None,
                    help="folder for the long files, kept and reused by later runs (default: written to a temp dir)")
    ap.add_argument("--profile", action="store_true", help="print where in the code the resident memory peaks")
    args = ap.parse_args(argv)
    if args.long_hours:
        return long_files(args)
    if not SPLIT.is_file():
        print(f"shared data not found at {SPLIT}", file=sys.stderr)
        return 2
    from machine_monitor import Detector

    split = json.loads(SPLIT.read_text())
    base = SPLIT.parent / split["root"]
    clips = [base / p for p in split["train"]] * args.repeat
    before = rss_mb()
    t0 = time.perf_counter()
    det = Detector(features=args.features, epochs=1, patience=1).fit(clips)
    seconds = time.perf_counter() - t0
    cfg = det.feature_config
    frames = det.n_clips_ * cfg.n_frames(int(det.clip_seconds_ * 16_000))
    frame_mb = frames * cfg.n_mels * 4 / 2**20
    print(f"features {cfg.kind}  clips {len(clips)}  audio {len(clips) * det.clip_seconds_:.0f} s  "
          f"fit(1 epoch) {seconds:.1f} s")
    print(f"float32 log-mel frames {frame_mb:.0f} MB while loading; network inputs x{cfg.stack} frames each, "
          "gathered per batch (never all windows at once)")
    print(f"peak RSS {rss_mb():.0f} MB (interpreter + torch + libraries before fit: {before:.0f} MB)")
    return 0


def write_long(path: Path, seconds: float, source, *, sr: int = 16_000, channels: int = 1) -> None:
    """Write ``seconds`` of audio looped from ``source`` (16 kHz mono arrays), block by block."""
    import numpy as np
    import soundfile as sf
    import soxr

    with sf.SoundFile(path, "w", samplerate=sr, channels=channels, subtype="PCM_16") as f:
        left, k = int(seconds * sr), 0
        while left > 0:
            y = source[k % len(source)]
            k += 1
            if sr != 16_000:
                y = soxr.resample(y, 16_000, sr)
            y = y[:left]
            f.write(np.repeat(y[:, None], channels, axis=1) if channels > 1 else y)
            left -= y.shape[0]


def long_files(args) -> int:
    import contextlib
    import tempfile

    from machine_monitor import Detector
    from machine_monitor.audio.io import load_audio

    hours = args.long_hours
    with contextlib.ExitStack() as stack:
        if args.files is not None:
            tmp = args.files / f"{hours:g}h-{args.long_mix}"
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mm-long-", dir=args.workdir)))
        if args.long_mix == "two":
            files = [(tmp / f"long{i}.wav", hours * 1800, 16_000, 1) for i in range(2)]
        else:  # lengths H/2, H/4, H/8, H/8, all 48 kHz stereo (the most to decode and resample)
            files = [(tmp / f"long{i}.wav", hours * 3600 * share, 48_000, 2)
                     for i, share in enumerate((1 / 2, 1 / 4, 1 / 8, 1 / 8))]
        if not (tmp / "complete").is_file():
            t0 = time.perf_counter()
            split = json.loads(SPLIT.read_text())
            base = SPLIT.parent / split["root"]
            source = [load_audio(base / p) for p in split["train"][:20]]
            for path, seconds, sr, ch in files:
                write_long(path, seconds, source, sr=sr, channels=ch)
            (tmp / "complete").write_text("")
            del source
            print(f"wrote {len(files)} files, {hours:g} h of audio ({args.long_mix}) in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        before = rss_mb()
        t0 = time.perf_counter()
        from machine_monitor.detectors.registry import DEFAULT_KIND, make_detector

        kind = args.detector or DEFAULT_KIND
        det = (make_detector(kind, epochs=1, patience=1) if kind != "ae"
               else Detector(features=args.features, epochs=1, patience=1))
        with PeakWhere() if args.profile else contextlib.nullcontext() as where:
            det.fit([f[0] for f in files])
        seconds = time.perf_counter() - t0
    print(f"{kind}: features {det.feature_config.kind}  files {len(files)} ({args.long_mix})  audio {hours:g} h  "
          f"fit(1 epoch) {seconds:.1f} s")
    if where is not None:
        where.report()
    print(f"peak RSS {rss_mb():.0f} MB (before fit: {before:.0f} MB); bound 1000 MB")
    return 0 if rss_mb() <= 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
