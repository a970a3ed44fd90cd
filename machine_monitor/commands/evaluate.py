"""``machine-monitor evaluate``: how good is a model on labelled test clips?

Prints AUC, pAUC (FPR <= 0.1), precision, recall, F1 and the confusion matrix at the
model's threshold, and AUC per domain when the clips carry one. Files are scored exactly
as ``scan`` scores them, so the numbers describe its alarms. Evaluation is a report,
not an alarm: exit 0 whenever the metrics were computed, even over a subset of the clips
because some could not be read (each one is listed and the report says how many clips the
metrics cover); exit 2 when nothing can be evaluated (no labels, one class only, no
readable clip, bad model).
"""

from __future__ import annotations

import sys
from pathlib import Path

from machine_monitor.commands.common import (
    LibraryDefault,
    RawDescriptionDefaultsHelpFormatter,
    add_model_arg,
    check_output_dir,
    given,
    resolve_model,
)

HELP = "measure a detector on labelled test clips (AUC, pAUC, precision, recall, F1, confusion matrix)"
DESCRIPTION = HELP + """.

Labels come from file names (DCASE 'normal' / 'anomaly' tokens), from normal/ and
abnormal/ (or anomaly/) folders, or from a split file (JSON with a "test" list of
[path, label 1=anomaly, domain]). Folders are searched recursively.

Exit 0: evaluation ran (clips that could not be read are listed and left out of the
metrics, whose clip count is shown); 2: nothing to evaluate (no labels, only one class,
no readable clip) or the model could not be used."""


def register(sub) -> None:
    p = sub.add_parser("evaluate", help=HELP, description=DESCRIPTION,
                       formatter_class=RawDescriptionDefaultsHelpFormatter)
    add_model_arg(p)
    p.add_argument("inputs", nargs="+", metavar="TEST_DIR_OR_SPLIT",
                   help="labelled folders or files, or one split .json file")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="write ROC, precision-recall, score-distribution and per-clip score PNGs here")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the metrics and every clip's score as JSON")
    p.add_argument("--max-fpr", type=float, default=LibraryDefault("machine_monitor.reports.evaluate:DEFAULT_MAX_FPR"),
                   help="pAUC covers false-positive rates up to this, as the DCASE baselines")
    p.set_defaults(run=run)


def _collect(inputs: list[str]):
    from machine_monitor.commands.common import existing_audio_files
    from machine_monitor.errors import ConfigError
    from machine_monitor.reports.evaluate import label_paths, read_split

    splits = [i for i in inputs if i.lower().endswith(".json")]
    if splits:
        if len(inputs) > 1:
            raise ConfigError("give one split file, or folders and files, not both")
        return read_split(splits[0])
    return label_paths(existing_audio_files(inputs, recursive=True))


def _score(det, clips, progress: bool, members: dict | None = None):
    """Score each clip exactly as ``scan`` does (so the metrics describe its alarms: a file
    longer than the model's clips gets its worst window's score); a clip that cannot be
    used gets NaN and its one-line reason; a clip of a stopped machine (far quieter than the
    training audio: the monitor would not score it) gets NaN and is listed apart."""
    import numpy as np
    from tqdm.auto import tqdm

    from machine_monitor.filescore import score_file

    scores = np.full(len(clips), np.nan)
    thresholds = np.full(len(clips), np.nan)  # a long file's is the long-file threshold for its windows
    errors: dict[int, str] = {}
    stopped: list[int] = []
    for i, path in enumerate(tqdm(clips.paths, desc="scoring", unit="clip", disable=not progress, leave=False)):
        row = score_file(det, path)
        if members is not None and row.members is not None:  # a multi-view model: which view found it
            members[i] = row.members
        if row.error is not None:
            errors[i] = row.error
        elif row.stopped:
            stopped.append(i)
        else:
            scores[i], thresholds[i] = row.score, row.threshold
    return scores, thresholds, errors, stopped


#: Why a clip of a stopped machine is not in the metrics.
STOPPED = "machine stopped: far quieter than the training audio, not scored"


def _fmt_report(model, m: dict, n_total: int, errors: list[dict], stopped: list[str]) -> str:
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    lines = [f"model      {model}",
             f"clips      {m['n']} scored of {n_total} ({m['n_anomaly']} anomalous, {m['n_normal']} normal); "
             f"{len(errors)} could not be read" + (f", {len(stopped)} with the machine stopped" if stopped else "")
             + (" (left out of the metrics)" if errors or stopped else "")]
    lines += [f"  error    {e['path']}: {e['error']}" for e in errors]
    lines += [f"  stopped  {p}: {STOPPED}" for p in stopped]
    lines += [f"AUC        {m['auc']:.4f}",
              f"pAUC       {m['pauc']:.4f}  (FPR <= {m['max_fpr']:g}, standardised: 0.5 = chance)",
              f"threshold  {m['threshold']:.6g}  (the model's; a clip above it is flagged)",
              f"precision  {m['precision']:.4f}",
              f"recall     {m['recall']:.4f}",
              f"F1         {m['f1']:.4f}",
              "confusion matrix at the threshold:",
              f"  {'':<14}{'pred normal':>12}{'pred anomaly':>14}",
              f"  {'true normal':<14}{tn:>12}{fp:>14}",
              f"  {'true anomaly':<14}{fn:>12}{tp:>14}"]
    if m["domains"]:
        lines.append("AUC by domain (normal clips of the domain against all anomalous clips):")
        lines += [f"  {d:<12}{v['auc']:.4f}  ({v['n_normal']} normal, {v['n_anomaly']} anomalous)"
                  for d, v in m["domains"].items()]
    return "\n".join(lines)


def run(args) -> int:
    import json
    import time

    import numpy as np

    from machine_monitor.detectors.registry import load_detector
    from machine_monitor.errors import ConfigError
    from machine_monitor.reports.evaluate import evaluate_scores

    if args.json is not None and args.json.is_dir():
        raise ConfigError(f"--json {args.json}: is a directory; give a file name (e.g. {args.json / 'metrics.json'})")
    check_output_dir(args.plots, "--plots")
    model = resolve_model(args.model)
    det = load_detector(model)
    clips = _collect(args.inputs)
    print(f"evaluating {model} on {len(clips)} clips", file=sys.stderr)
    from machine_monitor.detectors.calibration import heard_names, heard_recordings

    heard = heard_recordings(det, list(clips.paths))
    if heard:  # scored anyway (the user asked for them), but the metrics must not be taken at face value
        print(f"WARNING: {len(heard)} of the {len(clips)} clips trained this model ({heard_names(clips.paths, heard)}"
              "): it heard them, so their scores are optimistic and the metrics flatter it; evaluate on recordings "
              "it never heard", file=sys.stderr)
    t0 = time.perf_counter()
    members: dict[int, dict] = {}
    scores, thresholds, errors, stopped = _score(det, clips, args.progress, members=members)
    seconds = time.perf_counter() - t0
    ok = np.isfinite(scores)
    if not ok.any():
        raise ConfigError(f"none of the {len(clips)} clips could be scored (first: {clips.paths[0]}: "
                          f"{errors.get(0, STOPPED)})")
    domains = [d for d, good in zip(clips.domains, ok) if good]
    metrics = evaluate_scores(clips.labels[ok], scores[ok], det.threshold_value_,
                              domains=domains if any(domains) else None, **given(args, "max_fpr"),
                              per_clip_thresholds=thresholds[ok])
    error_rows = [{"path": str(clips.paths[i]), "error": e} for i, e in errors.items()]
    off = [str(clips.paths[i]) for i in stopped]
    print(_fmt_report(model, metrics, len(clips), error_rows, off))
    print(f"scored {len(clips)} clips in {seconds:.1f} s", file=sys.stderr)

    if args.json:
        doc = {"model": str(model), "inputs": list(args.inputs), "n_clips": len(clips),
               "n_errors": len(error_rows), "n_stopped": len(off), "n_heard": len(heard),
               **metrics, "errors": error_rows, "stopped": off,
               "clips": [{"path": str(p), "label": int(lab), "domain": d,
                          "score": float(s) if np.isfinite(s) else None,
                          **({"members": members[i]} if i in members else {})}
                         for i, (p, lab, d, s) in enumerate(zip(clips.paths, clips.labels, clips.domains, scores))]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plots:
        from machine_monitor.reports.plots import write_plots

        subtitle = f"{Path(model).name}: {metrics['n']} clips ({metrics['n_anomaly']} anomalous)"
        written = write_plots(args.plots, clips.labels[ok], scores[ok], det.threshold_value_, domains=domains,
                              names=[str(p) for p, good in zip(clips.paths, ok) if good], **given(args, "max_fpr"),
                              subtitle=subtitle)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
