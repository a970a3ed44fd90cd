"""The live monitoring loop: source -> ring buffer -> sliding windows -> scores -> alert policy -> sinks.

::

    from machine_monitor import Detector
    from machine_monitor.live.sinks import JsonlLog
    from machine_monitor.audio.sources import LiveSource
    from machine_monitor.live.monitor import Monitor
    from machine_monitor.live.policy import AlertPolicy

    det = Detector.load("models/pump3")
    summary = Monitor(det, LiveSource("USB"), policy=AlertPolicy(), sinks=[JsonlLog("alerts.jsonl")]).run()

Everything runs in the caller's thread except the source's producer (audio
callback or replay thread), which only fills a bounded queue. ``stop()`` may be
called from a signal handler or another thread.

Alert policy (:class:`AlertPolicy`): a window is *anomalous* when its score
exceeds the model's threshold raised by ``margin``; an alert opens when ``k``
of the last ``n`` scored windows are anomalous, and closes after
``quiet_seconds`` of windows that are not. One ``alert`` event per episode,
one ``alert_end`` when it closes.

Health: a window that is digitally silent (or holds NaN/inf) is not scored; it
raises ``signal_lost`` once, and ``signal_restored`` follows the next scorable
window. A source that dies (:class:`SourceLost`) raises ``signal_lost`` too and
is re-opened with exponential backoff until it comes back or ``stop()``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time

import numpy as np

from machine_monitor.audio.sources import Source
from machine_monitor.errors import AudioDeviceError, ConfigError
from machine_monitor.live.policy import AlertPolicy
from machine_monitor.live.sinks import (
    ALERT,
    ALERT_END,
    MACHINE_RUNNING,
    MACHINE_STOPPED,
    SIGNAL_LOST,
    SIGNAL_RESTORED,
    Event,
)
from machine_monitor.live.windows import SILENCE_CHUNK, RingBuffer, signal_problem
from machine_monitor.threshold import AlertCounter, machine_stopped, window_level_db

log = logging.getLogger(__name__)

#: Window scored at each hop; shorter if the model was trained on shorter clips.
DEFAULT_WINDOW_SECONDS = 2.0
#: Time between windows (rounded to whole feature frames).
DEFAULT_HOP_SECONDS = 0.5


def default_window_seconds(detector) -> float:
    """``DEFAULT_WINDOW_SECONDS``, or the model's training clip length if shorter, but >= one feature window."""
    clip = getattr(detector, "clip_seconds_", None) or DEFAULT_WINDOW_SECONDS
    return max(min(DEFAULT_WINDOW_SECONDS, clip), detector.window_seconds())


@dataclasses.dataclass
class WindowResult:
    """One scored (or skipped) window, for status displays."""

    stream_seconds: float  # end of the window
    score: float | None  # None when the window was not scored (no signal)
    level: float
    anomalous: bool
    state: str  # "normal", "pending (...)", "ALERT", "machine stopped" or "no signal"


@dataclasses.dataclass
class MonitorSummary:
    """What happened during :meth:`Monitor.run`."""

    windows: int = 0  # windows scored
    stopped_windows: int = 0  # windows not scored: the machine was stopped
    anomalous_windows: int = 0
    alerts: int = 0  # alert episodes opened
    signal_losses: int = 0
    stream_seconds: float = 0.0  # audio received
    wall_seconds: float = 0.0
    max_score: float | None = None
    threshold: float = float("nan")  # the alert level actually used
    dropped_blocks: int = 0
    overflows: int = 0
    restarts: int = 0
    stopped_by: str = ""  # "end of input" or the reason given to stop()

    def describe(self) -> str:
        peak = "-" if self.max_score is None else f"{self.max_score:.4g}"
        return (f"monitored {self.stream_seconds:.1f} s of audio in {self.wall_seconds:.1f} s ({self.stopped_by}): "
                f"{self.windows} windows scored, {self.anomalous_windows} above {self.threshold:.4g}, "
                + (f"{self.stopped_windows} with the machine stopped, " if self.stopped_windows else "")
                + f"peak {peak}; {self.alerts} alert episode(s), {self.signal_losses} signal loss(es); "
                f"{self.dropped_blocks} dropped blocks, {self.overflows} input overflows, {self.restarts} re-opens")


@dataclasses.dataclass
class _Window:
    start: int
    stop: int
    score: float
    anomalous: bool


class Monitor:
    """Score a live source window by window and raise alert events.

    Parameters
    ----------
    detector : Detector
        A fitted detector (``Detector.load(dir)``).
    source : Source
        Where audio comes from (:class:`LiveSource`, :class:`FileSource`, ...).
    policy : AlertPolicy
    sinks : sequence
        Objects with ``handle(event, audio)``, called in order for each event.
    window_seconds, hop_seconds : float or None
        Window scored and time between windows; ``None`` for the defaults.
        The hop is rounded to whole feature frames.
    model_name : str
        Named in events.
    on_window : callable or None
        Called with a :class:`WindowResult` after every window (status lines).
    backoff : (float, float)
        First and longest wait between attempts to re-open a lost source.
    """

    def __init__(self, detector, source: Source, *, policy: AlertPolicy = AlertPolicy(), sinks=(),
                 window_seconds: float | None = None, hop_seconds: float | None = None, model_name: str = "model",
                 on_window=None, backoff: tuple[float, float] = (1.0, 30.0), incremental: bool | None = None):
        self.detector = detector
        self.source = source
        self.policy = policy
        self.sinks = list(sinks)
        self.model_name = model_name
        self.on_window = on_window
        self.backoff = backoff
        cfg = detector.feature_config
        self.sr = cfg.sr
        w = default_window_seconds(detector) if window_seconds is None else float(window_seconds)
        self.window = int(round(w * self.sr))
        if self.window < cfg.min_samples:
            raise ConfigError(f"window must be at least one feature window ({cfg.min_samples / self.sr:.3f} s), "
                              f"not {w} s")
        h = DEFAULT_HOP_SECONDS if hop_seconds is None else float(hop_seconds)
        if h <= 0:
            raise ConfigError(f"hop must be > 0 s, not {h}")
        self.hop = max(1, round(h * self.sr / cfg.hop_length)) * cfg.hop_length
        self.quiet_windows = max(1, math.ceil(policy.quiet_seconds * self.sr / self.hop))
        #: The score a window must exceed, and how it was set (calibrated live level, see AlertPolicy).
        self.level, self.level_source = policy.window_level(detector, window=self.window, hop=self.hop)
        lossy_live = ((getattr(detector, "calibration_", None) or {}).get("lossy") or {}).get("live")
        if (getattr(source, "lossy", False) and lossy_live and policy.margin is None
                and getattr(detector, "judges_lossy_apart", lambda: False)()):
            # A lossy file replayed: its codec alone moves the scores (see calibration's lossy thresholds).
            self.level = max(self.level, float(lossy_live["value"]))
            self.level_source += "; a lossy-coded input: the level calibrated on lossily coded training audio"
        #: The training audio's level profile: far quieter sound means the machine is stopped.
        self.levels = (getattr(detector, "calibration_", None) or {}).get("levels")
        self.scorer = detector.streaming()
        if incremental is not None:
            self.scorer.incremental = incremental and self.scorer.incremental
        # Enough for the n windows that open an alert (evidence), plus slack for the scorer.
        span = self.window + (policy.n + 2) * self.hop + cfg.min_samples
        self.ring = RingBuffer(span)
        # Silence is checked per 16 ms: a live microphone never gives that many exact zeros, and a
        # dropout inside a window would otherwise score as a huge anomaly.
        self.silence_chunk = min(SILENCE_CHUNK, self.window)
        #: Processing time of each recent window (scoring, policy, sinks), seconds.
        self.hop_times: collections.deque[float] = collections.deque(maxlen=100_000)
        self._stop = threading.Event()
        self._stop_reason = "stopped"

    @property
    def window_seconds(self) -> float:
        return self.window / self.sr

    @property
    def hop_seconds(self) -> float:
        return self.hop / self.sr

    def stop(self, reason: str = "stopped") -> None:
        """Ask :meth:`run` to finish (thread- and signal-handler-safe)."""
        self._stop_reason = reason
        self._stop.set()

    # -- the loop ------------------------------------------------------------------
    def run(self) -> MonitorSummary:
        """Listen until the source ends or :meth:`stop`; returns a summary.

        Raises ``AudioDeviceError`` only if the source cannot be opened at all
        at the start; later losses are reported as events and retried.
        """
        self.summary = MonitorSummary(threshold=self.level)
        self._history: collections.deque[_Window] = collections.deque(maxlen=self.policy.n)
        self._counter = AlertCounter(self.policy.k, self.policy.n, self.quiet_windows)
        self._episode: dict | None = None
        self._signal_ok = True
        self._stopped = False
        self._restart_segment()
        # The first scoring pays for lazy imports and allocations: not inside the first hop.
        self.detector.window_scores(np.random.default_rng(0).normal(0, 0.1, self.window).astype(np.float32))
        t0 = time.monotonic()
        self.source.start()
        last_warn, warned = 0.0, (0, 0)
        try:
            while not self._stop.is_set():
                try:
                    block = self.source.read(timeout=0.1)
                except AudioDeviceError as exc:
                    self._signal_lost(str(exc))
                    if not self._reopen():
                        break
                    continue
                if block is None:
                    if self.source.finished:
                        self._stop_reason = "end of input"
                        break
                    continue
                self._feed(block)
                stats = self.source.stats
                if (stats.dropped_blocks, stats.overflows) != warned and time.monotonic() - last_warn > 10:
                    warned, last_warn = (stats.dropped_blocks, stats.overflows), time.monotonic()
                    log.warning("input trouble so far: %d blocks dropped (the loop fell behind), "
                                "%d input overflows", *warned)
        finally:
            self.source.stop()
            if self._episode is not None:
                self._close_episode("monitor stopped" if self._stop_reason != "end of input" else "end of input")
            s, st = self.summary, self.source.stats
            s.stream_seconds = self.ring.total / self.sr
            s.wall_seconds = time.monotonic() - t0
            s.dropped_blocks, s.overflows, s.restarts = st.dropped_blocks, st.overflows, st.restarts
            s.stopped_by = self._stop_reason
        return self.summary

    def _restart_segment(self) -> None:
        """Audio from here on is not continuous with what came before."""
        origin = self.ring.total
        self._next_stop = origin + self.window
        self.scorer.reset(origin)

    def _reopen(self) -> bool:
        """Re-open the source with exponential backoff; False if stopped meanwhile."""
        self.source.stop()
        delay, longest = self.backoff
        while not self._stop.wait(delay):
            try:
                self.source.start()
            except AudioDeviceError as exc:
                log.warning("input still unavailable (%s); next try in %.0f s", exc, min(2 * delay, longest))
                delay = min(2 * delay, longest)
                continue
            log.warning("input re-opened: %s", self.source.describe())
            self._restart_segment()
            return True
        return False

    def _feed(self, block: np.ndarray) -> None:
        self.ring.extend(block)
        while self.ring.total >= self._next_stop:
            stop = self._next_stop
            self._next_stop += self.hop
            t = time.perf_counter()
            self._window(stop - self.window, stop)
            self.hop_times.append(time.perf_counter() - t)

    def _window(self, start: int, stop: int) -> None:
        problem = signal_problem(self.ring.get(start, stop), chunk=self.silence_chunk)
        if problem:
            self.scorer.skip_to(start + self.hop)
            self._signal_lost(problem)
            self._status(stop, None, False)
            return
        if self.levels is not None and self._machine_state(start, stop):
            return
        score = self.scorer.score(self.ring, start, stop)
        if not self._signal_ok:
            self._signal_ok = True
            self._emit(Event.now(SIGNAL_RESTORED, model=self.model_name, stream_seconds=stop / self.sr))
        s = self.summary
        anomalous = bool(score > self.level)
        s.windows += 1
        s.anomalous_windows += anomalous
        s.max_score = score if s.max_score is None else max(s.max_score, score)
        self._history.append(_Window(start, stop, score, anomalous))
        self._apply_policy(self._history[-1])
        self._status(stop, score, anomalous)

    def _machine_state(self, start: int, stop: int) -> bool:
        """Raise / clear ``machine_stopped``; True while the machine is stopped (the window is not scored)."""
        level = window_level_db(self.ring.get(start, stop), sr=self.sr)
        stopped = machine_stopped(level, self.levels, was_stopped=self._stopped)
        if stopped != self._stopped:
            self._stopped = stopped
            if stopped:
                if self._episode is not None:
                    self._close_episode("machine stopped")
                self._history.clear()
                self._counter.reset()
                reason = (f"level {level:.1f} dBFS, below {self.levels['stopped_below_db']:.1f} dBFS "
                          f"(training audio: {self.levels['p1_db']:.1f} dBFS and up)")
            else:
                reason = f"level {level:.1f} dBFS"
            self._emit(Event.now(MACHINE_STOPPED if stopped else MACHINE_RUNNING, model=self.model_name,
                                 stream_seconds=stop / self.sr, reason=reason))
        if stopped:
            self.summary.stopped_windows += 1
            self.scorer.skip_to(start + self.hop)
            self._status(stop, None, False)
        return stopped

    def _apply_policy(self, w: _Window) -> None:
        change = self._counter.update(w.anomalous)  # the k-of-n rule the calibration ran (threshold.AlertCounter)
        ep = self._episode
        if ep is not None:
            if w.anomalous:
                ep["last_stop"] = w.stop
                ep["peak"] = max(ep["peak"], w.score)
            if change == "close":
                self._close_episode(f"quiet for {self.policy.quiet_seconds:g} s")
            return
        if change != "open":
            return
        bad = [h for h in self._history if h.anomalous]
        self.summary.alerts += 1
        first = bad[0].start
        peak = max(h.score for h in bad)
        self._episode = {"n": self.summary.alerts, "first_start": first, "last_stop": w.stop, "peak": peak}
        audio = self.ring.get(max(first, self.ring.total - self.ring.capacity), w.stop)
        self._emit(Event.now(ALERT, model=self.model_name, stream_seconds=w.stop / self.sr, threshold=self.level,
                             peak_score=peak, duration=(w.stop - first) / self.sr,
                             windows=f"{len(bad)}/{len(self._history)}", episode=self.summary.alerts), audio)

    def _close_episode(self, reason: str) -> None:
        ep, self._episode = self._episode, None
        self._history.clear()
        self._counter.reset()
        self._emit(Event.now(ALERT_END, model=self.model_name, stream_seconds=self.ring.total / self.sr,
                             threshold=self.level, peak_score=ep["peak"],
                             duration=(ep["last_stop"] - ep["first_start"]) / self.sr, episode=ep["n"],
                             reason=reason))

    def _signal_lost(self, reason: str) -> None:
        if not self._signal_ok:
            log.debug("still no signal: %s", reason)
            return
        self._signal_ok = False
        self.summary.signal_losses += 1
        self._emit(Event.now(SIGNAL_LOST, model=self.model_name, stream_seconds=self.ring.total / self.sr,
                             reason=reason))

    def _emit(self, event: Event, audio: np.ndarray | None = None) -> None:
        for sink in self.sinks:
            try:
                sink.handle(event, audio)
            except Exception as exc:  # one broken sink (disk full, ...) must not stop the monitoring
                log.error("%s could not record the %s event: %s", type(sink).__name__, event.event, exc)

    def _status(self, stop: int, score: float | None, anomalous: bool) -> None:
        if self.on_window is None:
            return
        if score is None:
            state = "machine stopped" if self._stopped else "no signal"
        elif self._episode is not None:
            state = "ALERT"
        else:  # above the level but not (yet) k of n: say so, "normal" there reads as a contradiction
            above = sum(self._counter.history)
            state = f"pending ({above} of the last {self._counter.n} above; alert at {self._counter.k})" if above \
                else "normal"
        self.on_window(WindowResult(stop / self.sr, score, self.level, anomalous, state))


class StatusLine:
    """A status line on stderr that does not flood.

    On a terminal it rewrites one line in place at most every ``tty_interval``
    seconds; elsewhere (a log file, journald) it prints a line every
    ``interval`` seconds.
    """

    def __init__(self, stream, *, interval: float = 60.0, tty_interval: float = 0.5):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval = tty_interval if self.tty else interval
        self._last = -math.inf
        self._shown = False

    def __call__(self, r: WindowResult) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        score = "-" if r.score is None else f"{r.score:.4g}"
        text = f"t={r.stream_seconds:8.1f} s  score {score:>8}  threshold {r.level:.4g}  {r.state}"
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self._shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """End the in-place line so that the next output starts on a fresh line."""
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
