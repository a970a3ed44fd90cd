"""Peak memory of training on 1,000 ten-second clips (issue: features must fit in ~1 GB).

Trains the default detector for one epoch on the valve split's 50 training clips, each
listed 20 times (1,000 clips, 10,000 s of audio), and reports the peak resident memory of
the process and the size of the frame matrix the training set is built from.

    OMP_NUM_THREADS=2 python benchmarks/bench_fit_memory.py [--repeat 20] [--features peak|logmel]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="times each of the 50 training clips is listed")
    ap.add_argument("--features", default="peak", help="peak (default detector) or logmel (5-frame windows)")
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
