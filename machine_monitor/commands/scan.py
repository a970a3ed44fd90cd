"""``machine-monitor scan``: score every audio file and write one row per file.

A thin layer over :mod:`machine_monitor.scan` (scoring, workers, output formats)
and :mod:`machine_monitor.reports.report` (the HTML report).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from machine_monitor.commands.common import (
    add_channel_arg,
    add_model_arg,
    check_output_file,
    positive_float,
    positive_int,
    resolve_model,
)

log = logging.getLogger(__name__)

HELP = "score audio files or folders with a trained detector"
EPILOG = ("exit codes: 0 all files normal; 1 anomalies found; 2 at least one file could not be scored "
          "(its row says why; the other rows are still written) or the model/arguments are unusable; "
          "130 interrupted (rows finished so far are kept)")


def default_workers(cap: int = 8) -> int:
    """The CPUs this process may use, at most ``cap`` (each worker holds ~200-400 MB of torch)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, cap))


def register(sub) -> None:
    p = sub.add_parser("scan", help=HELP, description=HELP + ": one row per file, worst first. Files longer "
                       "than the model's clip length are scored in clip-long windows; the file score is the "
                       "worst window's.", epilog=EPILOG)
    add_model_arg(p)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR",
                   help="audio files, or folders scanned for .wav .flac .ogg .oga .opus .mp3 .aiff .aif .au")
    p.add_argument("-r", "--recursive", action="store_true", help="also look in subfolders")
    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="FILE",
                   help="write rows to FILE (streamed as files complete, then sorted) instead of stdout")
    o.add_argument("-f", "--format", choices=("table", "csv", "jsonl"), default=None,
                   help="row format (default: from the --output suffix .csv/.jsonl, else table)")
    o.add_argument("--order", choices=("score", "input", "completion"), default="score",
                   help="row order: worst score first, errors last (default); input order; or as files "
                   "complete (streams to stdout)")
    o.add_argument("--resume", action="store_true",
                   help="skip files already scored in --output (csv/jsonl) and add the rest; error rows are retried")
    o.add_argument("--report", metavar="HTML", help="also write a self-contained HTML report")
    o.add_argument("--report-top", type=positive_int, default=10, metavar="N",
                   help="spectrograms for the N worst anomalies in the report (default: 10)")
    w = p.add_argument_group("work")
    w.add_argument("-j", "--workers", type=positive_int, default=default_workers(), metavar="N",
                   help="worker processes (each loads the model once, one BLAS/torch thread each); 1 = in this "
                   "process (default: the CPUs available, at most 8)")
    w.add_argument("--dask", metavar="ADDRESS",
                   help="run on an existing dask.distributed cluster (scheduler address, e.g. tcp://host:8786); "
                   "its workers must see the model and files under the same paths")
    w.add_argument("--window-seconds", type=positive_float, default=None, metavar="S",
                   help="window length for long files (default: the model's clip length)")
    w.add_argument("--hop-seconds", type=positive_float, default=None, metavar="S",
                   help="distance between window starts (default: the window length, no overlap)")
    add_channel_arg(w)
    p.set_defaults(run=run)


def run(args) -> int:
    from machine_monitor.audio.io import find_audio_files
    from machine_monitor.detectors.registry import load_detector
    from machine_monitor.errors import ConfigError
    from machine_monitor.scan import ScanOutput, chain_differences

    if args.resume and not args.output:
        raise ConfigError("--resume needs --output FILE (the scan to resume)")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, not {args.workers}")
    check_output_file(args.output, "--output")
    check_output_file(args.report, "--report")
    model = resolve_model(args.model)
    det = load_detector(model, device="cpu")
    if args.channel is not None:
        det.channel = args.channel
    files = [str(f) for f in find_audio_files(args.inputs, recursive=args.recursive)]
    if not files:
        raise ConfigError(f"no audio files in {', '.join(args.inputs)}")
    warning = chain_differences(det, files)
    if warning:
        log.warning("%s", warning)
    output = ScanOutput(files, path=args.output, fmt=args.format, order=args.order, resume=args.resume)
    t0 = time.perf_counter()
    audio_s, interrupted = _scan(args, det, model, output)
    elapsed = time.perf_counter() - t0
    ordered = output.finish()
    rows = output.rows
    n_anom = sum(r.anomalous for r in rows)
    n_err = sum(r.error is not None for r in rows)
    n_off = sum(r.stopped for r in rows)
    off = f", {n_off} with the machine stopped (not scored)" if n_off else ""
    speed = f", {audio_s / elapsed:,.0f}x real time" if elapsed > 0 and audio_s else ""
    print(f"{len(rows)} files: {n_anom} anomalous{off}, {n_err} errors ({len(rows) - len(output.kept)} scanned now: "
          f"{audio_s / 3600:.2f} h of audio in {elapsed:.1f} s{speed})", file=sys.stderr)
    if args.report and not interrupted:
        from machine_monitor.reports.report import write_report

        write_report(args.report, ordered, det, model=str(model), elapsed=elapsed, top=args.report_top)
        print(f"report: {Path(args.report)}", file=sys.stderr)
    if interrupted:
        raise KeyboardInterrupt
    return 2 if n_err else (1 if n_anom else 0)


def _scan(args, det, model, output) -> tuple[float, bool]:
    """Score the files still to do into ``output`` with a progress bar; (audio seconds, interrupted)."""
    from tqdm.auto import tqdm

    from machine_monitor.scan import scan_files

    t0, audio_s = time.perf_counter(), 0.0
    bar = tqdm(total=len(output.todo), unit="file", disable=not args.progress, file=sys.stderr, dynamic_ncols=True)
    try:
        with output:
            for row in scan_files(det, output.todo, model=model, workers=args.workers, dask_address=args.dask,
                                  segment_seconds=args.window_seconds, hop_seconds=args.hop_seconds):
                output.write(row)
                audio_s += row.duration or 0.0
                bar.update()
                rate = audio_s / 3600 / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{rate:.2f} audio-h/s", refresh=False)
    except KeyboardInterrupt:
        return audio_s, True
    finally:
        bar.close()
    return audio_s, False
