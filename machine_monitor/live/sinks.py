"""Alert events and where they go: a JSONL log, evidence WAVs, a user command, the console.

A *sink* is any object with ``handle(event, audio)``; the monitor calls its sinks
in order for every event, so a sink that fills in ``event.evidence`` must come
before the ones that report it (the CLI puts :class:`EvidenceWriter` first).

Event kinds
-----------
``alert``            an episode opened (k of the last n windows anomalous)
``alert_end``        it closed after a quiet period, or the monitor stopped
``signal_lost``      digitally silent / non-finite input, or the device went away
``signal_restored``  scorable audio again after a loss
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from machine_monitor.errors import ConfigError

log = logging.getLogger(__name__)

ALERT, ALERT_END, SIGNAL_LOST, SIGNAL_RESTORED = "alert", "alert_end", "signal_lost", "signal_restored"
#: Operating state: sound far quieter than any training audio (the machine is off), and its end.
MACHINE_STOPPED, MACHINE_RUNNING = "machine_stopped", "machine_running"
#: Events a person must hear about; ``--on-alert`` runs for these.
ACTION_EVENTS = (ALERT, SIGNAL_LOST)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclasses.dataclass
class Event:
    """One monitoring event, as written to the JSONL log.

    ``stream_seconds`` is the position in the audio (seconds since the monitor
    started listening) where the event was decided; ``time`` the wall clock then.
    """

    event: str
    time: str
    epoch: float
    model: str
    stream_seconds: float
    threshold: float | None = None  # the level a window must exceed to count as anomalous
    peak_score: float | None = None
    duration: float | None = None  # seconds of audio the event covers
    windows: str | None = None  # "k/n" anomalous windows that opened the alert
    episode: int | None = None
    evidence: str | None = None
    reason: str | None = None

    @classmethod
    def now(cls, event: str, **fields) -> Event:
        t = utc_now()
        return cls(event=event, time=t.isoformat(timespec="milliseconds"), epoch=t.timestamp(), **fields)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def describe(self) -> str:
        """One human line."""
        at = f"{self.time} (t={self.stream_seconds:.1f} s)"
        if self.event == ALERT:
            return (f"ALERT #{self.episode} at {at}: {self.windows} windows anomalous, peak {self.peak_score:.4g} "
                    f"> {self.threshold:.4g}" + (f", evidence {self.evidence}" if self.evidence else ""))
        if self.event == ALERT_END:
            return (f"alert #{self.episode} ended at {at}: lasted {self.duration:.1f} s, peak {self.peak_score:.4g}"
                    f" ({self.reason})")
        if self.event == SIGNAL_LOST:
            return f"SIGNAL LOST at {at}: {self.reason}"
        if self.event == MACHINE_STOPPED:
            return f"machine stopped at {at}: {self.reason} (not scored until it runs again)"
        if self.event == MACHINE_RUNNING:
            return f"machine running again at {at}" + (f" ({self.reason})" if self.reason else "")
        return f"signal restored at {at}" + (f" ({self.reason})" if self.reason else "")


class JsonlLog:
    """Append every event as one JSON line, flushed and fsynced before returning.

    The file is opened for each event, so it can be rotated (moved away) while
    the monitor runs.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def handle(self, event: Event, audio: np.ndarray | None = None) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(event.to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())


class EvidenceWriter:
    """Save the audio that opened an alert as a 16 kHz 16-bit WAV; sets ``event.evidence``."""

    def __init__(self, directory: str | os.PathLike, *, sr: int = 16_000):
        self.directory = Path(directory)
        self.sr = sr

    def handle(self, event: Event, audio: np.ndarray | None = None) -> None:
        if event.event != ALERT or audio is None or audio.size == 0:
            return
        from machine_monitor.audio.io import write_wav

        stamp = event.time.replace(":", "").replace("-", "").replace("+0000", "Z").replace("+00:00", "Z")
        model = re.sub(r"[^\w.-]+", "_", event.model)
        path = write_wav(self.directory / f"{model}_alert{event.episode:03d}_{stamp}.wav", audio, sr=self.sr)
        event.evidence = str(path)


def event_environment(event: Event) -> dict[str, str]:
    """``MM_*`` environment variables describing an event (all strings)."""
    env = {f"MM_{k.upper()}": ("" if v is None else str(v)) for k, v in dataclasses.asdict(event).items()}
    env["MM_JSON"] = event.to_json()
    return env


class CommandRunner:
    """Run a user command for each action event, off the monitor's thread.

    The command is an argument vector (``shlex.split`` of what the user typed),
    never a shell string built from event data. The event arrives as ``MM_*``
    environment variables and as one JSON line on stdin; the command's output
    goes to stderr. A command running longer than ``timeout`` is killed.

    Parameters
    ----------
    argv : list of str
    events : tuple of str
        Event kinds that run the command (default: ``alert`` and ``signal_lost``).
    """

    def __init__(self, argv: list[str], *, events: tuple[str, ...] = ACTION_EVENTS, timeout: float = 60.0,
                 max_pending: int = 100):
        if not argv:
            raise ConfigError("empty alert command")
        self.argv = list(argv)
        self.events = events
        self.timeout = timeout
        self.runs = 0
        self.failures = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._proc: subprocess.Popen | None = None  # the command running now
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="on-alert", daemon=True)
        self._thread.start()

    def handle(self, event: Event, audio: np.ndarray | None = None) -> None:
        if event.event not in self.events:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.failures += 1
            log.error("alert command: %d already waiting, skipping this event", self._queue.qsize())

    def _work(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                if self._stopping:
                    log.error("alert command %s: not run for the %s event: monitoring stopped", self.argv[0],
                              event.event)
                    continue
                self._run(event)
            finally:
                self._queue.task_done()

    def _run(self, event: Event) -> None:
        self.runs += 1
        env = {**os.environ, **event_environment(event)}
        try:
            proc = self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, text=True, env=env,
                                                 stdout=sys.stderr)
        except OSError as exc:
            self.failures += 1
            log.error("alert command %s: cannot run it: %s", self.argv[0], exc)
            return
        try:
            proc.communicate(event.to_json() + "\n", timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.failures += 1
            _kill(proc)
            log.error("alert command %s: still running after %.0f s, killed", self.argv[0], self.timeout)
        except (OSError, ValueError):  # stdin closed early, or the process was killed by close()
            proc.wait()
        finally:
            self._proc = None
        if proc.returncode != 0 and not self._stopping:
            self.failures += 1
            log.error("alert command %s: exit status %d", self.argv[0], proc.returncode)

    def close(self, timeout: float | None = None) -> None:
        """Let queued commands finish (up to ``timeout`` seconds in all), then stop the worker.

        A command still running after ``timeout`` is terminated (then killed), and queued
        ones are not started: stopping the monitor (SIGTERM) takes seconds, not minutes.
        """
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stopping = True
            proc = self._proc
            if proc is not None:
                log.error("alert command %s: still running when monitoring stopped, terminated", self.argv[0])
                _kill(proc)
            self._thread.join(5.0)


def _kill(proc: subprocess.Popen, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ConsoleSink:
    """Print each event as one line (results go to stdout)."""

    def __init__(self, stream=None, before=None):
        self.stream = stream
        self.before = before  # called first, e.g. to clear a status line

    def handle(self, event: Event, audio: np.ndarray | None = None) -> None:
        if self.before is not None:
            self.before()
        print(event.describe(), file=self.stream or sys.stdout, flush=True)
