"""JSONL log sink: one event a line, flushed and fsynced; never writes an event id twice.

At open it reads the id of the file's last line, so a restart after ``kill -9``
between the write and the cursor's commit skips the event instead of repeating
it. The file is opened for each event, so it can be rotated while the service runs
(after a rotation the check starts again from the new file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from machine_monitor.service.sinks.base import DeliveryError, Sink


def last_event_id(path: Path) -> int:
    """The ``id`` of the last complete JSON line of ``path`` (0 if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line).get("id", 0))
        except (ValueError, AttributeError):
            continue  # a torn last line: the event is written again
    return 0


class JsonlSink(Sink):
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._last = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last = last_event_id(self.path)

    def deliver(self, event: dict) -> None:
        if event["id"] <= self._last and self.path.exists():
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                if f.tell() > 0:
                    self._terminate_torn_line(f)
                f.write(json.dumps(event) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise DeliveryError(f"{self.path}: {exc.strerror or exc}") from None
        self._last = event["id"]

    def _terminate_torn_line(self, f) -> None:
        with open(self.path, "rb") as r:
            r.seek(-1, os.SEEK_END)
            if r.read(1) != b"\n":
                f.write("\n")
