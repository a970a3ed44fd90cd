"""Command-line interface: parse arguments, call the library, map errors to exit codes.

Exit codes (ruff-like, documented in the README):
0 ran, nothing anomalous; 1 ran, anomalies found; 2 usage, input, model or device
error; 130 interrupted. Results go to stdout, logs and progress bars to stderr.

Each command lives in ``machine_monitor/commands/<name>.py`` with ``register(sub)``
and ``run(args) -> int``; heavy imports happen inside ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from machine_monitor import __version__
from machine_monitor.errors import MachineMonitorError

EXIT_OK, EXIT_ANOMALY, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
# Order shown in --help.
COMMANDS = ("train", "threshold", "scan", "evaluate", "devices", "record", "monitor", "serve",
            "events")  # events.py also registers `ack` and `silence`

log = logging.getLogger("machine_monitor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="machine-monitor",
        description="Acoustic condition monitoring: learn a machine's normal sound, flag what is not.",
        epilog="exit codes: 0 nothing anomalous, 1 anomalies found, 2 usage/input/model/device error, "
        "130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"machine_monitor.commands.{name}").register(sub)
    # -q / -v are accepted after the command too (`machine-monitor scan -q ...`); SUPPRESS keeps
    # a value given before the command when none is given after it.
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                             help="more log output on stderr")
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="only errors on stderr, no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    level = logging.ERROR if args.quiet else (logging.DEBUG if args.verbose > 1 else
                                               logging.INFO if args.verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    args.progress = not args.quiet and sys.stderr.isatty() or args.verbose > 0
    try:
        return int(args.run(args))
    except MachineMonitorError as exc:
        print(f"machine-monitor: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("machine-monitor: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `machine-monitor scan ... | head` closed our stdout: not an error of ours.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
