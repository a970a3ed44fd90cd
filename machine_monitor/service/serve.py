"""The multi-machine runner behind ``machine-monitor serve machines.toml``.

::

    machine thread (one per machine)            main thread (Service.run)           sink threads (one per sink)
    source -> ring -> window -> score            every 0.5 s: acks and silences      store cursor -> deliver
      -> health checks -> MachineLifecycle       from the store, repeats, heartbeat,  -> advance the cursor
      -> evidence WAV -> EventStore.append       retention, SIGHUP reload, stop

SIGHUP re-reads ``machines.toml`` and reloads every model re-saved in place since it was
loaded (``machine-monitor threshold``, a retrain into the same folder): a machine whose
section or model changed restarts with it; the others keep running untouched.

Every event is appended to the :class:`EventStore` (durable) by the thread that
decided it, *before* any sink can see it; sinks read the store. One machine's
input failing (``device_lost``, retried with backoff) never stops the others.
Scoring goes through the detector's public streaming API
(``detector.streaming()``), the same windows as ``machine-monitor monitor``.

The service limits BLAS/OpenMP (threadpoolctl) and torch to one thread itself:
idle BLAS threads spin, and 8 machines each scoring a 128-dim vector twice a
second gain nothing from more.

API for the dashboard (``machine_monitor.dashboard.create_app(service)``)::

    service.config               the validated ServiceConfig (service.config.dashboard: bind, port, token)
    service.store                the EventStore (events, ack, silence, active_silences, ...)
    service.machines             {name: snapshot}: name, state, alert_state, health, score, threshold,
                                 level, clear_level, episode, alert_id, acknowledged, silenced_until,
                                 last_alert, history [(epoch, score), ...] (last hour at one point a
                                 window), plus model, input, window_seconds, hop_seconds, up
    service.machine(name, history=False)   one snapshot (without the history: cheap)
    service.evidence_dir         the only folder evidence files are written to
    service.acknowledge(event_id, who)     = store.ack + the running lifecycle learns at once
    service.silence(machine, until, who, reason)
    service.unsilence(silence_id, who)

Hook: when ``[dashboard]`` is enabled, the service starts
``machine_monitor.dashboard.start_dashboard(self, bind=..., port=..., token=...)``
(uvicorn in a thread) and stops it on shutdown (:meth:`Service.start_dashboard`).
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from machine_monitor.errors import AudioDeviceError, ConfigError, MachineMonitorError
from machine_monitor.service.config import MachineConfig, ServiceConfig, load_config
from machine_monitor.service.lifecycle import ALERT, MachineLifecycle
from machine_monitor.service.sinks import DeliveryWorker, make_sink
from machine_monitor.service.store import EventStore, StoreError

log = logging.getLogger(__name__)

HEARTBEAT, SERVICE_STARTED, SERVICE_STOPPED, CONFIG_RELOADED = ("heartbeat", "service_started", "service_stopped",
                                                                "config_reloaded")
#: Service-thread period: acks, silences, repeats, heartbeat are noticed within this.
TICK_SECONDS = 0.5
#: An event the store cannot take (disk full, file system read-only) is retried, waiting this
#: long at first, doubling up to the second value: it is held, not dropped, and monitoring goes on
#: once the store takes it.
STORE_RETRY_SECONDS = (1.0, 30.0)


def limit_threads() -> None:
    """One BLAS/OpenMP thread and one torch thread for the whole process (idle BLAS threads spin)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def make_source(m: MachineConfig, hub):
    """The audio source of a machine: a file replay, or its channel of a device the ``hub`` opens."""
    from machine_monitor.audio.sources import FileSource

    if m.input is not None:
        return FileSource(m.input, speed=m.speed, channel=m.channel)
    return hub.source(m.device, channel=m.channel, samplerate=m.samplerate)


def write_evidence(directory: Path, machine: str, episode: int, epoch: float, audio: np.ndarray, sr: int) -> Path:
    """The audio that opened an alert as a 16-bit WAV in ``directory`` (durable, never half a file)."""
    from machine_monitor.audio.io import write_wav

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))
    safe = re.sub(r"[^\w.-]+", "_", machine)
    return write_wav(directory / f"{safe}_alert{episode:03d}_{stamp}.wav", audio, sr=sr)


#: An evidence file no event refers to yet may be one being written (the WAV is saved before its event).
EVIDENCE_GRACE_SECONDS = 3600.0
_EVIDENCE_NAME = re.compile(r"^[\w.-]+_alert\d{3,}_\d{8}T\d{6}Z\.wav$")


def prune_evidence(directory: Path, referenced: set[str], *, now: float | None = None,
                   grace: float = EVIDENCE_GRACE_SECONDS) -> int:
    """Delete the alert WAVs in ``directory`` that no stored event refers to any more (their events
    were removed by retention, or a crash left them behind), if older than ``grace`` seconds.

    Only files named as :func:`write_evidence` names them are touched. Returns how many went.
    Without this, a machine that alerts often fills a factory PC's disk over months.
    """
    now = time.time() if now is None else now
    keep = {os.path.realpath(p) for p in referenced}
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0  # no evidence yet
    for entry in entries:
        if not (_EVIDENCE_NAME.match(entry.name) and entry.is_file(follow_symlinks=False)):
            continue
        try:
            if now - entry.stat().st_mtime < grace or os.path.realpath(entry.path) in keep:
                continue
            os.unlink(entry.path)
            removed += 1
        except OSError as exc:  # another process, permissions: try again at the next pruning
            log.warning("evidence file %s not removed: %s", entry.path, exc)
    return removed


def window_level_db(y: np.ndarray, *, sr: int) -> float:
    """:func:`machine_monitor.threshold.window_level_db` (median of 0.5 s block levels, dBFS) in float32:
    the same decision at a fifth of the cost, paid by every machine at every hop."""
    from machine_monitor.threshold import LEVEL_BLOCK_SECONDS

    b = max(1, int(round(LEVEL_BLOCK_SECONDS * sr)))
    n = y.size // b
    if n == 0:
        return float(10 * np.log10(np.mean(np.square(y, dtype=np.float64)) + 1e-20))
    x = y[: n * b].reshape(n, b)
    power = np.einsum("ij,ij->i", x, x) / b
    return float(np.median(10 * np.log10(power.astype(np.float64) + 1e-20)))


class MachineRunner:
    """One machine's thread: its source, windows, scores, health checks and lifecycle.

    Parameters
    ----------
    cfg : MachineConfig
    detector : fitted detector
    service : Service
        Where events go (:meth:`Service.emit`).
    source : Source or None
        Overrides the configured input (tests).
    backoff : (float, float)
        First and longest wait between attempts to (re-)open the input.
    phase : float
        Where in the hop (0-1) this machine's windows end. The service spreads its
        machines over the hop so that inputs delivering blocks in step (file replays,
        channels of one interface) do not all score at the same instant and wait for
        each other (one interpreter lock).
    """

    def __init__(self, cfg: MachineConfig, detector, service: Service, *, source=None,
                 backoff: tuple[float, float] = (1.0, 30.0), phase: float = 0.0):
        from machine_monitor.live.monitor import default_window_seconds
        from machine_monitor.live.windows import SILENCE_CHUNK, RingBuffer

        self.cfg = cfg
        self.name = cfg.name
        self.detector = detector
        self.service = service
        self.source = source if source is not None else make_source(cfg, service.hub)
        self._generation = None
        self.backoff = backoff
        fc = detector.feature_config
        self.sr = fc.sr
        w = default_window_seconds(detector) if cfg.window_seconds is None else float(cfg.window_seconds)
        self.window = int(round(w * self.sr))
        if self.window < fc.min_samples:
            raise ConfigError(f"{service.config.path}: machines.{cfg.name}.window_seconds: must be at least one "
                              f"feature window ({fc.min_samples / self.sr:.3f} s), not {w} s")
        self.hop = max(1, round(cfg.hop_seconds * self.sr / fc.hop_length)) * fc.hop_length
        self.phase = int(round(phase * self.hop / fc.hop_length)) * fc.hop_length
        self.scorer = detector.streaming()
        self.ring = RingBuffer(self.window + (cfg.policy.n + 2) * self.hop + fc.min_samples)
        self.silence_chunk = min(SILENCE_CHUNK, self.window)
        # The raise level as `monitor` sets it: the model's calibrated live level for this rule, or the
        # clip threshold plus the margin.
        from machine_monitor.live.policy import AlertPolicy

        rule = AlertPolicy(k=cfg.policy.k, n=cfg.policy.n, quiet_seconds=cfg.policy.quiet_seconds, margin=cfg.margin,
                           false_alarms_per_day=cfg.false_alarms_per_day)
        level, self.level_source = rule.window_level(detector, window=self.window, hop=self.hop)
        # Operating state: the configured level, else the training audio's level profile (if the model has one).
        self.levels = None
        if cfg.stopped_below_dbfs is not None:
            self.levels = {"stopped_below_db": float(cfg.stopped_below_dbfs)}
        else:
            self.levels = (getattr(detector, "calibration_", None) or {}).get("levels")
        self.lifecycle = MachineLifecycle(cfg.name, detector.threshold_value_, cfg.policy, level=level,
                                          episode=service.store.last_episode(cfg.name))
        self.lock = threading.Lock()  # guards the lifecycle (machine thread vs service thread)
        #: Wall time (latency) and this thread's CPU time of each recent window, seconds.
        self.hop_times: collections.deque[float] = collections.deque(maxlen=1000)
        self.hop_cpu: collections.deque[float] = collections.deque(maxlen=1000)
        self.windows = 0
        self.up = False
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"machine-{cfg.name}", daemon=True)

    # -- control -------------------------------------------------------------------
    def start(self) -> MachineRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """A finite input (file replay) was played to its end."""
        return not self._thread.is_alive() and getattr(self.source, "finite", False) and self.source.finished

    def snapshot(self, *, history: bool = True) -> dict:
        with self.lock:
            s = self.lifecycle.snapshot(time.time(), history=history)
        st = self.source.stats
        hop = float(np.percentile(np.asarray(self.hop_times), 99)) if self.hop_times else None
        cpu = float(np.percentile(np.asarray(self.hop_cpu), 99)) if self.hop_cpu else None
        s.update(model=str(self.cfg.model), input=self.source.describe(), window_seconds=self.window / self.sr,
                 hop_seconds=self.hop / self.sr, up=self.up, windows=self.windows, episodes=self.lifecycle.episode,
                 dropped_blocks=st.dropped_blocks, overflows=st.overflows, hop_p99=hop, hop_cpu_p99=cpu,
                 error=self.error)
        return s

    # -- the loop ---------------------------------------------------------------------
    def _emit(self, events: list[dict], audio: np.ndarray | None = None) -> None:
        for ev in events:
            self.service.emit(self, ev, audio if ev["event"] == ALERT else None)

    def _health(self, kind: str, active: bool, reason: str | None = None) -> None:
        with self.lock:
            evs = self.lifecycle.observe_health(time.time(), kind, active, reason,
                                                stream_seconds=self.ring.total / self.sr)
            self._emit(evs)

    def _open(self) -> bool:
        """Open the input, with backoff; ``device_lost`` while it fails. False if stopped meanwhile."""
        delay, longest = self.backoff
        while not self._stop.is_set():
            try:
                self.source.start()
            except (AudioDeviceError, OSError) as exc:
                self.error = str(exc)
                self._health("device_lost", True, str(exc))
                log.warning("%s: input unavailable (%s); next try in %.0f s", self.name, exc, delay)
                self._stop.wait(delay)
                delay = min(2 * delay, longest)
                continue
            self.error = None
            self._generation = getattr(self.source, "generation", None)
            self._restart_segment()
            self._health("device_lost", False, f"opened {self.source.describe()}")
            return True
        return False

    def _restart_segment(self) -> None:
        origin = self.ring.total + self.phase
        self._next_stop = origin + self.window
        self.scorer.reset(origin)

    def _run(self) -> None:
        try:
            # The first scoring pays for lazy imports and allocations: not inside the first hop.
            self.detector.window_scores(np.random.default_rng(0).normal(0, 0.1, self.window).astype(np.float32))
            limit_threads()  # again: scoring may have loaded a BLAS library of its own
            if not self._open():
                return
            while not self._stop.is_set():
                try:
                    block = self.source.read(timeout=0.1)
                except AudioDeviceError as exc:
                    self.up = False
                    self._health("device_lost", True, str(exc))
                    self.source.stop()
                    if not self._open():
                        break
                    continue
                if block is None:
                    if self.source.finished:
                        log.info("%s: end of input", self.name)
                        break
                    continue
                self.up = True
                gen = getattr(self.source, "generation", None)
                if gen != self._generation:  # the shared stream was re-opened: the audio has a gap
                    self._generation = gen
                    self._restart_segment()
                self._feed(block)
        except Exception as exc:  # a bug or a broken model must not take the other machines down
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("%s: monitoring stopped", self.name)
            self._health("device_lost", True, f"monitoring failed: {self.error}")
        finally:
            self.up = False
            self.source.stop()

    def _feed(self, block: np.ndarray) -> None:
        self.ring.extend(block)
        while self.ring.total >= self._next_stop:
            stop = self._next_stop
            self._next_stop += self.hop
            t, c = time.perf_counter(), time.thread_time()
            self._window(stop - self.window, stop)
            self.hop_times.append(time.perf_counter() - t)
            self.hop_cpu.append(time.thread_time() - c)

    def _window(self, start: int, stop: int) -> None:
        from machine_monitor.live.windows import signal_problem

        y = self.ring.get(start, stop)
        now = time.time()
        c = self.cfg
        lc = self.lifecycle
        # Everything but the lifecycle outside the lock: snapshots (dashboard, metrics) never wait for a score.
        clipped = np.count_nonzero(np.abs(y[-self.hop:]) >= c.clip_level) / min(self.hop, y.size)
        clipping = None
        if clipped > c.clip_fraction or "clipping" in lc.health:
            # Raised on the newest hop, cleared only when a whole window is clean (no flapping).
            whole = np.count_nonzero(np.abs(y) >= c.clip_level) / y.size if clipped <= c.clip_fraction else 1.0
            clipping = whole > c.clip_fraction
        problem = signal_problem(y, chunk=self.silence_chunk)
        stopped = None
        if problem is None and self.levels is not None:
            from machine_monitor.threshold import machine_stopped

            db = window_level_db(y, sr=self.sr)
            if machine_stopped(db, self.levels, was_stopped="machine_stopped" in lc.health):
                stopped = f"level {db:.1f} dBFS, below {self.levels['stopped_below_db']:.1f} dBFS"
        if problem or stopped:
            self.scorer.skip_to(start + self.hop)
            score = None
        else:
            score = float(self.scorer.score(self.ring, start, stop))
            self.windows += 1
        at = stop / self.sr
        with self.lock:
            evs = []
            if clipping is not None:
                evs += lc.observe_health(now, "clipping", clipping, f"{100 * clipped:.2g} % of samples at full scale",
                                         stream_seconds=at)
            evs += lc.observe_health(now, "signal_lost", problem is not None, problem, stream_seconds=at)
            if self.levels is not None and problem is None:
                evs += lc.observe_health(now, "machine_stopped", stopped is not None, stopped, stream_seconds=at)
            evs += lc.window(now, score, start=start / self.sr, stop=at)
            audio = None
            for ev in evs:
                if ev["event"] == ALERT:
                    first = int(round(stop - ev["duration"] * self.sr))
                    audio = self.ring.get(max(first, self.ring.total - self.ring.capacity, 0), stop)
            self._emit(evs, audio)


class Service:
    """Everything ``serve`` runs (see the module docstring).

    Parameters
    ----------
    config : ServiceConfig
    detectors : dict or None
        Preloaded detectors by machine name (tests); else loaded from the config.
    sources : dict or None
        Sources by machine name overriding the config (tests).
    """

    def __init__(self, config: ServiceConfig, *, detectors: dict | None = None, sources: dict | None = None):
        self.config = config
        self.evidence_dir = config.evidence_dir
        self._sources = sources or {}
        self.store = EventStore(config.store, max_age_days=config.retention_days or None,
                                max_events=config.max_events)
        self.detectors = detectors if detectors is not None else load_detectors(config)
        #: Each machine's model.json digest when its detector was loaded: a model re-saved in place
        #: (a re-calibration) is picked up by the next reload.
        self.model_digests = {m.name: model_digest(m.model) for m in config.machines}
        from machine_monitor.service.inputs import DeviceHub

        self.hub = DeviceHub()
        self.runners: dict[str, MachineRunner] = {}
        self.workers: dict[str, DeliveryWorker] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.stopped_by = ""
        self._emit_lock = threading.Lock()
        self._metrics_server = None
        self._dashboard = None
        self.started = time.time()

    # -- the dashboard's read/act API ------------------------------------------------------
    @property
    def machines(self) -> dict[str, dict]:
        """``{name: snapshot}`` of every machine (see the module docstring)."""
        return {name: r.snapshot() for name, r in list(self.runners.items())}

    def machine(self, name: str, *, history: bool = False) -> dict:
        return self.runners[name].snapshot(history=history)

    def acknowledge(self, event_id: int, who: str, comment: str | None = None) -> dict:
        ev = self.store.ack(event_id, who, comment=comment)
        self._poll_controls()
        return ev

    def silence(self, machine: str | None, until: float, who: str, reason: str | None = None) -> dict:
        if machine is not None and machine not in self.runners:
            raise ConfigError(f"{self.config.path}: no machine named {machine!r}")
        ev = self.store.silence(machine, until, who, reason)
        self._poll_controls()
        return ev

    def unsilence(self, silence_id: int, who: str) -> dict:
        ev = self.store.unsilence(silence_id, who)
        self._poll_controls()
        return ev

    def status_line(self) -> str:
        """Every machine's state and last score against its level, on one line (the periodic log)."""
        parts = []
        for name, r in list(self.runners.items()):
            snap = r.snapshot(history=False)
            score = "-" if snap["score"] is None else f"{snap['score']:.4g}"
            parts.append(f"{name} {snap['state']} {score}/{snap['level']:.4g}")
        return "; ".join(parts)

    def metrics(self) -> dict:
        return {"machines": {n: r.snapshot(history=False) for n, r in list(self.runners.items())},
                "sinks": {n: w.backlog for n, w in list(self.workers.items())}}

    # -- events ------------------------------------------------------------------------------
    def emit(self, runner: MachineRunner | None, event: dict, audio: np.ndarray | None = None) -> dict:
        """Store ``event`` durably (its evidence first), tell its lifecycle the id, log it."""
        if audio is not None and audio.size and runner is not None:
            try:
                path = write_evidence(self.evidence_dir, runner.name, event.get("episode", 0), event["epoch"], audio,
                                      runner.sr)
                event["evidence"] = str(path)
            except (OSError, RuntimeError) as exc:  # the alert matters more than its audio
                log.error("%s: evidence not saved: %s", runner.name, exc)
        with self._emit_lock:
            stored = self._append(event)
        if runner is not None:
            runner.lifecycle.bind(stored)
        level = logging.WARNING if stored["event"] in ("alert", "alert_repeat", "device_lost", "signal_lost",
                                                         "clipping") else logging.INFO
        log.log(level, "%s", describe(stored))
        return stored

    def _append(self, event: dict) -> dict:
        """``store.append``, retried while the store cannot be written (the event waits, every
        machine's events wait behind it); given up only when the service stops (:class:`StoreError`)."""
        wait, failed = STORE_RETRY_SECONDS[0], None
        while True:
            try:
                stored = self.store.append(event)
            except StoreError as exc:
                if self._stop.is_set():
                    log.error("service stopping: the %s event is lost: %s", event.get("event"), exc)
                    raise
                if failed is None:
                    log.error("%s; the event waits, retried every %.0f-%.0f s (monitoring pauses meanwhile)", exc,
                              *STORE_RETRY_SECONDS)
                    failed = time.monotonic()
                self._stop.wait(wait)
                wait = min(2 * wait, STORE_RETRY_SECONDS[1])
                continue
            if failed is not None:
                log.warning("event store writable again after %.0f s: the waiting %s event is stored",
                            time.monotonic() - failed, event.get("event"))
            return stored

    # -- running ------------------------------------------------------------------------------
    def start(self) -> Service:
        """Start sinks, metrics, the dashboard and every machine (returns at once)."""
        limit_threads()
        self.config.evidence_dir.mkdir(parents=True, exist_ok=True)
        self._start_workers()
        for m in self.config.machines:
            # A restart after a crash: close the episode the dead process left open.
            left = self.store.open_alert(m.name)
            if left is not None:
                self.emit(None, {"event": "alert_end", "machine": m.name, "episode": left.get("episode"),
                                 "alert_id": left["id"], "reason": "monitor restarted"})
        self.emit(None, {"event": SERVICE_STARTED, "machines": [m.name for m in self.config.machines],
                         "pid": os.getpid()})
        for m in self.config.machines:
            self._start_machine(m)
        self._start_http()
        return self

    def _start_machine(self, m: MachineConfig) -> None:
        names = [x.name for x in self.config.machines]
        backoff = (self.config.device_retry_seconds, self.config.device_retry_max_seconds)
        r = MachineRunner(m, self.detectors[m.name], self, source=self._sources.get(m.name), backoff=backoff,
                          phase=names.index(m.name) / len(names))
        self.runners[m.name] = r
        r.lifecycle.set_silences(self.store.active_silences())
        r.start()
        log.info("%s: %s with %s, %.2f s windows every %.3f s, alert when %d of %d exceed %.4g (%s)",
                 m.name, r.source.describe(), m.model, r.window / r.sr, r.hop / r.sr, m.policy.k, m.policy.n,
                 r.lifecycle.level, r.level_source)

    def _start_workers(self) -> None:
        users: dict[str, list[str]] = collections.defaultdict(list)
        for m in self.config.machines:
            for s in m.sinks:
                users[s].append(m.name)
        for name, sc in self.config.sinks.items():
            sink = make_sink(sc, machines=users[name])
            self.workers[name] = DeliveryWorker(self.store, name, sink, machines=users[name], events=sc.events,
                                                silenced=sc.silenced, retry_seconds=sc.retry_seconds,
                                                retry_max_seconds=sc.retry_max_seconds).start()

    def _start_http(self) -> None:
        p = self.config.prometheus
        if p is not None and p.enabled:
            from machine_monitor.service.sinks.prometheus import start_metrics_server

            try:
                self._metrics_server = start_metrics_server(self, p.bind, p.port)
            except OSError as exc:
                raise ConfigError(f"{self.config.path}: prometheus.port: cannot listen on {p.bind}:{p.port} "
                                  f"({exc.strerror or exc})") from None
            log.info("Prometheus metrics on http://%s:%d/metrics", p.bind, self._metrics_server.server_port)
        self.start_dashboard()

    def start_dashboard(self) -> bool:
        """Serve the dashboard (``machine_monitor.dashboard.start_dashboard(self)``) when configured.

        The web server runs in a daemon thread on ``[dashboard]``'s bind and port; a port
        that cannot be opened is a ``ConfigError``. Returns whether it was started.
        """
        d = self.config.dashboard
        if d is None or not d.enabled:
            return False
        if importlib.util.find_spec("machine_monitor.dashboard") is None:
            log.warning("dashboard configured but machine_monitor.dashboard is not installed")
            return False
        from machine_monitor import dashboard

        self._dashboard = dashboard.start_dashboard(self, bind=d.bind, port=d.port, token=d.token)
        return True

    def stop(self, reason: str = "stopped") -> None:
        """Ask :meth:`run` to finish (thread- and signal-handler-safe)."""
        self.stopped_by = reason
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration file at the next tick (SIGHUP)."""
        self._reload.set()

    def run(self, *, until_inputs_end: bool = True) -> int:
        """Start (if needed) and serve until :meth:`stop` (or, with file inputs only, until they end).

        Returns the number of alert episodes raised while running.
        """
        if not self.runners:
            self.start()
        first = {n: r.lifecycle.episode for n, r in self.runners.items()}
        next_beat = time.time() + self.config.heartbeat_seconds if self.config.heartbeat_seconds else math.inf
        next_prune = time.time()
        next_status = time.time() + self.config.status_seconds if self.config.status_seconds else math.inf
        try:
            while not self._stop.wait(TICK_SECONDS):
                now = time.time()
                self._poll_controls()
                if now >= next_beat:
                    next_beat = now + self.config.heartbeat_seconds
                    self.emit(None, {"event": HEARTBEAT, "uptime": round(now - self.started, 1),
                                     "machines": {n: r.snapshot(history=False)["state"]
                                                  for n, r in self.runners.items()}})
                if now >= next_status:
                    next_status = now + self.config.status_seconds
                    log.info("status: %s", self.status_line())
                if now >= next_prune:
                    next_prune = now + 3600
                    removed = self.store.prune(now, sinks=list(self.workers))
                    gone = prune_evidence(self.evidence_dir, self.store.evidence_paths(), now=now)
                    if removed or gone:
                        log.info("event store: %d old events removed, %d evidence files with them", removed, gone)
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                if until_inputs_end and self.runners and all(r.finished for r in self.runners.values()):
                    self.stopped_by = "end of input"
                    break
        finally:
            self.shutdown()
        return sum(r.lifecycle.episode - first.get(n, 0) for n, r in self.runners.items())

    def _poll_controls(self) -> None:
        silences = self.store.active_silences()
        now = time.time()
        for r in list(self.runners.values()):
            with r.lock:
                lc = r.lifecycle
                lc.set_silences(silences)
                aid = lc.snapshot(now, history=False)["alert_id"]
                if aid is not None and lc.acknowledged is None:
                    a = self.store.acked(aid)
                    if a is not None:
                        lc.acknowledge(aid, a["who"], a["epoch"])
                evs = lc.tick(now)
                for ev in evs:
                    self.emit(r, ev)

    def reload(self) -> None:
        """Apply a changed ``machines.toml`` and models re-saved in place: restart the machines whose
        section or model changed, and every sink (cursors are kept)."""
        try:
            new = load_config(self.config.path)
            digests = {m.name: model_digest(m.model) for m in new.machines}
            same = {m.name for m in new.machines if m == self._machine_cfg(m.name)}
            remodelled = sorted(n for n in same if digests[n] != self.model_digests.get(n))
            detectors = load_detectors(new, keep={n: d for n, d in self.detectors.items()
                                                  if n in same and n not in remodelled})
        except MachineMonitorError as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        if (new.store, new.prometheus, new.dashboard) != (self.config.store, self.config.prometheus,
                                                           self.config.dashboard):
            log.warning("store, prometheus and dashboard settings change only with a restart")
        old = {m.name: m for m in self.config.machines}
        for w in self.workers.values():
            w.stop()
        self.workers = {}
        for name, r in list(self.runners.items()):
            m = next((x for x in new.machines if x.name == name), None)
            if m != old[name] or name in remodelled:
                r.stop()
                r.join(5)
                with r.lock:
                    why = "its model changed on disk" if m == old[name] else "configuration changed"
                    for ev in r.lifecycle.stop(time.time(), why):
                        self.emit(r, ev)
                del self.runners[name]
        for name in remodelled:
            log.info("%s: model %s was re-saved since it was loaded: reloaded", name, self._machine_cfg(name).model)
        self.config = new
        self.detectors = detectors
        self.model_digests = digests
        self._start_workers()
        for m in new.machines:
            if m.name not in self.runners:
                self._start_machine(m)
        self.emit(None, {"event": CONFIG_RELOADED, "machines": [m.name for m in new.machines],
                         "models_reloaded": remodelled})

    def _machine_cfg(self, name: str) -> MachineConfig | None:
        return next((m for m in self.config.machines if m.name == name), None)

    def shutdown(self, drain_seconds: float = 5.0) -> None:
        """Stop machines (closing open episodes), deliver what is pending for a moment, stop sinks."""
        for r in self.runners.values():
            r.stop()
        for r in self.runners.values():
            r.join(5)
            reason = "end of input" if r.finished else "monitor stopped"
            with r.lock:
                for ev in r.lifecycle.stop(time.time(), reason):
                    self.emit(r, ev)
        self.emit(None, {"event": SERVICE_STOPPED, "reason": self.stopped_by or "stopped"})
        end = time.monotonic() + drain_seconds
        for w in self.workers.values():
            w.drain(max(0.0, end - time.monotonic()))
        for w in self.workers.values():
            w.stop()
        self.hub.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._dashboard is not None:
            self._dashboard.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads (call from the main thread)."""
        def on_stop(signum, frame):
            self.stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda s, f: self.request_reload())


def model_digest(model_dir) -> str | None:
    """SHA-256 of a model directory's ``model.json`` (which holds every other file's sha256): it
    changes whenever the model is re-saved; ``None`` if it cannot be read."""
    try:
        return hashlib.sha256((Path(model_dir) / "model.json").read_bytes()).hexdigest()
    except OSError:
        return None


def load_detectors(config: ServiceConfig, *, keep: dict | None = None) -> dict:
    """Every machine's detector, loaded once per model directory (``ModelError`` names the machine)."""
    from machine_monitor.detectors.registry import load_detector
    from machine_monitor.errors import ModelError

    keep = dict(keep or {})
    by_dir: dict[Path, object] = {}
    out = {}
    for m in config.machines:
        if m.name in keep:
            out[m.name] = keep[m.name]
            continue
        if m.model not in by_dir:
            try:
                by_dir[m.model] = load_detector(m.model)
            except ModelError as exc:
                raise ModelError(f"{config.path}: machines.{m.name}.model: {exc}") from None
        out[m.name] = by_dir[m.model]
    return out


def describe(ev: dict) -> str:
    """One log line for an event."""
    m = ev.get("machine") or "service"
    kind = ev["event"]
    bits = [f"{m}: {kind}"]
    if "episode" in ev and ev.get("episode") is not None:
        bits.append(f"#{ev['episode']}")
    for key in ("peak_score", "threshold"):
        if ev.get(key) is not None:
            bits.append(f"{key}={ev[key]:.4g}")
    for key in ("windows", "who", "reason", "evidence"):
        if ev.get(key):
            bits.append(f"{key}={ev[key]}")
    if ev.get("silenced"):
        bits.append("(silenced)")
    return " ".join(bits) + f" [event {ev['id']}]"


SYSTEMD_UNIT = """\
# machine-monitor service. Install:
#   sudo useradd --system --user-group --groups audio --home-dir /var/lib/machine-monitor {user}
#   sudo cp machine-monitor.service /etc/systemd/system/
#   sudo systemctl daemon-reload && sudo systemctl enable --now machine-monitor
#   journalctl -u machine-monitor -f           # the log (events, device trouble)
#   sudo systemctl reload machine-monitor      # re-read {config} and re-saved models (SIGHUP)
# {config} must be readable by {user}; its store and evidence_dir must be writable by it
# (e.g. absolute paths under /var/lib/machine-monitor, which systemd creates for it).
[Unit]
Description=machine-monitor: acoustic monitoring ({config_name})
Wants=network-online.target sound.target
After=network-online.target sound.target

[Service]
Type=simple
User={user}
Group={user}
SupplementaryGroups=audio
StateDirectory=machine-monitor
WorkingDirectory=/var/lib/machine-monitor
ExecStart={exe} serve {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
# Stopped by systemctl (SIGTERM): exit 130 is a clean stop, not a failure.
SuccessExitStatus=130
TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
StandardOutput=journal
StandardError=journal
SyslogIdentifier=machine-monitor
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def systemd_unit(config_path: str | os.PathLike | None, *, user: str = "machine-monitor",
                 exe: str | None = None) -> str:
    """The text of a systemd unit running ``serve`` on ``config_path`` as ``user``."""
    import shutil

    config = Path(config_path).resolve() if config_path else Path("/etc/machine-monitor/machines.toml")
    if exe is None:
        beside = Path(sys.executable).parent / "machine-monitor"  # the console script of this environment
        exe = (str(beside) if beside.is_file()
               else shutil.which("machine-monitor") or f"{sys.executable} -m machine_monitor.cli")
    if user == "root" or not user:
        raise ConfigError("the service must not run as root; name a user in the audio group")
    return SYSTEMD_UNIT.format(config=config, config_name=config.name, user=user, exe=exe)


class JournalFormatter(logging.Formatter):
    """``<priority>name: message`` when stderr goes to journald (``JOURNAL_STREAM`` set), else timestamps."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, journal: bool | None = None):
        self.journal = bool(os.environ.get("JOURNAL_STREAM")) if journal is None else journal
        super().__init__("%(message)s" if self.journal else "%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            prio = self.PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{prio}>{line}" for line in text.splitlines())
        return text
