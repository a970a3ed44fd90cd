"""``machine-monitor scan``: score every audio file and print one row per file."""

from __future__ import annotations

import argparse
import sys

from machine_monitor.commands.common import add_model_arg, resolve_model

HELP = "score audio files or folders with a trained detector"


def register(sub) -> None:
    p = sub.add_parser("scan", help=HELP, description=HELP + ". Exit 0: all normal; 1: anomalies found; "
                       "2: a file or the model could not be used.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_arg(p)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("-r", "--recursive", action="store_true", help="also look in subfolders")
    p.set_defaults(run=run)


def run(args) -> int:
    from machine_monitor.audio.io import find_audio_files
    from machine_monitor.detector import Detector
    from machine_monitor.errors import AudioReadError, ConfigError

    det = Detector.load(resolve_model(args.model))
    files = find_audio_files(args.inputs, recursive=args.recursive)
    if not files:
        raise ConfigError(f"no audio files in {', '.join(args.inputs)}")
    thr = det.threshold_value_
    n_anom = n_err = 0
    width = max(len(str(f)) for f in files)
    print(f"{'path':<{width}}  {'score':>10}  {'threshold':>10}  verdict")
    for f in files:
        try:
            s = det.score_signal(det.load_signal(f))
        except AudioReadError as exc:
            n_err += 1
            print(f"{str(f):<{width}}  {'-':>10}  {thr:>10.4g}  error: {str(exc).removeprefix(str(f) + ': ')}")
            continue
        verdict = "ANOMALY" if s > thr else "normal"
        n_anom += s > thr
        print(f"{str(f):<{width}}  {s:>10.4g}  {thr:>10.4g}  {verdict}", flush=True)
    print(f"{len(files)} files: {n_anom} anomalous, {n_err} errors", file=sys.stderr)
    return 2 if n_err else (1 if n_anom else 0)
