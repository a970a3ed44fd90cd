"""``machine-monitor record OUT_DIR``: record training clips from a microphone."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from machine_monitor.commands.common import DefaultsHelpFormatter, add_channel_arg, positive_float

HELP = "record numbered 16 kHz mono WAV clips from a microphone, for training"


def register(sub) -> None:
    p = sub.add_parser("record", help=HELP, description=HELP + ". Ctrl-C keeps every clip, the last one "
                       "shorter.", formatter_class=DefaultsHelpFormatter)
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the clips (created if missing)")
    p.add_argument("--seconds", type=positive_float, default=600.0, help="total recording time")
    p.add_argument("--clip", type=positive_float, default=10.0, help="length of each clip in seconds")
    p.add_argument("--device", default=None, help="input device: index or part of its name (see `devices`); "
                   "default: the system's default input")
    p.add_argument("--samplerate", type=positive_float, default=None,
                   help="open the device at this rate (default: the device's own); clips are 16 kHz anyway")
    p.add_argument("--prefix", default="clip", help="clip file names: PREFIX_0000.wav, ...")
    add_channel_arg(p)
    p.set_defaults(run=run)


class ClipWriter:
    """Write a stream into numbered WAV clips of ``clip_samples``; never overwrites a file.

    Numbering continues after the highest ``PREFIX_NNNN.wav`` already in the folder.
    """

    def __init__(self, out_dir: Path, *, clip_samples: int, sr: int = 16_000, prefix: str = "clip"):
        import re

        self.out_dir, self.clip_samples, self.sr, self.prefix = Path(out_dir), int(clip_samples), sr, prefix
        self.out_dir.mkdir(parents=True, exist_ok=True)
        pat = re.compile(rf"^{re.escape(prefix)}_(\d+)\.wav$")
        taken = [int(m.group(1)) for f in self.out_dir.iterdir() if (m := pat.match(f.name))]
        self.next_index = max(taken, default=-1) + 1
        self.paths: list[Path] = []
        self._file = None
        self._written = 0

    def write(self, y) -> None:
        import soundfile as sf

        while y.size:
            if self._file is None:
                path = self.out_dir / f"{self.prefix}_{self.next_index:04d}.wav"
                self.next_index += 1
                self._file = sf.SoundFile(path, "x", samplerate=self.sr, channels=1, subtype="PCM_16", format="WAV")
                self.paths.append(path)
                self._written = 0
            take = min(y.size, self.clip_samples - self._written)
            self._file.write(y[:take])
            self._written += take
            y = y[take:]
            if self._written >= self.clip_samples:
                self.close()

    def close(self) -> None:
        """Close the current clip (its header then holds its true length)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def record_clips(source, writer: ClipWriter, *, seconds: float, should_stop=lambda: False) -> float:
    """Pull ``seconds`` of 16 kHz audio from a started ``source`` into ``writer``; returns seconds written."""
    import numpy as np

    total, target = 0, int(round(seconds * source.sr))
    while total < target and not should_stop():
        block = source.read(timeout=0.1)
        if block is None:
            if source.finished:
                break
            continue
        block = np.clip(block[:target - total], -1.0, 1.0)
        writer.write(block)
        total += block.size
    return total / source.sr


def run(args) -> int:
    import threading

    from machine_monitor.audio.sources import LiveSource

    stop = threading.Event()
    got = []

    def on_signal(signum, frame):
        got.append(signum)
        stop.set()

    source = LiveSource(args.device, channel=args.channel, samplerate=args.samplerate)
    writer = ClipWriter(args.out_dir, clip_samples=int(round(args.clip * source.sr)), prefix=args.prefix)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        source.start()
        print(f"recording {args.seconds:g} s from {source.describe()} into {args.out_dir} "
              f"({args.clip:g} s clips); Ctrl-C stops", file=sys.stderr)
        done = record_clips(source, writer, seconds=args.seconds, should_stop=stop.is_set)
    finally:
        writer.close()
        source.stop()
        for s, h in old.items():
            signal.signal(s, h)
    for p in writer.paths:
        print(p)
    st = source.stats
    print(f"recorded {done:.1f} s into {len(writer.paths)} clips in {args.out_dir}"
          + (f"; {st.dropped_blocks} blocks dropped, {st.overflows} input overflows" if st.dropped_blocks
             or st.overflows else ""), file=sys.stderr)
    return 130 if got else 0
