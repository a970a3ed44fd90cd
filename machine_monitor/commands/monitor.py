"""``machine-monitor monitor``: listen to a machine live and raise alerts."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from machine_monitor.commands.common import (
    DefaultsHelpFormatter,
    LibraryDefault,
    add_channel_arg,
    add_model_arg,
    given,
    nonnegative_float,
    positive_float,
    positive_int,
    resolve_model,
)

#: After Ctrl-C / SIGTERM, a running --on-alert command gets this long before it is killed.
STOP_SECONDS = 3.0
_POLICY = "machine_monitor.live.policy:AlertPolicy"
HELP = "listen to a machine through a microphone (or replay a file) and raise alerts"
EPILOG = ("exit codes: 0 no alert episode, 1 at least one alert episode, 2 model/device/usage error, "
          "130 stopped by Ctrl-C or SIGTERM (the summary is printed first)")


def register(sub) -> None:
    p = sub.add_parser("monitor", help=HELP, description=HELP + ". Events go to stdout and --alert-log, "
                       "a status line to stderr.", epilog=EPILOG,
                       formatter_class=DefaultsHelpFormatter)
    add_model_arg(p)
    src = p.add_argument_group("input")
    src.add_argument("--device", default=None, help="input device: index or part of its name (see `devices`); "
                     "default: the system's default input")
    src.add_argument("--samplerate", type=positive_float, default=None,
                     help="open the device at this rate (default: the device's own); resampled to 16 kHz")
    add_channel_arg(src)
    src.add_argument("--input", type=Path, default=None, metavar="FILE",
                     help="replay this audio file through the same loop instead of a microphone")
    src.add_argument("--speed", type=nonnegative_float, default=1.0,
                     help="--input replay speed: 1 = real time, 0 = as fast as possible")
    w = p.add_argument_group("windows and alert policy")
    w.add_argument("--window", type=positive_float, default=None, metavar="S",
                   help="seconds of audio scored at each hop (default: one feature window of the model: for the "
                   "default peak models their span, 10 s or the training clips' length; for frame models 2 s, or the "
                   "clip length if shorter; the start-up line says what is used)")
    w.add_argument("--hop", type=positive_float, metavar="S",
                   default=LibraryDefault("machine_monitor.live.monitor:DEFAULT_HOP_SECONDS"),
                   help="seconds between windows (rounded to whole feature frames)")
    w.add_argument("--k-of-n", type=positive_int, nargs=2, default=LibraryDefault(f"{_POLICY}.k+n"), metavar=("K", "N"),
                   help="alert when K of the last N windows are anomalous")
    w.add_argument("--quiet-period", type=nonnegative_float, default=LibraryDefault(f"{_POLICY}.quiet_seconds"),
                   metavar="S",
                   help="an alert episode ends after S seconds without an anomalous window")
    w.add_argument("--margin", type=nonnegative_float, default=None,
                   help="a window is anomalous above clip threshold + MARGIN * |threshold| instead of the model's "
                   "calibrated live level (default: the calibrated level)")
    w.add_argument("--false-alarms-per-day", type=positive_float, default=None, metavar="RATE",
                   help="re-calibrate the live level for this many false alerts per day of normal sound "
                   "(default: the model's target, set at training)")
    o = p.add_argument_group("where alerts go")
    o.add_argument("--alert-log", type=Path, default=Path("alerts.jsonl"), metavar="FILE",
                   help="append every event as a JSON line (flushed to disk at once)")
    o.add_argument("--evidence-dir", type=Path, default=Path("evidence"), metavar="DIR",
                   help="save the audio that opened each alert here as WAV")
    o.add_argument("--on-alert", default=None, metavar="CMD",
                   help="run CMD (split like a shell would, but no shell) on each alert and signal loss; the "
                   "event is in MM_* environment variables and as JSON on stdin")
    o.add_argument("--status-interval", type=positive_float, default=60.0, metavar="S",
                   help="when stderr is not a terminal, print a status line every S seconds")
    p.set_defaults(run=run)


def run(args) -> int:
    import shlex

    import torch

    from machine_monitor.audio.sources import FileSource, LiveSource
    from machine_monitor.detectors.registry import load_detector
    from machine_monitor.errors import AudioReadError, ConfigError
    from machine_monitor.live.monitor import Monitor, StatusLine
    from machine_monitor.live.policy import AlertPolicy
    from machine_monitor.live.sinks import CommandRunner, ConsoleSink, EvidenceWriter, JsonlLog

    # A tiny network on a shared factory PC: one thread is fastest and leaves the rest alone.
    torch.set_num_threads(1)
    if args.speed < 0:
        raise ConfigError(f"--speed must be >= 0, not {args.speed}")
    argv = shlex.split(args.on_alert) if args.on_alert else None
    if args.on_alert is not None and not argv:
        raise ConfigError("--on-alert needs a command")
    model_dir = resolve_model(args.model)
    det = load_detector(model_dir)
    # And one BLAS/OpenMP thread (after the model's libraries are loaded): idle BLAS threads spin,
    # 21 % of a core instead of 1 % when no thread variable is set (issue 12).
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    rule = {} if isinstance(args.k_of_n, LibraryDefault) else {"k": args.k_of_n[0], "n": args.k_of_n[1]}
    policy = AlertPolicy(**rule, **given(args, "quiet_period", "margin", "false_alarms_per_day",
                                         rename={"quiet_period": "quiet_seconds"}))
    if args.input is not None:
        source = FileSource(args.input, speed=args.speed, channel=args.channel)
    else:
        source = LiveSource(args.device, channel=args.channel, samplerate=args.samplerate)
    status = None if args.quiet else StatusLine(sys.stderr, interval=args.status_interval)
    runner = CommandRunner(argv) if argv else None
    sinks = [EvidenceWriter(args.evidence_dir), JsonlLog(args.alert_log),
             ConsoleSink(before=status.clear if status else None)] + ([runner] if runner else [])
    monitor = Monitor(det, source, policy=policy, sinks=sinks, window_seconds=args.window,
                      hop_seconds=given(args, "hop").get("hop"),
                      model_name=Path(model_dir).resolve().name, on_window=status)
    if args.input is not None and source.seconds < monitor.window_seconds:
        raise AudioReadError(f"{args.input}: is {source.seconds:.2f} s long, shorter than one "
                             f"{monitor.window_seconds:.2f} s monitoring window: nothing to score")

    got = []

    def on_signal(signum, frame):
        got.append(signum)
        monitor.stop(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"monitoring {source.describe()} with {model_dir}: {monitor.window_seconds:.2f} s windows every "
              f"{monitor.hop_seconds:.3f} s, alert when {policy.k} of {policy.n} exceed {monitor.level:.4g} "
              f"({monitor.level_source}); events to {args.alert_log}",
              file=sys.stderr, flush=True)
        summary = monitor.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if runner is not None:
            # Stopped by a signal: a running --on-alert command gets a few seconds, then is killed.
            runner.close(timeout=STOP_SECONDS if got else runner.timeout)
        if status is not None:
            status.clear()
    print(summary.describe())
    if got:
        return 130
    if args.input is not None and summary.windows == 0 and not summary.stopped_windows:  # stopped: a state, no error
        raise AudioReadError(f"{args.input}: no window of it could be scored (silent or broken audio)")
    return 1 if summary.alerts else 0
