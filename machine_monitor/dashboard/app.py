"""The dashboard's Starlette application (see the package docstring for what it shows).

What it needs from the running service (``machine-monitor serve``), read through
:class:`ServiceView` so that nothing else here depends on the runner's internals:

- ``service.store``: the :class:`~machine_monitor.service.store.EventStore` (events, acks,
  silences: the page reads and writes nothing else);
- ``service.config``: the :class:`~machine_monitor.service.config.ServiceConfig` (machines in
  order, their models, ``evidence_dir``, the ``[dashboard]`` table);
- ``service.machines``: name -> the machine's live snapshot (an object with ``snapshot()``, or
  the snapshot dict itself; fields as :meth:`MachineLifecycle.snapshot` documents);
- optionally ``service.acknowledge(alert_id, who, comment=None)`` and ``service.detector(name)``
  (else the store is written directly and the model is loaded from its folder).

Routes
------
``GET /``                              the page
``GET /static/...``                    its script, style and uPlot (package files only)
``GET /api/state``                     every machine, recent alerts, silences in force
``GET /api/machines/{name}/scores``    ``?range=hour|day``: ``{"t": [...], "score": [...]}``
``GET /api/alerts``                    ``?limit=N``: newest first, with ack / end / evidence links
``GET /api/alerts/{id}/evidence.png``  the evidence picture (rendered once, then cached)
``GET /api/alerts/{id}/evidence.json`` the same evidence in a few sentences
``GET /api/stream``                    server-sent events: ``state`` every second, new ``events``
``GET /evidence/{file}``               an evidence WAV, only from inside the evidence folder
``POST /api/alerts/{id}/ack``          ``{"who", "comment"}``              token required
``POST /api/silences``                 ``{"machine", "minutes", "who", "reason"}``  token required
``POST /api/silences/{id}/end``        ``{"who"}``                         token required

The token goes in ``Authorization: Bearer <token>``. A generated token is printed once at
start with a link (``/#token=...``: the fragment never leaves the browser) that stores it.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import json
import logging
import math
import secrets
import string
import threading
import time
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from machine_monitor.errors import ConfigError, MachineMonitorError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE = HERE / "templates" / "index.html"
DEFAULT_BIND, DEFAULT_PORT = "127.0.0.1", 8765
#: Seconds between two ``state`` messages on the live stream.
STREAM_INTERVAL = 1.0
#: Buckets of the day view (seconds; each keeps the highest score inside it).
DAY_BUCKET = 30.0
HOUR, DAY = 3600.0, 86400.0
SILENCE_MAX_MINUTES = 60 * 24 * 31
ALERT_KINDS = ("alert",)
#: Evidence pictures kept rendered in memory.
EVIDENCE_CACHE = 32


# -- access rules ------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(bind: str, token: str | None, *, source: str = "dashboard") -> None:
    """Refuse to serve actions on a non-loopback address without a token (``ConfigError``)."""
    if not is_loopback(bind) and not token:
        raise ConfigError(f"{source}: binding the dashboard to {bind} (reachable from other computers) needs a "
                          "token: set token in the [dashboard] table of machines.toml, or bind to 127.0.0.1")


def safe_evidence_path(root: Path, name: str) -> Path | None:
    """The WAV file ``name`` (relative, ``/``-separated) inside ``root``, or None.

    None for anything else: absolute names, ``..`` or ``.`` parts, backslashes, NUL, files
    that are not ``.wav``, symbolic links leading out of ``root``, missing files.
    """
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        return None
    parts = PurePosixPath(name).parts
    if not parts or any(p in ("", ".", "..") for p in parts) or name.split("/").count("") > 0:
        return None
    try:
        base = root.resolve(strict=True)
        path = (base / Path(*parts)).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or path.suffix.lower() != ".wav" or not path.is_file():
        return None
    return path


def evidence_name(root: Path, evidence: str | None) -> str | None:
    """An event's evidence file as a name relative to ``root`` (None when outside it or missing).

    The service records the path it wrote: absolute, or relative to its working directory
    (a relative ``evidence_dir``); a bare name is taken inside ``root``.
    """
    if not evidence:
        return None
    p = Path(evidence)
    try:
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    for candidate in ((p,) if p.is_absolute() else (Path.cwd() / p, base / p)):
        try:
            rel = candidate.resolve(strict=True).relative_to(base)
        except (OSError, RuntimeError, ValueError):
            continue
        if safe_evidence_path(root, rel.as_posix()) is not None:
            return rel.as_posix()
    return None


# -- the service, as the page sees it -----------------------------------------------------
class ServiceView:
    """Read the running service through one narrow interface (see the module docstring)."""

    def __init__(self, service):
        self.service = service
        self.store = service.store
        self.config = getattr(service, "config", None)
        self._detectors: dict[str, object] = {}
        self._det_lock = threading.Lock()

    @property
    def evidence_dir(self) -> Path | None:
        d = getattr(self.service, "evidence_dir", None) or getattr(self.config, "evidence_dir", None)
        return Path(d) if d else None

    def machine_names(self) -> list[str]:
        if self.config is not None and getattr(self.config, "machines", None):
            return [m.name for m in self.config.machines]
        return list(getattr(self.service, "machines", {}) or {})

    def snapshot(self, name: str, *, history: bool = False) -> dict:
        """The machine's live snapshot (state ``stopped`` when it is not being monitored)."""
        one = getattr(self.service, "machine", None)
        snap = None
        if callable(one):
            try:
                snap = one(name, history=history)
            except KeyError:
                snap = None
        else:
            m = (getattr(self.service, "machines", None) or {}).get(name)
            snap = m.snapshot() if callable(getattr(m, "snapshot", None)) else m
        if not snap:
            return {"name": name, "state": "stopped", "history": []}
        snap = dict(snap)
        # A finished replay or a machine thread that ended: its last state is no longer news.
        if snap.get("up") is False and snap.get("windows") and snap.get("state") in ("normal", "pending"):
            snap["state"] = "stopped"
        return snap

    def detector(self, name: str):
        """The machine's fitted detector (the service's own, else loaded once from its model folder)."""
        det = (getattr(self.service, "detectors", None) or {}).get(name)
        if det is not None:
            return det
        with self._det_lock:
            if name not in self._detectors:
                if self.config is None:
                    raise ConfigError(f"dashboard: no model known for machine {name!r}")
                try:
                    cfg = self.config.machine(name)
                except StopIteration:
                    raise ConfigError(f"dashboard: no machine named {name!r}") from None
                from machine_monitor.detectors.registry import load_detector

                self._detectors[name] = load_detector(cfg.model, device="cpu")
            return self._detectors[name]

    def acknowledge(self, alert_id: int, who: str, comment: str | None) -> dict:
        hook = getattr(self.service, "acknowledge", None)
        if callable(hook):
            return hook(alert_id, who, comment=comment) or {}
        return self.store.ack(alert_id, who, comment=comment)

    def silence(self, machine: str | None, until: float, who: str, reason: str | None) -> dict:
        hook = getattr(self.service, "silence", None)
        if callable(hook):
            return hook(machine, until, who, reason) or {}
        return self.store.silence(machine, until, who, reason)

    def unsilence(self, silence_id: int, who: str) -> dict:
        hook = getattr(self.service, "unsilence", None)
        if callable(hook):
            return hook(silence_id, who) or {}
        return self.store.unsilence(silence_id, who)


class ScoreHistory:
    """Scores for the timelines: every window of the last hour, 30-s maxima of the last day.

    Fed from the snapshots' ``history`` (``(epoch, score)`` pairs) by :meth:`ingest`; only
    points newer than the last one seen are taken, so polling often costs little. Kept in
    memory: the day view starts empty when the service restarts.
    """

    def __init__(self, *, bucket: float = DAY_BUCKET):
        self.bucket = bucket
        self.raw: dict[str, collections.deque] = {}
        self.days: dict[str, collections.deque] = {}
        self.last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ingest(self, name: str, points) -> int:
        """Add the points newer than what was seen; returns how many."""
        n = 0
        with self._lock:
            raw = self.raw.setdefault(name, collections.deque(maxlen=int(HOUR / 0.25)))
            day = self.days.setdefault(name, collections.deque(maxlen=int(DAY / self.bucket) + 2))
            last = self.last.get(name, -math.inf)
            points = list(points or ())
            k = len(points)  # the new points are at the end: walk back to the first one seen
            while k > 0 and float(points[k - 1][0]) > last:
                k -= 1
            for t, s in points[k:]:
                t = float(t)
                s = None if s is None or not math.isfinite(float(s)) else float(s)
                raw.append((t, s))
                b = math.floor(t / self.bucket) * self.bucket
                if day and day[-1][0] == b:
                    if s is not None and (day[-1][1] is None or s > day[-1][1]):
                        day[-1][1] = s
                else:
                    day.append([b, s])
                last, n = t, n + 1
            self.last[name] = last
        return n

    def series(self, name: str, seconds: float, *, now: float | None = None) -> dict:
        """``{"t": [...], "score": [...]}`` of the last ``seconds`` (raw up to an hour, else buckets)."""
        now = time.time() if now is None else now
        with self._lock:
            pts = list(self.raw.get(name, ())) if seconds <= HOUR else [tuple(b) for b in self.days.get(name, ())]
        pts = [p for p in pts if p[0] >= now - seconds]
        return {"t": [p[0] for p in pts], "score": [p[1] for p in pts]}

    def since(self, name: str, after: float) -> list[tuple[float, float | None]]:
        with self._lock:
            raw = self.raw.get(name, ())
            out = []
            for p in reversed(raw):
                if p[0] <= after:
                    break
                out.append(p)
        return out[::-1]


# -- evidence pictures --------------------------------------------------------------------
class EvidenceRenderer:
    """Render an alert's evidence once (one at a time: the monitor shares these cores), then cache it."""

    def __init__(self, view: ServiceView, *, size: int = EVIDENCE_CACHE):
        self.view = view
        self.size = size
        self._cache: collections.OrderedDict[int, tuple[bytes, list[str]]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, alert: dict, wav: Path) -> tuple[bytes, list[str]]:
        key = int(alert["id"])
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            out = self._render(alert, wav)
            self._cache[key] = out
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
            return out

    def _render(self, alert: dict, wav: Path) -> tuple[bytes, list[str]]:
        from machine_monitor.audio.io import load_audio
        from machine_monitor.reports.evidence import collect_evidence, render_evidence

        det = self.view.detector(alert["machine"])
        cfg = det.feature_config
        y = load_audio(wav, sr=cfg.sr, min_samples=cfg.min_samples)
        ev = collect_evidence(det, y, name=f"{alert['machine']}: alert #{alert.get('episode', '?')} "
                                           f"({wav.name})", threshold=alert.get("threshold"),
                              score=alert.get("peak_score"), time_label="seconds into the evidence recording")
        return render_evidence(ev, fmt="png", dpi=80), ev.summary()


# -- the application -------------------------------------------------------------------------
def _json(data, status: int = 200):
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def _error(status: int, message: str):
    return _json({"error": message}, status)


def _alert_row(view: ServiceView, alert: dict, ends: dict[int, dict], now: float) -> dict:
    root = view.evidence_dir
    name = evidence_name(root, alert.get("evidence")) if root else None
    ack = view.store.acked(alert["id"])
    end = ends.get(alert["id"])
    return {
        "id": alert["id"], "machine": alert.get("machine", ""), "epoch": alert.get("epoch"),
        "time": alert.get("time"), "episode": alert.get("episode"), "peak_score": alert.get("peak_score"),
        "score": alert.get("score"), "threshold": alert.get("threshold"), "windows": alert.get("windows"),
        "silenced": bool(alert.get("silenced")), "acknowledged": ack,
        "ended": None if end is None else {"epoch": end.get("epoch"), "reason": end.get("reason"),
                                           "duration": end.get("duration")},
        "audio_url": None if name is None else "/evidence/" + quote(name),
        "evidence_url": None if name is None else f"/api/alerts/{alert['id']}/evidence.png",
        "summary_url": None if name is None else f"/api/alerts/{alert['id']}/evidence.json",
        "evidence_note": None if name is not None else (
            "no evidence recording" if not alert.get("evidence") else "evidence recording no longer on disk"),
    }


def alerts(view: ServiceView, *, limit: int = 50, now: float | None = None) -> list[dict]:
    """The newest ``limit`` alerts with their acknowledgement, end and evidence links."""
    now = time.time() if now is None else now
    rows = view.store.events(kinds=ALERT_KINDS, limit=limit, newest_first=True)
    if not rows:
        return []
    first = min(r["id"] for r in rows)
    ends = {e.get("alert_id"): e for e in view.store.events(since_id=first - 1, kinds=("alert_end",), limit=None)}
    return [_alert_row(view, a, ends, now) for a in rows]


def _machine_state(name: str, snap: dict, last_alerts: dict[str, dict], history: ScoreHistory) -> dict:
    last = snap.get("last_alert") or last_alerts.get(name)
    keep = ("state", "alert_state", "health", "score", "threshold", "level", "clear_level", "episode",
            "alert_id", "acknowledged", "silenced_until", "input", "error")
    out = {"name": name, **{k: snap.get(k) for k in keep}}
    out["state"] = out["state"] or "stopped"
    if out["silenced_until"] and out["state"] in ("normal", "pending"):
        out["state"] = "silenced"  # its alerts would not be notified: say so before anything else
    updated = history.last.get(name)
    out["updated"] = updated if updated is not None and math.isfinite(updated) else None
    out["last_alert"] = None if not last else {"id": last.get("id"), "epoch": last.get("epoch"),
                                               "peak_score": last.get("peak_score"), "episode": last.get("episode")}
    return out


class Board:
    """What every page and live stream shows, read from the service at most every ``max_age`` seconds.

    However many browsers are open, the service's snapshots are read once per period.
    """

    def __init__(self, view: ServiceView, *, max_age: float = 0.5):
        self.view = view
        self.history = ScoreHistory()
        self.max_age = max_age
        self._lock = threading.Lock()
        self._at = -math.inf
        self._state: dict | None = None

    def state(self) -> dict:
        """Every machine, the silences in force and the newest event id (a shared dict: copy to change)."""
        with self._lock:
            if self._state is not None and time.monotonic() - self._at < self.max_age:
                return self._state
            view, names = self.view, self.view.machine_names()
            snaps = {}
            for name in names:
                snaps[name] = view.snapshot(name, history=True)
                self.history.ingest(name, snaps[name].pop("history", None) or ())
            last_alerts: dict[str, dict] = {}
            for a in view.store.events(kinds=ALERT_KINDS, limit=200, newest_first=True):
                last_alerts.setdefault(a.get("machine"), a)
            self._state = {"now": time.time(),
                           "machines": [_machine_state(n, snaps[n], last_alerts, self.history) for n in names],
                           "silences": view.store.active_silences(), "last_event_id": view.store.last_id()}
            self._at = time.monotonic()
            return self._state


def _page(machine_names: list[str]) -> str:
    title = "machine-monitor: " + (", ".join(machine_names[:4]) + (" ..." if len(machine_names) > 4 else ""))
    import html

    return string.Template(TEMPLATE.read_text(encoding="utf-8")).safe_substitute(title=html.escape(title))


def create_app(service, *, token: str | None = None, bind: str | None = None, stop_event=None,
               announce: bool = True):
    """The dashboard as a Starlette application for a running ``service``.

    Parameters
    ----------
    service : object
        The running service (see the module docstring for what is read from it).
    token : str or None
        The token actions need; None: ``service.config.dashboard.token``, else one is
        generated (``app.state.token``; :func:`start_dashboard` prints it).
    bind : str or None
        The address it will be served on (checked with :func:`check_bind`); None: the
        ``[dashboard]`` table's, else 127.0.0.1.
    stop_event : threading.Event, optional
        Set when the server stops: live streams end at once.
    announce : bool
        Log a generated token once (WARNING, on stderr), with a link that stores it.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    view = ServiceView(service)
    dash = getattr(view.config, "dashboard", None)
    bind = bind or getattr(dash, "bind", None) or DEFAULT_BIND
    configured = token or getattr(dash, "token", None)
    check_bind(bind, configured, source=str(getattr(view.config, "path", "dashboard")))
    token = configured or secrets.token_urlsafe(18)
    if configured is None and announce:
        host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else (f"[{bind}]" if ":" in bind else bind)
        url = f"http://{host}:{getattr(dash, 'port', None) or DEFAULT_PORT}/"
        log.warning("dashboard %s: acknowledging and silencing need the token %s (this link stores it in your "
                    "browser: %s#token=%s)", url, token, url, token)
    board = Board(view)
    history = board.history
    renderer = EvidenceRenderer(view)
    stop_event = stop_event or threading.Event()

    def authorised(request) -> bool:
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    async def body_of(request) -> dict:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def who_of(data: dict) -> str | None:
        who = str(data.get("who") or "").strip()
        return who[:80] or None

    async def index(request):
        return HTMLResponse(_page(view.machine_names()), headers={"Cache-Control": "no-store"})

    async def api_state(request):
        return _json(await run_in_threadpool(board.state))

    async def api_scores(request):
        name = request.path_params["name"]
        if name not in view.machine_names():
            return _error(404, f"no machine named {name!r}")
        rng = request.query_params.get("range", "hour")
        if rng not in ("hour", "day"):
            return _error(400, "range must be hour or day")
        await run_in_threadpool(board.state)
        return _json(history.series(name, HOUR if rng == "hour" else DAY))

    async def api_alerts(request):
        try:
            limit = max(1, min(500, int(request.query_params.get("limit", 50))))
        except ValueError:
            return _error(400, "limit must be a whole number")
        return _json(await run_in_threadpool(alerts, view, limit=limit))

    def _alert_and_wav(alert_id: str):
        try:
            alert = view.store.event(int(alert_id))
        except ValueError:
            return None, None
        if alert is None or alert.get("event") != "alert" or view.evidence_dir is None:
            return alert, None
        name = evidence_name(view.evidence_dir, alert.get("evidence"))
        return alert, None if name is None else safe_evidence_path(view.evidence_dir, name)

    async def evidence_png(request):
        alert, wav = _alert_and_wav(request.path_params["id"])
        if wav is None:
            return _error(404, "no evidence recording for this alert")
        try:
            png, _ = await run_in_threadpool(renderer.get, alert, wav)
        except MachineMonitorError as exc:
            return _error(500, f"cannot draw the evidence: {exc}")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def evidence_json(request):
        alert, wav = _alert_and_wav(request.path_params["id"])
        if wav is None:
            return _error(404, "no evidence recording for this alert")
        try:
            _, summary = await run_in_threadpool(renderer.get, alert, wav)
        except MachineMonitorError as exc:
            return _error(500, f"cannot read the evidence: {exc}")
        return _json({"id": alert["id"], "summary": summary})

    async def evidence_file(request):
        root = view.evidence_dir
        path = None if root is None else safe_evidence_path(root, request.path_params["name"])
        if path is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "max-age=3600"})

    async def ack(request):
        if not authorised(request):
            return _error(401, "acknowledging needs the dashboard token")
        data = await body_of(request)
        who = who_of(data)
        if who is None:
            return _error(400, "say who acknowledges (your name)")
        try:
            alert_id = int(request.path_params["id"])
        except ValueError:
            return _error(404, "no such alert")
        comment = (str(data.get("comment") or "").strip()[:500]) or None
        try:
            ev = await run_in_threadpool(view.acknowledge, alert_id, who, comment)
        except ConfigError as exc:
            return _error(404, str(exc))
        log.info("alert %d acknowledged by %s from %s", alert_id, who, request.client.host if request.client else "?")
        return _json({"ok": True, "event": ev})

    async def silence(request):
        if not authorised(request):
            return _error(401, "silencing needs the dashboard token")
        data = await body_of(request)
        who = who_of(data)
        if who is None:
            return _error(400, "say who silences (your name)")
        machine = data.get("machine") or None
        if machine is not None and machine not in view.machine_names():
            return _error(404, f"no machine named {machine!r}")
        try:
            minutes = float(data.get("minutes"))
        except (TypeError, ValueError):
            return _error(400, "minutes must be a number")
        if not 0 < minutes <= SILENCE_MAX_MINUTES:
            return _error(400, f"a silence lasts more than 0 and at most {SILENCE_MAX_MINUTES} minutes")
        reason = (str(data.get("reason") or "").strip()[:500]) or None
        try:
            ev = await run_in_threadpool(view.silence, machine, time.time() + minutes * 60, who, reason)
        except ConfigError as exc:
            return _error(400, str(exc))
        log.info("%s silenced for %g min by %s", machine or "every machine", minutes, who)
        return _json({"ok": True, "event": ev})

    async def unsilence(request):
        if not authorised(request):
            return _error(401, "ending a silence needs the dashboard token")
        who = who_of(await body_of(request))
        if who is None:
            return _error(400, "say who ends the silence (your name)")
        try:
            ev = await run_in_threadpool(view.unsilence, int(request.path_params["id"]), who)
        except (ConfigError, ValueError) as exc:
            return _error(404, str(exc))
        return _json({"ok": True, "event": ev})

    async def stream(request):
        try:
            last_id = int(request.query_params.get("after", view.store.last_id()))
        except ValueError:
            last_id = view.store.last_id()
        # Points of the last seconds too: the page loaded the timeline just before connecting.
        sent = {name: time.time() - 10.0 for name in view.machine_names()}

        async def messages():
            nonlocal last_id
            yield "retry: 2000\n\n"
            while not stop_event.is_set():
                st = dict(await run_in_threadpool(board.state))
                st["machines"] = [dict(m) for m in st["machines"]]
                for m in st["machines"]:
                    pts = history.since(m["name"], sent.get(m["name"], 0.0))
                    if pts:
                        sent[m["name"]] = pts[-1][0]
                    m["points"] = pts
                yield f"event: state\ndata: {json.dumps(st)}\n\n"
                new = await run_in_threadpool(view.store.events, since_id=last_id, limit=200)
                if new:
                    last_id = new[-1]["id"]
                    yield f"id: {last_id}\nevent: events\ndata: {json.dumps(new, default=str)}\n\n"
                for _ in range(int(STREAM_INTERVAL / 0.1)):
                    if stop_event.is_set() or await request.is_disconnected():
                        return
                    await asyncio.sleep(0.1)

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [
        Route("/", index),
        Route("/api/state", api_state),
        Route("/api/machines/{name}/scores", api_scores),
        Route("/api/alerts", api_alerts),
        Route("/api/alerts/{id}/evidence.png", evidence_png),
        Route("/api/alerts/{id}/evidence.json", evidence_json),
        Route("/api/alerts/{id}/ack", ack, methods=["POST"]),
        Route("/api/silences", silence, methods=["POST"]),
        Route("/api/silences/{id}/end", unsilence, methods=["POST"]),
        Route("/api/stream", stream),
        Route("/evidence/{name:path}", evidence_file),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]

    async def not_found(request, exc):
        return PlainTextResponse("not found", status_code=404)

    from starlette.middleware import Middleware

    app = Starlette(routes=routes, exception_handlers={404: not_found}, middleware=[Middleware(SecurityHeaders)])
    app.state.token = token
    app.state.token_generated = configured is None
    app.state.board = board
    app.state.view = view
    return app


class SecurityHeaders:
    """ASGI middleware: every response says what the browser may run and send (defence in depth:
    scripts only from this server, nothing framed, no referrer, no content-type guessing)."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self' "
                                           b"'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
               (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"x-frame-options", b"DENY")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        return await self.app(scope, receive, with_headers)


def _listen(bind: str, port: int):
    """A listening socket on ``bind:port`` (``ConfigError`` saying why not: in use, no such address)."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"dashboard: cannot serve on {bind}:{port} ({exc.strerror or exc})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"dashboard: cannot serve on {bind}:{port} ({exc.strerror or exc})") from None
    return sock


class DashboardServer:
    """The dashboard served by uvicorn in a daemon thread (see :func:`start_dashboard`)."""

    def __init__(self, app, server, thread, url: str, stop_event: threading.Event):
        self.app, self.server, self.thread, self.url = app, server, thread, url
        self._stop = stop_event

    @property
    def token(self) -> str:
        return self.app.state.token

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.server.should_exit = True
        self.thread.join(timeout)


def start_dashboard(service, *, bind: str | None = None, port: int | None = None, token: str | None = None,
                    announce=None, ready_timeout: float = 10.0) -> DashboardServer:
    """Serve :func:`create_app` for ``service`` with uvicorn in a background thread.

    ``bind``/``port``/``token`` default to ``service.config.dashboard`` (then 127.0.0.1:8765).
    The address and, when generated, the token are announced once (``announce``: a callable
    taking one line; default: the log at WARNING level, on stderr). Raises ``ConfigError``
    when the bind is refused or the port cannot be opened.
    """
    import uvicorn

    dash = getattr(getattr(service, "config", None), "dashboard", None)
    bind = bind or getattr(dash, "bind", None) or DEFAULT_BIND
    port = DEFAULT_PORT if port is None and getattr(dash, "port", None) is None else (
        port if port is not None else dash.port)
    stop_event = threading.Event()
    app = create_app(service, token=token, bind=bind, stop_event=stop_event, announce=False)
    sock = _listen(bind, int(port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # the service owns the signals
    failed: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread below
            failed.append(exc)

    thread = threading.Thread(target=run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        server.should_exit = True
        sock.close()
        reason = failed[0] if failed else "it did not start in time"
        raise ConfigError(f"dashboard: cannot serve on {bind}:{port} ({reason})")
    actual = sock.getsockname()[1]
    host = f"[{bind}]" if ":" in bind else bind
    url = f"http://{'127.0.0.1' if bind in ('0.0.0.0', '') else host}:{actual}/"
    say = announce or (lambda line: log.warning("%s", line))
    if app.state.token_generated:
        say(f"dashboard {url}: acknowledging and silencing need the token {app.state.token} (this link stores it "
            f"in your browser: {url}#token={app.state.token})")
    else:
        say(f"dashboard {url}: acknowledging and silencing need the token set in machines.toml")
    return DashboardServer(app, server, thread, url, stop_event)
