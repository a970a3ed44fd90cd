"""``machine-monitor serve machines.toml``: monitor several machines as one service."""

from __future__ import annotations

import logging
import sys

from machine_monitor.commands.common import DefaultsHelpFormatter

HELP = "monitor several machines as a service (machines.toml): alert lifecycle, event store, sinks"
EPILOG = ("exit codes: 0 stopped or inputs ended without an alert, 1 inputs ended with alerts, 2 configuration, "
          "model or store error, 130 stopped by SIGTERM/Ctrl-C (systemd treats it as clean). SIGHUP reloads "
          "machines.toml and every model re-saved since it was loaded (e.g. by `threshold`).")


def register(sub) -> None:
    p = sub.add_parser("serve", help=HELP, description=HELP + ". See the README section "
                       "'Running on a factory PC' for the file's format.", epilog=EPILOG,
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("config", nargs="?", default=None, metavar="machines.toml", help="the service configuration")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration (and load every model), then exit: 0 valid, 2 not")
    p.add_argument("--print-systemd-unit", action="store_true",
                   help="print a systemd unit that runs this configuration, then exit")
    p.add_argument("--user", default="machine-monitor", help="with --print-systemd-unit: the (non-root) user")
    p.set_defaults(run=run)


def run(args) -> int:
    from machine_monitor.errors import ConfigError
    from machine_monitor.service.config import load_config
    from machine_monitor.service.serve import JournalFormatter, systemd_unit

    if args.print_systemd_unit:
        sys.stdout.write(systemd_unit(args.config, user=args.user))
        return 0
    if args.config is None:
        raise ConfigError("serve needs a configuration file (machines.toml)")
    for h in logging.getLogger().handlers:
        h.setFormatter(JournalFormatter())
    if not args.verbose and not args.quiet:
        logging.getLogger().setLevel(logging.INFO)  # a service's log is its events
    config = load_config(args.config)
    from machine_monitor.service.serve import Service, limit_threads, load_detectors

    limit_threads()
    detectors = load_detectors(config)
    if args.check:
        print(f"{config.path}: valid: {len(config.machines)} machine(s) "
              f"({', '.join(m.name for m in config.machines)}), {len(config.sinks)} sink(s), "
              f"store {config.store}")
        return 0
    service = Service(config, detectors=detectors)
    service.install_signal_handlers()
    alerts = service.run()
    print(f"serve: {service.stopped_by}; {alerts} alert episode(s) while running; events in {config.store}")
    if service.stopped_by in ("SIGTERM", "SIGINT"):
        return 130
    return 1 if alerts else 0
