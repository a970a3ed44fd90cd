"""The durable event store: one SQLite file (WAL) that every event passes through.

**No event is lost**: the service appends an event here, committed with
``synchronous=FULL``, *before* any sink sees it. Each sink then reads the
store from its own delivery cursor (:meth:`EventStore.pending`) and moves the
cursor on (:meth:`EventStore.advance`) only after the receiver acknowledged the
event (HTTP 2xx, MQTT PUBACK, a fsynced line, ...). A receiver that is down
for an hour gets everything afterwards, in order; after ``kill -9`` and a
restart a sink resumes after the last event it had acknowledged.

Read API (also what the dashboard uses; safe from any thread and from other
processes, e.g. ``machine-monitor events`` beside a running service)::

    from machine_monitor.service.store import EventStore

    store = EventStore("events.db")
    store.events(since_id=0, machine="pump3", kinds=("alert", "alert_end"), limit=100)
        # -> [{"id": 17, "machine": "pump3", "event": "alert", "epoch": ..., "time": "...", ...}, ...]
    store.event(17)                       # one event or None
    store.last_id()                       # highest id so far (0 when empty)
    store.ack(17, who="anna")             # acknowledge alert 17: recorded + an "acknowledged" event
    store.acks(machine="pump3")           # [{"event_id", "machine", "who", "epoch", ...}]
    store.silence("pump3", until=epoch, who="anna", reason="bearing swap")   # None = every machine
    store.active_silences()               # silences in force now
    store.unsilence(silence_id, who="anna")

Every event is a dict with at least ``id`` (monotonically increasing, never
reused), ``machine`` (``""`` for service-wide events such as ``heartbeat``),
``event`` (the kind), ``epoch`` (UTC seconds) and ``time`` (ISO 8601); the
other keys depend on the kind (see :mod:`machine_monitor.service.lifecycle`).

Retention (:meth:`EventStore.prune`) removes events older than ``max_age_days``
or beyond the newest ``max_events``, but never one that a sink has not
delivered yet unless the store has grown past twice ``max_events`` (a sink
that never comes back must not fill the disk); such losses are logged.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from machine_monitor.errors import ConfigError, MachineMonitorError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ACKNOWLEDGED, SILENCED, UNSILENCED = "acknowledged", "silenced", "unsilenced"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    epoch REAL NOT NULL,
    machine TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_machine ON events (machine, id);
CREATE INDEX IF NOT EXISTS events_epoch ON events (epoch);
CREATE TABLE IF NOT EXISTS cursors (
    sink TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL,
    epoch REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS acks (
    event_id INTEGER PRIMARY KEY,
    machine TEXT NOT NULL,
    episode INTEGER,
    who TEXT NOT NULL,
    epoch REAL NOT NULL,
    comment TEXT
);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine TEXT,
    start REAL NOT NULL,
    until REAL NOT NULL,
    who TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(MachineMonitorError):
    """The event store cannot be opened or written."""


def iso(epoch: float) -> str:
    """UTC ISO 8601 with milliseconds."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


class EventStore:
    """SQLite event store (see the module docstring).

    Parameters
    ----------
    path : str or path-like
        The database file (created with its folder when missing).
    max_age_days : float or None
        Retention by age; ``None`` keeps events of any age.
    max_events : int or None
        Retention by size (number of events kept).
    """

    def __init__(self, path: str | os.PathLike, *, max_age_days: float | None = 90.0,
                 max_events: int | None = 1_000_000):
        self.path = Path(path)
        self.max_age_days = max_age_days
        self.max_events = max_events
        self._lock = threading.RLock()
        self._new = threading.Condition(self._lock)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            (version,) = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{self.path}: cannot open the event store ({exc})") from None
        if int(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: event store schema {version}, this version reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing -----------------------------------------------------------------
    def append(self, event: dict) -> dict:
        """Store one event durably and return it with its ``id`` (and ``time``/``epoch`` filled in).

        ``event`` needs ``event`` (the kind); ``machine`` defaults to ``""``
        and ``epoch`` to now. When this returns, the event is on disk.
        """
        ev = dict(event)
        if not ev.get("event"):
            raise ValueError("an event needs a kind ('event')")
        ev.setdefault("machine", "")
        ev.setdefault("epoch", time.time())
        ev.setdefault("time", iso(ev["epoch"]))
        ev.pop("id", None)
        body = json.dumps(ev, default=_jsonable)
        with self._new:
            try:
                cur = self._db.execute("INSERT INTO events (epoch, machine, kind, body) VALUES (?, ?, ?, ?)",
                                       (float(ev["epoch"]), ev["machine"], ev["event"], body))
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot write the {ev['event']} event ({exc})") from None
            ev["id"] = cur.lastrowid
            self._new.notify_all()
        return {"id": ev.pop("id"), **ev}

    def wait_for_new(self, after_id: int, timeout: float) -> None:
        """Block until an event newer than ``after_id`` is appended through this object, or ``timeout``.

        Events appended by another process are seen by polling (callers loop).
        """
        with self._new:
            if self.last_id() <= after_id:
                self._new.wait(timeout)

    def wake(self) -> None:
        """Wake every :meth:`wait_for_new` (a worker being stopped)."""
        with self._new:
            self._new.notify_all()

    # -- reading -----------------------------------------------------------------
    def events(self, *, since_id: int = 0, machine: str | None = None, kinds=None, since_epoch: float | None = None,
               until_epoch: float | None = None, limit: int | None = 1000, newest_first: bool = False) -> list[dict]:
        """Events with ``id > since_id``, filtered, oldest first (or newest first).

        Parameters
        ----------
        machine : str or None
            Only this machine's events (``""``: service-wide events only).
        kinds : iterable of str or None
            Only these kinds.
        since_epoch, until_epoch : float or None
            Time span (UTC seconds).
        limit : int or None
        """
        where, args = ["id > ?"], [int(since_id)]
        if machine is not None:
            where.append("machine = ?")
            args.append(machine)
        if kinds:
            kinds = list(kinds)
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args += kinds
        if since_epoch is not None:
            where.append("epoch >= ?")
            args.append(float(since_epoch))
        if until_epoch is not None:
            where.append("epoch <= ?")
            args.append(float(until_epoch))
        sql = f"SELECT id, body FROM events WHERE {' AND '.join(where)} ORDER BY id {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{"id": i, **json.loads(body)} for i, body in rows]

    def event(self, event_id: int) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT id, body FROM events WHERE id = ?", (int(event_id),)).fetchone()
        return None if row is None else {"id": row[0], **json.loads(row[1])}

    def last_id(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
        # AUTOINCREMENT ids never go back, even after pruning: sqlite_sequence keeps the highest.
        return int(n)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def last_episode(self, machine: str) -> int:
        """The highest alert episode number stored for ``machine`` (0 when none)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(CAST(json_extract(body, '$.episode') AS INTEGER)) FROM events "
                                   "WHERE machine = ? AND kind = 'alert'", (machine,)).fetchone()
        return int(row[0] or 0)

    def open_alert(self, machine: str) -> dict | None:
        """The machine's last ``alert`` if no ``alert_end`` followed it (a service killed mid-alert)."""
        with self._lock:
            row = self._db.execute("SELECT id, kind, body FROM events WHERE machine = ? AND kind IN "
                                   "('alert', 'alert_end') ORDER BY id DESC LIMIT 1", (machine,)).fetchone()
        if row is None or row[1] != "alert":
            return None
        return {"id": row[0], **json.loads(row[2])}

    # -- delivery cursors ----------------------------------------------------------
    def cursor(self, sink: str) -> int:
        """Id of the last event ``sink`` acknowledged (0: none yet)."""
        with self._lock:
            row = self._db.execute("SELECT last_id FROM cursors WHERE sink = ?", (sink,)).fetchone()
        return int(row[0]) if row else 0

    def start_cursor(self, sink: str, *, from_id: int | None = None) -> int:
        """Create ``sink``'s cursor if new (at ``from_id``, default: deliver from the beginning); return it."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO cursors VALUES (?, ?, ?)",
                             (sink, int(from_id or 0), time.time()))
        return self.cursor(sink)

    def pending(self, sink: str, *, limit: int = 100) -> list[dict]:
        """Events after ``sink``'s cursor, oldest first."""
        return self.events(since_id=self.cursor(sink), limit=limit)

    def advance(self, sink: str, event_id: int) -> None:
        """``sink`` acknowledged everything up to ``event_id`` (durable when this returns)."""
        with self._lock:
            self._db.execute("INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT(sink) DO UPDATE SET "
                             "last_id = MAX(last_id, excluded.last_id), epoch = excluded.epoch",
                             (sink, int(event_id), time.time()))

    def cursors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT sink, last_id FROM cursors").fetchall())

    # -- acknowledgements and silences ------------------------------------------------
    def ack(self, event_id: int, who: str, *, comment: str | None = None, now: float | None = None) -> dict:
        """Acknowledge the alert ``event_id``: recorded once, and an ``acknowledged`` event appended.

        A running service stops repeating that alert's notifications. Returns
        the ``acknowledged`` event (or the earlier one when already acknowledged).
        """
        if not who:
            raise ConfigError("an acknowledgement needs a name (who)")
        ev = self.event(event_id)
        if ev is None or ev["event"] not in ("alert", "alert_repeat"):
            raise ConfigError(f"{self.path}: event {event_id} is not an alert")
        if ev["event"] == "alert_repeat" and ev.get("alert_id"):
            event_id, ev = ev["alert_id"], self.event(ev["alert_id"]) or ev
        now = time.time() if now is None else now
        with self._lock:
            try:
                self._db.execute("INSERT INTO acks VALUES (?, ?, ?, ?, ?, ?)",
                                 (int(event_id), ev["machine"], ev.get("episode"), who, now, comment))
            except sqlite3.IntegrityError:
                done = self.events(machine=ev["machine"], kinds=[ACKNOWLEDGED], limit=None)
                return next((e for e in done if e.get("alert_id") == event_id), {})
            return self.append({"event": ACKNOWLEDGED, "machine": ev["machine"], "epoch": now, "alert_id": event_id,
                                "episode": ev.get("episode"), "who": who, "comment": comment})

    def acks(self, *, machine: str | None = None, since_epoch: float | None = None) -> list[dict]:
        sql, args = "SELECT event_id, machine, episode, who, epoch, comment FROM acks WHERE 1=1", []
        if machine is not None:
            sql, args = sql + " AND machine = ?", [*args, machine]
        if since_epoch is not None:
            sql, args = sql + " AND epoch >= ?", [*args, since_epoch]
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY epoch", args).fetchall()
        keys = ("event_id", "machine", "episode", "who", "epoch", "comment")
        return [dict(zip(keys, r)) for r in rows]

    def acked(self, event_id: int) -> dict | None:
        """The acknowledgement of alert ``event_id`` or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT who, epoch, comment FROM acks WHERE event_id = ?",
                                   (int(event_id),)).fetchone()
        return None if row is None else {"who": row[0], "epoch": row[1], "comment": row[2]}

    def silence(self, machine: str | None, until: float, who: str, reason: str | None = None, *,
                start: float | None = None) -> dict:
        """Silence ``machine`` (``None``: every machine) from ``start`` (now) to ``until`` (UTC seconds).

        Alerts raised meanwhile are still stored (marked ``silenced``) but not
        notified. Returns the ``silenced`` event, whose ``silence_id`` names it.
        """
        now = time.time()
        start = now if start is None else float(start)
        if not who:
            raise ConfigError("a silence needs a name (who)")
        if until <= max(start, now):
            raise ConfigError(f"a silence must end in the future, not at {iso(until)}")
        with self._lock:
            cur = self._db.execute("INSERT INTO silences (machine, start, until, who, reason, created) "
                                   "VALUES (?, ?, ?, ?, ?, ?)", (machine, start, float(until), who, reason, now))
            sid = cur.lastrowid
            return self.append({"event": SILENCED, "machine": machine or "", "silence_id": sid, "start": start,
                                "until": float(until), "until_time": iso(until), "who": who, "reason": reason})

    def unsilence(self, silence_id: int, who: str) -> dict:
        """End silence ``silence_id`` now; returns the ``unsilenced`` event."""
        now = time.time()
        with self._lock:
            row = self._db.execute("SELECT machine, until FROM silences WHERE id = ?", (int(silence_id),)).fetchone()
            if row is None:
                raise ConfigError(f"{self.path}: no silence {silence_id}")
            self._db.execute("UPDATE silences SET until = MIN(until, ?) WHERE id = ?", (now, int(silence_id)))
            return self.append({"event": UNSILENCED, "machine": row[0] or "", "silence_id": int(silence_id),
                                "who": who})

    def active_silences(self, now: float | None = None) -> list[dict]:
        """Silences in force at ``now``: ``id``, ``machine`` (None = all), ``start``, ``until``, ``who``, ``reason``."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("SELECT id, machine, start, until, who, reason FROM silences "
                                    "WHERE start <= ? AND until > ? ORDER BY id", (now, now)).fetchall()
        keys = ("id", "machine", "start", "until", "who", "reason")
        return [dict(zip(keys, r)) for r in rows]

    # -- retention -----------------------------------------------------------------
    def evidence_paths(self) -> set[str]:
        """The evidence files the stored events refer to (alerts' ``evidence``), as given."""
        with self._lock:
            rows = self._db.execute("SELECT body FROM events WHERE kind = 'alert'").fetchall()
        out = set()
        for (body,) in rows:
            path = json.loads(body).get("evidence")
            if path:
                out.add(str(path))
        return out

    def prune(self, now: float | None = None, *, sinks=None) -> int:
        """Apply retention; returns how many events were removed.

        ``sinks``: the cursors that count (the sinks configured now); ``None``: every cursor.
        A sink removed from the configuration no longer holds events back.
        """
        now = time.time() if now is None else now
        with self._lock:
            cursors = self.cursors()
            if sinks is not None:
                cursors = {k: v for k, v in cursors.items() if k in set(sinks)}
            delivered = min(cursors.values(), default=self.last_id())
            total = self.count()
            removed = 0
            if self.max_age_days is not None:
                cut = now - self.max_age_days * 86400
                removed += self._db.execute("DELETE FROM events WHERE epoch < ? AND id <= ?",
                                            (cut, delivered)).rowcount
            if self.max_events is not None and total - removed > self.max_events:
                excess = total - removed - self.max_events
                removed += self._db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id <= ? "
                                            "ORDER BY id LIMIT ?)", (delivered, excess)).rowcount
                left = self.count()
                if left > 2 * self.max_events:
                    over = left - self.max_events
                    lost = self._db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id "
                                            "LIMIT ?)", (over,)).rowcount
                    removed += lost
                    log.error("event store over twice its size limit: %d events no sink had delivered were "
                              "removed (is a sink down for good?)", lost)
            self._db.execute("DELETE FROM silences WHERE until < ?", (now - 86400 * (self.max_age_days or 3650),))
        return removed


def _jsonable(x):
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
