"""The alert lifecycle of one machine: a pure state machine fed with window scores, health and a clock.

Nothing here reads audio, the wall clock or the store: the service feeds it
(:mod:`machine_monitor.service.serve`) and tests drive it with a fake clock.
Every method returns the events it decided, as dicts ready for
:meth:`EventStore.append`.

Alert states (``alert_state``)
------------------------------
``normal``   no anomalous window among the last ``n``
``pending``  some anomalous windows, fewer than ``k`` of the last ``n``
``firing``   ``k`` of the last ``n`` windows exceeded the *raise level*
             (threshold + ``margin`` x |threshold|): an ``alert`` event
``resolved`` back to ``normal`` after ``quiet_seconds`` without a window above
             the lower *clear level* (raise level - ``hysteresis`` x |raise level|):
             an ``alert_end`` event. Scores hovering around the raise level keep
             the alert open instead of flapping.

While firing, ``alert_repeat`` follows every ``repeat_seconds`` (0: never)
until the alert is **acknowledged** (:meth:`MachineLifecycle.acknowledge`,
recorded with who and when) or ends. A **silence** covering the machine marks
its events ``silenced: true`` (stored, not notified) and holds repeats; when it
ends while the alert still fires unacknowledged, one ``alert_repeat`` follows.

Health (each raised and cleared as a pair of events, independent of alerts)
----------------------------------------------------------------------------
``signal_lost`` / ``signal_restored``    digitally silent or non-finite input
``device_lost`` / ``device_restored``    the input device failed or vanished
``clipping`` / ``clipping_cleared``      the input hits full scale
``machine_stopped`` / ``machine_running``  far quieter than anything in training (an open alert
                                         ends: a machine switched off is not a fault)

Event fields: ``event``, ``machine``, ``epoch``, and as they apply
``stream_seconds`` (audio position), ``threshold`` (the raise level),
``score``/``peak_score``, ``duration``, ``windows`` ("k/n"), ``episode``,
``alert_id`` (the store id of the episode's ``alert``), ``reason``,
``silenced``.

Snapshot (:meth:`MachineLifecycle.snapshot`, what the dashboard shows):
``name``, ``state`` (one word: ``device_lost``, ``signal_lost``,
``machine_stopped``, ``silenced``, ``acknowledged``, ``firing``, ``pending``,
``normal``; first that applies), ``alert_state``, ``health`` (active health
states), ``score``, ``threshold``, ``level`` (raise level), ``clear_level``,
``episode``, ``alert_id``, ``acknowledged`` (who/epoch or None),
``silenced_until``, ``last_alert`` (the last ``alert`` event or None),
``history`` (recent ``(epoch, score)`` pairs; score None when unscored).
"""

from __future__ import annotations

import collections
import dataclasses
import math

from machine_monitor.errors import ConfigError

ALERT, ALERT_REPEAT, ALERT_END = "alert", "alert_repeat", "alert_end"
HEALTH = {
    "signal_lost": "signal_restored",
    "device_lost": "device_restored",
    "clipping": "clipping_cleared",
    "machine_stopped": "machine_running",
}
#: Kinds a person must hear about (command sinks run for these by default).
ACTION_EVENTS = (ALERT, ALERT_REPEAT, "signal_lost", "device_lost", "clipping", "machine_stopped")
#: Health states that make a machine's scores meaningless while they last (shown before alerts).
_STATE_ORDER = ("device_lost", "signal_lost", "machine_stopped")


@dataclasses.dataclass(frozen=True)
class LifecyclePolicy:
    """When windows become alerts and how they end.

    Parameters
    ----------
    k, n : int
        Fire when ``k`` of the last ``n`` scored windows exceed the raise level.
    quiet_seconds : float
        Resolve after this long without a window above the clear level.
    margin : float
        Raise level = threshold + ``margin`` x |threshold|.
    hysteresis : float
        Clear level = raise level - ``hysteresis`` x |raise level|.
    repeat_seconds : float
        Repeat a firing, unacknowledged alert this often (0: never).
    history_points : int
        Recent scores kept for the snapshot's timeline.
    """

    k: int = 3
    n: int = 5
    quiet_seconds: float = 30.0
    margin: float = 0.1
    hysteresis: float = 0.1
    repeat_seconds: float = 0.0
    history_points: int = 7200

    def __post_init__(self):
        if not 1 <= self.k <= self.n:
            raise ConfigError(f"alert policy needs 1 <= k <= n, got k={self.k}, n={self.n}")
        for name in ("quiet_seconds", "margin", "hysteresis", "repeat_seconds"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"alert policy {name} must be a number >= 0, not {v!r}")
        if self.hysteresis >= 1:
            raise ConfigError(f"alert policy hysteresis must be < 1, not {self.hysteresis}")

    def raise_level(self, threshold: float) -> float:
        return threshold + self.margin * abs(threshold)

    def clear_level(self, threshold: float) -> float:
        r = self.raise_level(threshold)
        return r - self.hysteresis * abs(r)


class MachineLifecycle:
    """Alert and health state of one machine.

    Parameters
    ----------
    machine : str
    threshold : float
        The model's window threshold (the policy adds the margin).
    policy : LifecyclePolicy
    episode : int
        Last episode number used (the store's, so numbers go on after a restart).
    level : float or None
        The raise level itself (e.g. the model's calibrated live level); ``None``:
        ``threshold`` plus the policy's margin.
    """

    def __init__(self, machine: str, threshold: float, policy: LifecyclePolicy = LifecyclePolicy(), *,
                 episode: int = 0, level: float | None = None):
        self.machine = machine
        self.policy = policy
        self.threshold = float(threshold)
        self.level = policy.raise_level(self.threshold) if level is None else float(level)
        self.clear = self.level - policy.hysteresis * abs(self.level)
        self.episode = int(episode)
        self.alert_state = "normal"
        self.health: dict[str, dict] = {}  # active health state -> its event
        self.score: float | None = None
        self.history: collections.deque = collections.deque(maxlen=policy.history_points)
        self._recent: collections.deque = collections.deque(maxlen=policy.n)  # (start, anomalous, score)
        self._alert: dict | None = None  # the open episode
        self.last_alert: dict | None = None
        self.acknowledged: dict | None = None
        self.silences: list[dict] = []
        self._was_silenced = False

    # -- inputs ----------------------------------------------------------------------
    def window(self, now: float, score: float | None, *, start: float = 0.0, stop: float = 0.0) -> list[dict]:
        """One window ``[start, stop)`` (stream seconds) scored ``score`` at wall time ``now``.

        ``score=None``: the window was not scored (a health state explains why);
        it changes no alert state.
        """
        self.history.append((now, score))
        self.score = score
        if score is None:
            return []
        p = self.policy
        out: list[dict] = []
        anomalous = bool(score > self.level)
        self._recent.append((start, anomalous, score))
        ep = self._alert
        if ep is not None:
            if score > self.clear:
                ep["last_bad"], ep["quiet_since"] = stop, None
                ep["peak"] = max(ep["peak"], score)
            elif ep["quiet_since"] is None:
                ep["quiet_since"] = stop
            if ep["quiet_since"] is not None and stop - ep["quiet_since"] >= p.quiet_seconds:
                out.append(self._end(now, stop, f"quiet for {p.quiet_seconds:g} s"))
            return out
        bad = [w for w in self._recent if w[1]]
        if len(bad) >= p.k:
            self.episode += 1
            peak = max(w[2] for w in bad)
            self._alert = {"episode": self.episode, "first": bad[0][0], "last_bad": stop, "quiet_since": None,
                           "peak": peak, "id": None,
                           "next_repeat": now + p.repeat_seconds if p.repeat_seconds else None}
            self.alert_state = "firing"
            self.acknowledged = None
            ev = self._event(ALERT, now, stream_seconds=stop, threshold=self.level, score=score, peak_score=peak,
                             duration=stop - bad[0][0], windows=f"{len(bad)}/{len(self._recent)}",
                             episode=self.episode)
            self.last_alert = ev
            out.append(ev)
        else:
            self.alert_state = "pending" if bad else "normal"
        return out

    def observe_health(self, now: float, kind: str, active: bool, reason: str | None = None, *,
                       stream_seconds: float | None = None) -> list[dict]:
        """Health state ``kind`` is (``active``) or is not present; events only on changes."""
        if kind not in HEALTH:
            raise ValueError(f"unknown health state {kind!r}")
        if active and kind not in self.health:
            out = []
            if kind == "machine_stopped" and self._alert is not None:  # a machine switched off is not a fault
                out.append(self._end(now, self._alert["last_bad"], "machine stopped"))
            ev = self._event(kind, now, reason=reason, stream_seconds=stream_seconds)
            self.health[kind] = ev
            return [*out, ev]
        if not active and kind in self.health:
            since = self.health.pop(kind)
            return [self._event(HEALTH[kind], now, reason=reason, stream_seconds=stream_seconds,
                                duration=now - since["epoch"])]
        return []

    def tick(self, now: float) -> list[dict]:
        """Time passes: repeats of a firing alert and the end of silences."""
        out: list[dict] = []
        silenced = self.silenced_until(now) is not None
        ep = self._alert
        if ep is not None and self.acknowledged is None and ep["id"] is not None:
            if self._was_silenced and not silenced:
                out.append(self._repeat(now, "silence ended"))
            elif ep["next_repeat"] is not None and now >= ep["next_repeat"] and not silenced:
                out.append(self._repeat(now, f"still firing after {now - self.last_alert['epoch']:.0f} s"))
        self._was_silenced = silenced
        return out

    def bind(self, event: dict) -> None:
        """Learn the store id of an event this object produced (after :meth:`EventStore.append`)."""
        if event.get("event") == ALERT and self._alert is not None and event.get("episode") == self._alert["episode"]:
            self._alert["id"] = event["id"]
            self.last_alert = event

    def acknowledge(self, alert_id: int, who: str, at: float) -> bool:
        """The alert ``alert_id`` was acknowledged; True when it is the open episode (repeats stop)."""
        ep = self._alert
        if ep is None or ep["id"] != alert_id or self.acknowledged is not None:
            return False
        self.acknowledged = {"alert_id": alert_id, "who": who, "epoch": at}
        return True

    def set_silences(self, silences: list[dict]) -> None:
        """Silences now known (``machine`` None = every machine); those for other machines are ignored."""
        self.silences = [s for s in silences if s.get("machine") in (None, "", self.machine)]

    def silenced_until(self, now: float) -> float | None:
        ends = [s["until"] for s in self.silences if s.get("start", -math.inf) <= now < s["until"]]
        return max(ends) if ends else None

    def stop(self, now: float, reason: str = "monitor stopped") -> list[dict]:
        """The machine stops being monitored: close an open episode."""
        if self._alert is None:
            return []
        return [self._end(now, self._alert["last_bad"], reason)]

    # -- outputs -----------------------------------------------------------------------
    @property
    def state(self) -> str:
        for kind in _STATE_ORDER:
            if kind in self.health:
                return kind
        if self.alert_state == "firing":
            if self.silenced_until(self.history[-1][0] if self.history else math.inf) is not None:
                return "silenced"
            return "acknowledged" if self.acknowledged else "firing"
        return self.alert_state

    def snapshot(self, now: float | None = None, *, history: bool = True) -> dict:
        t = now if now is not None else (self.history[-1][0] if self.history else 0.0)
        return {"name": self.machine, "state": self.state, "alert_state": self.alert_state,
                "health": sorted(self.health), "score": self.score, "threshold": self.threshold,
                "level": self.level, "clear_level": self.clear,
                "episode": self._alert["episode"] if self._alert else None,
                "alert_id": self._alert["id"] if self._alert else None, "acknowledged": self.acknowledged,
                "silenced_until": self.silenced_until(t), "last_alert": self.last_alert,
                "history": list(self.history) if history else None}

    # -- helpers -------------------------------------------------------------------------
    def _event(self, kind: str, now: float, **fields) -> dict:
        ev = {"event": kind, "machine": self.machine, "epoch": float(now)}
        ev.update({k: v for k, v in fields.items() if v is not None})
        if self.silenced_until(now) is not None:
            ev["silenced"] = True
        return ev

    def _repeat(self, now: float, reason: str) -> dict:
        ep = self._alert
        if self.policy.repeat_seconds:
            ep["next_repeat"] = now + self.policy.repeat_seconds
        return self._event(ALERT_REPEAT, now, alert_id=ep["id"], episode=ep["episode"], peak_score=ep["peak"],
                           threshold=self.level, score=self.score, reason=reason)

    def _end(self, now: float, stop: float, reason: str) -> dict:
        ep, self._alert = self._alert, None
        self._recent.clear()
        self.alert_state = "normal"
        self.acknowledged = None
        return self._event(ALERT_END, now, stream_seconds=stop, threshold=self.level, peak_score=ep["peak"],
                           duration=ep["last_bad"] - ep["first"], episode=ep["episode"], alert_id=ep["id"],
                           reason=reason)
