"""``machine-monitor threshold``: re-calibrate a trained model's alarms from recent normal recordings.

Machines drift (wear, season, a new mounting). The model never heard these recordings,
so its own scores of them are honest evidence: every decision unit (clip, long file,
live alert) is re-calibrated with the same logic as ``train`` (see
``machine_monitor.threshold``), without retraining the network. With ``--method
contamination`` the recordings are a mix with a known share of faults, and only the
clip threshold is re-set, at that quantile.
"""

from __future__ import annotations

import sys
from pathlib import Path

from machine_monitor.commands.common import (
    DefaultsHelpFormatter,
    add_model_arg,
    fraction,
    percentile,
    positive_float,
    resolve_model,
)

HELP = "re-calibrate a trained model's alarms from recent recordings (no retraining)"


def register(sub) -> None:
    p = sub.add_parser("threshold", help=HELP, formatter_class=DefaultsHelpFormatter,
                       description=HELP + ". Scores the recordings as scan and monitor do and saves the model with "
                       "the new thresholds (in place, atomically, or to --out).")
    add_model_arg(p)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="recent recordings of the machine")
    p.add_argument("-r", "--recursive", action="store_true", help="also look in subfolders")
    p.add_argument("--method", choices=("gamma", "percentile", "contamination"), default="gamma",
                   help="gamma: recordings all normal, every unit calibrated (gamma fits); percentile: the same with "
                   "the clip threshold an empirical percentile; contamination: the recordings hold --contamination "
                   "anomalies, only the clip threshold is re-set")
    p.add_argument("--percentile", type=percentile, default=None,
                   help="clip threshold at this percentile (default: the model's, normally 99 = 1 %% of normal "
                   "clips flagged)")
    p.add_argument("--false-alarms-per-day", type=positive_float, default=None, metavar="RATE",
                   help="target false alerts per day of live monitoring (default: the model's)")
    p.add_argument("--group-by", default=None, metavar="PATTERN",
                   help="'folder' or a regex whose first group names a recording session (for the spread check)")
    p.add_argument("--contamination", type=fraction, default=None, metavar="FRACTION",
                   help="fraction of anomalies in the recordings (with --method contamination)")
    p.add_argument("-o", "--out", type=Path, help="save the re-calibrated model here instead of in place")
    p.set_defaults(run=run)


def run(args) -> int:
    from machine_monitor.commands.common import existing_audio_files
    from machine_monitor.detectors.calibration import describe, recalibrate, without_heard
    from machine_monitor.detectors.registry import load_detector
    from machine_monitor.errors import AudioReadError, ConfigError
    from machine_monitor.filescore import score_file
    from machine_monitor.threshold import groups_from_paths

    if args.method == "contamination" and args.contamination is None:
        raise ConfigError("--method contamination needs --contamination FRACTION")
    from machine_monitor.persistence import check_model_destination

    path = resolve_model(args.model)
    if args.out is not None:
        check_model_destination(args.out)  # before scoring: only a model directory is ever replaced
    det = load_detector(path)
    files = existing_audio_files(args.inputs, recursive=args.recursive)
    old = det.threshold_value_
    if args.method == "contamination":
        files, _, _ = without_heard(det, files)  # its training recordings would bias it (logged; recalibrate: same)
        rows = [score_file(det, f) for f in files]
        for r in rows:
            if r.error or r.stopped:
                why = r.error or "the machine was stopped (far quieter than the training audio)"
                print(f"{r.path}: {why} (not used)", file=sys.stderr)
        scores = [r.score for r in rows if r.score is not None]
        if not scores:
            raise ConfigError("none of the files could be scored")
        det.set_threshold(scores=scores, method="contamination", contamination=args.contamination)
        out = det.save(args.out or path)
        new = det.threshold_value_
        flagged = sum(s > new for s in scores)
        print(f"saved {out}  clip threshold {old:.4g} -> {new:.4g} (contamination {args.contamination:g}, "
              f"{len(scores)} files; {flagged} of them above the new threshold); long-file and live levels unchanged")
        return 0
    usable = []
    for f in files:
        try:
            det.load_signal(f)
            usable.append(f)
        except AudioReadError as exc:  # an unreadable recording is reported and left out
            print(f"{f}: {exc} (not used)", file=sys.stderr)
    if not usable:
        raise ConfigError("none of the files could be scored")
    if args.method == "percentile" or args.percentile is not None:
        if args.method == "percentile":
            det.threshold_method = "percentile"
        if args.percentile is not None:
            det.percentile = args.percentile
    rate = None if args.percentile is None else 1.0 - args.percentile / 100.0
    groups = groups_from_paths([str(f) for f in usable], args.group_by)
    cal = recalibrate(det, usable, groups=groups, rate=rate, false_alarms_per_day=args.false_alarms_per_day)
    out = det.save(args.out or path)
    new = det.threshold_value_
    above = int(sum(s > new for s in det.val_scores_))
    print(f"saved {out}  clip threshold {old:.4g} -> {new:.4g} ({cal['n_recordings']} recordings; {above} of their "
          f"{len(det.val_scores_)} clip scores above the new threshold)")
    for line in describe(cal):
        print("  " + line)  # the calibration's warnings are logged (stderr) as it makes them
    return 0
