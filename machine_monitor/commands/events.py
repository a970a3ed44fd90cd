"""``events``, ``ack`` and ``silence``: read the event store and act on a running service through it.

The running service reads acknowledgements and silences from the store within
half a second; nothing needs the service to be running.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

EPILOG = "give the store with --store FILE or the service's configuration with --config machines.toml"


def _store_args(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("-c", "--config", type=Path, help="the service's machines.toml (its store is used)")
    g.add_argument("--store", type=Path, help="the event store (SQLite file)")


def register(sub) -> None:
    p = sub.add_parser("events", help="list past events from the service's event store",
                       description="List events from the event store, oldest first (newest last).", epilog=EPILOG)
    _store_args(p)
    p.add_argument("--machine", help="only this machine's events")
    p.add_argument("--kind", action="append", help="only this kind (alert, alert_end, heartbeat, ...); repeatable")
    p.add_argument("--since", help="only events newer than this: a duration (30m, 2h, 7d) or an ISO date")
    p.add_argument("--after-id", type=int, default=0, help="only events with a larger id")
    p.add_argument("--limit", type=int, default=50, help="at most this many (the newest); 0 = all")
    p.add_argument("--format", choices=("table", "jsonl"), default="table",
                   help="one aligned line per event, or one JSON object per line")
    p.add_argument("-f", "--follow", action="store_true",
                   help="then keep printing new events as they are stored (Ctrl-C ends it)")
    p.set_defaults(run=run_events)

    a = sub.add_parser("ack", help="acknowledge an alert (stops its repeat notifications)", epilog=EPILOG)
    _store_args(a)
    a.add_argument("event_id", type=int, help="the alert's event id (see `events --kind alert`)")
    a.add_argument("--who", default=None, help="who acknowledges (default: the login name)")
    a.add_argument("--comment", default=None, help="a note stored with the acknowledgement")
    a.set_defaults(run=run_ack)

    s = sub.add_parser("silence", help="silence a machine (or all) for a time span: no notifications",
                       description="Alerts during a silence are stored, marked silenced, and not notified.",
                       epilog=EPILOG)
    _store_args(s)
    s.add_argument("machine", nargs="?", help="the machine to silence; omit with --all")
    s.add_argument("--all", action="store_true", help="silence every machine")
    s.add_argument("--for", dest="duration", default=None, help="how long: 90m, 2h, 1d")
    s.add_argument("--reason", default=None, help="why (stored with the silence and shown by --list)")
    s.add_argument("--who", default=None, help="who silences (default: the login name)")
    s.add_argument("--list", action="store_true", help="list the silences in force and exit")
    s.add_argument("--end", type=int, default=None, metavar="ID", help="end silence ID now")
    s.set_defaults(run=run_silence)


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``2h``, ``1d`` or ``1h30m``."""
    from machine_monitor.errors import ConfigError

    parts = re.fullmatch(r"\s*((\d+(\.\d+)?)\s*([smhdw])\s*)+", text or "")
    if not parts:
        raise ConfigError(f"not a duration: {text!r} (examples: 90s, 30m, 2h, 1d)")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    return sum(float(n) * unit[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)\s*([smhdw])", text))


def _since(text: str | None) -> float | None:
    from datetime import datetime, timezone

    from machine_monitor.errors import ConfigError

    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ConfigError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since: neither a duration nor an ISO date: {text!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def open_store(args):
    from machine_monitor.errors import ConfigError
    from machine_monitor.service.store import EventStore

    if args.config is not None:
        from machine_monitor.service.config import load_config

        path = load_config(args.config).store
    else:
        path = args.store
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no event store there (has the service run?)")
    return EventStore(path)


def _who(who: str | None) -> str:
    if who:
        return who
    try:
        return os.getlogin()
    except OSError:
        return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def run_events(args) -> int:
    store = open_store(args)
    limit = args.limit or None
    evs = store.events(since_id=args.after_id, machine=args.machine, kinds=args.kind, since_epoch=_since(args.since),
                       limit=limit, newest_first=True)[::-1]
    from machine_monitor.service.serve import describe

    def show(ev: dict) -> None:
        if args.format == "jsonl":
            print(json.dumps(ev), flush=True)
        else:
            text = describe(ev).rsplit(" [event", 1)[0]
            print(f"{ev['id']:>6}  {ev['time'][:23]:<23}  {text}", flush=True)

    if args.format == "table":
        print(f"{'id':>6}  {'time (UTC)':<23}  event")
    for ev in evs:
        show(ev)
    print(f"{len(evs)} event(s) from {store.path}", file=sys.stderr)
    # Newer matching events can only come after the newest shown (or, with none, after the end now).
    last = evs[-1]["id"] if evs else max(args.after_id, store.last_id())
    while args.follow:  # Ctrl-C ends it (exit 130)
        time.sleep(0.5)
        for ev in store.events(since_id=last, machine=args.machine, kinds=args.kind, limit=None):
            show(ev)
            last = ev["id"]
    return 0


def run_ack(args) -> int:
    store = open_store(args)
    ev = store.ack(args.event_id, _who(args.who), comment=args.comment)
    print(f"alert {ev.get('alert_id', args.event_id)} of {ev.get('machine') or 'service'} acknowledged by "
          f"{ev.get('who')} (event {ev.get('id')})")
    return 0


def run_silence(args) -> int:
    from machine_monitor.errors import ConfigError
    from machine_monitor.service.store import iso

    store = open_store(args)
    if args.list:
        for s in store.active_silences():
            print(f"{s['id']:>4}  {s['machine'] or 'ALL':<16} until {iso(s['until'])}  by {s['who']}"
                  + (f"  ({s['reason']})" if s["reason"] else ""))
        return 0
    if args.end is not None:
        ev = store.unsilence(args.end, _who(args.who))
        print(f"silence {args.end} ended (event {ev['id']})")
        return 0
    if (args.machine is None) == (not args.all):
        raise ConfigError("silence needs a machine name or --all (not both)")
    if args.duration is None:
        raise ConfigError("silence needs --for DURATION (e.g. 2h)")
    if args.config is not None and args.machine is not None:
        from machine_monitor.service.config import load_config

        names = [m.name for m in load_config(args.config).machines]
        if args.machine not in names:
            raise ConfigError(f"{args.config}: no machine named {args.machine!r} (machines: {', '.join(names)})")
    until = time.time() + parse_duration(args.duration)
    ev = store.silence(None if args.all else args.machine, until, _who(args.who), args.reason)
    print(f"silence {ev['silence_id']}: {args.machine or 'every machine'} until {iso(until)} (event {ev['id']})")
    return 0
