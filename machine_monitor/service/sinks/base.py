"""Delivery workers and the sink interface (see :mod:`machine_monitor.service.sinks`)."""


from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class DeliveryError(Exception):
    """A sink could not deliver an event; ``retry`` says whether to try the same event again."""

    def __init__(self, message: str, *, retry: bool = True):
        super().__init__(message)
        self.retry = retry


class Sink:
    """Base class of a delivery target. Subclasses implement :meth:`deliver`."""

    def open(self) -> None:
        """Connect (called once in the worker's thread before the first event)."""

    def deliver(self, event: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Disconnect (called once when the worker stops)."""


class DeliveryWorker:
    """A thread delivering the store's events to one sink, in order, from the sink's cursor.

    Parameters
    ----------
    store : EventStore
    name : str
        The cursor's name (the sink's name in ``machines.toml``).
    sink : Sink
    machines : collection of str or None
        Machines whose events this sink takes (service-wide events, machine
        ``""``, always); ``None``: all.
    events : collection of str or None
        Kinds it takes; ``None``: all.
    silenced : bool
        Deliver events marked ``silenced`` too.
    retry_seconds, retry_max_seconds : float
        First and longest wait before re-trying an undelivered event.
    """

    def __init__(self, store, name: str, sink: Sink, *, machines=None, events=None, silenced: bool = False,
                 retry_seconds: float = 1.0, retry_max_seconds: float = 60.0, poll_seconds: float = 1.0):
        self.store = store
        self.name = name
        self.sink = sink
        self.machines = None if machines is None else set(machines)
        self.kinds = None if events is None else set(events)
        self.silenced = silenced
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.poll_seconds = poll_seconds
        self.delivered = 0
        self.skipped = 0
        self.failures = 0
        self.last_error: str | None = None
        self.cursor = store.start_cursor(name, from_id=store.last_id())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)

    def wants(self, event: dict) -> bool:
        if self.machines is not None and event.get("machine") and event["machine"] not in self.machines:
            return False
        if self.kinds is not None and event["event"] not in self.kinds:
            return False
        return self.silenced or not event.get("silenced")

    @property
    def backlog(self) -> int:
        return max(0, self.store.last_id() - self.cursor)

    def start(self) -> DeliveryWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self.store.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything stored so far was handled (tests, shutdown); True if it was."""
        end = time.monotonic() + timeout
        target = self.store.last_id()
        while self.cursor < target and time.monotonic() < end and self._thread.is_alive():
            time.sleep(0.02)
        return self.cursor >= target

    def _run(self) -> None:
        try:
            self.sink.open()
        except Exception as exc:  # a sink that cannot even start retries on delivery
            log.error("sink %s: cannot open: %s", self.name, exc)
        delay = self.retry_seconds
        outage = False
        try:
            while not self._stop.is_set():
                batch = self.store.events(since_id=self.cursor, limit=200)
                if not batch:
                    self.store.wait_for_new(self.cursor, self.poll_seconds)
                    continue
                skipped_to = None
                for ev in batch:
                    if self._stop.is_set():
                        break
                    if not self.wants(ev):
                        self.skipped += 1
                        skipped_to = ev["id"]
                        continue
                    if skipped_to is not None:  # commit the skipped ones before the next delivery
                        self._advance(skipped_to)
                        skipped_to = None
                    try:
                        self.sink.deliver(ev)
                    except DeliveryError as exc:
                        self.failures += 1
                        self.last_error = str(exc)
                        if exc.retry:
                            if not outage:
                                log.warning("sink %s: cannot deliver event %d (%s); retrying, events are kept",
                                            self.name, ev["id"], exc)
                            outage = True
                            self._stop.wait(delay)
                            delay = min(2 * delay, self.retry_max_seconds)
                            break
                        log.error("sink %s: event %d (%s) not delivered: %s", self.name, ev["id"], ev["event"], exc)
                    except Exception as exc:  # a bug in one sink must not stop the others
                        self.failures += 1
                        self.last_error = str(exc)
                        log.exception("sink %s: event %d failed", self.name, ev["id"])
                        self._stop.wait(delay)
                        delay = min(2 * delay, self.retry_max_seconds)
                        break
                    else:
                        self.delivered += 1
                        if outage:
                            log.warning("sink %s: delivering again (from event %d)", self.name, ev["id"])
                        outage, delay = False, self.retry_seconds
                    self._advance(ev["id"])
                if skipped_to is not None:
                    self._advance(skipped_to)
        finally:
            try:
                self.sink.close()
            except Exception as exc:
                log.debug("sink %s: close: %s", self.name, exc)

    def _advance(self, event_id: int) -> None:
        self.store.advance(self.name, event_id)
        self.cursor = event_id
