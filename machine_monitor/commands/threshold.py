"""``machine-monitor threshold``: re-set a trained model's alarm level from fresh recordings.

Machines drift (wear, season, a new mounting), and a threshold from ~10 held-out training
clips is coarse; re-fitting it on recent normal recordings keeps alarms meaningful without
retraining the network.
"""

from __future__ import annotations

import sys
from pathlib import Path

from machine_monitor.commands.common import DefaultsHelpFormatter, add_model_arg, fraction, resolve_model

HELP = "re-set a trained model's alarm threshold from fresh recordings (no retraining)"


def register(sub) -> None:
    p = sub.add_parser("threshold", help=HELP, formatter_class=DefaultsHelpFormatter,
                       description=HELP + ". Scores the files as scan does and saves the model with the new "
                       "threshold (in place, atomically, or to --out).")
    add_model_arg(p)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="recent recordings of the machine")
    p.add_argument("-r", "--recursive", action="store_true", help="also look in subfolders")
    p.add_argument("--method", choices=("gamma", "percentile", "contamination"), default="gamma",
                   help="gamma/percentile: the recordings are all normal; contamination: they hold "
                   "--contamination anomalies")
    p.add_argument("--percentile", type=float, default=99.0, help="for gamma and percentile")
    p.add_argument("--contamination", type=fraction, default=None, metavar="FRACTION",
                   help="fraction of anomalies in the recordings (with --method contamination)")
    p.add_argument("-o", "--out", type=Path, help="save the re-thresholded model here instead of in place")
    p.set_defaults(run=run)


def run(args) -> int:
    from machine_monitor.commands.common import existing_audio_files
    from machine_monitor.detectors.registry import load_detector
    from machine_monitor.errors import ConfigError
    from machine_monitor.filescore import score_file
    from machine_monitor.persistence import check_model_destination

    path = resolve_model(args.model)
    if args.out is not None:
        check_model_destination(args.out)  # before scoring: only a model directory is ever replaced
    det = load_detector(path)
    files = existing_audio_files(args.inputs, recursive=args.recursive)
    rows = [score_file(det, f) for f in files]
    for r in rows:
        if r.error:
            print(f"{r.path}: {r.error} (not used)", file=sys.stderr)
    scores = [r.score for r in rows if r.error is None]
    if not scores:
        raise ConfigError("none of the files could be scored")
    old = det.threshold_value_
    det.set_threshold(scores=scores, method=args.method, percentile=args.percentile,
                      contamination=args.contamination)
    out = det.save(args.out or path)
    new = det.threshold_value_
    flagged = sum(s > new for s in scores)
    print(f"saved {out}  threshold {old:.4g} -> {new:.4g} ({det.threshold_['method']}, "
          f"{len(scores)} files; {flagged} of them above the new threshold)")
    return 0
