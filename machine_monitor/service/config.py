"""``machines.toml``: what the service monitors and where events go, validated before anything starts.

::

    [service]
    store = "events.db"              # SQLite event store (relative paths: from this file's folder)
    evidence_dir = "evidence"        # alert audio (WAV)
    heartbeat_seconds = 300          # a heartbeat event this often (0: none)
    status_seconds = 60              # a status line (state, score/level of every machine) in the log
    device_retry_seconds = 1         # re-open a lost input after this, doubling up to
    device_retry_max_seconds = 30
    retention_days = 90
    max_events = 1000000

    [defaults]                       # alert policy and windows for every machine (each may override)
    k = 3
    n = 5
    quiet_seconds = 30
    margin = 0.1
    hysteresis = 0.1
    repeat_seconds = 3600

    [sinks.log]
    type = "jsonl"
    path = "alerts.jsonl"

    [sinks.control_room]
    type = "webhook"
    url = "http://10.0.0.5:8080/alerts"

    [sinks.broker]
    type = "mqtt"
    host = "127.0.0.1"
    homeassistant = true

    [sinks.pager]
    type = "command"
    command = ["notify-send", "machine alert"]

    [prometheus]
    port = 9108

    [dashboard]
    port = 8765

    [machines.pump3]
    model = "models/pump3"
    device = "USB"                   # or: input = "replay.wav" (tests, demos)
    channel = 0
    sinks = ["log", "broker"]        # default: every sink

Every mistake is a :class:`ConfigError` of one line naming the file and the key
(``machines.toml: machines.pump3.modle: unknown key``). Keys, their types and
defaults are listed once, in the ``_*_KEYS`` tables below.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import shlex
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged (setup.cfg: tomli; python_version<"3.11")
    import tomli as tomllib

from machine_monitor.errors import ConfigError
from machine_monitor.service.lifecycle import ACTION_EVENTS, LifecyclePolicy

DEFAULT_DASHBOARD_PORT = 8765
DEFAULT_PROMETHEUS_PORT = 9108
SINK_TYPES = ("jsonl", "webhook", "mqtt", "command")

_NUM = (int, float)
# key -> (types, default)
_SERVICE_KEYS = {
    "store": (str, "events.db"),
    "evidence_dir": (str, "evidence"),
    "heartbeat_seconds": (_NUM, 300.0),
    "retention_days": (_NUM, 90.0),
    "max_events": (int, 1_000_000),
    "status_seconds": (_NUM, 60.0),
    "device_retry_seconds": (_NUM, 1.0),
    "device_retry_max_seconds": (_NUM, 30.0),
}
_POLICY_KEYS = {
    "k": (int, 3),
    "n": (int, 5),
    "quiet_seconds": (_NUM, 30.0),
    "margin": (_NUM, None),
    "false_alarms_per_day": (_NUM, None),
    "hysteresis": (_NUM, 0.1),
    "repeat_seconds": (_NUM, 3600.0),
    "window_seconds": (_NUM, None),
    "hop_seconds": (_NUM, 0.5),
    "clip_level": (_NUM, 0.999),
    "clip_fraction": (_NUM, 0.001),
    "stopped_below_dbfs": (_NUM, None),
}
_MACHINE_KEYS = {
    "model": (str, None),
    "device": ((str, int), None),
    "channel": (int, None),
    "samplerate": (_NUM, None),
    "input": (str, None),
    "speed": (_NUM, 1.0),
    "sinks": (list, None),
    **_POLICY_KEYS,
}
_SINK_COMMON = {"type": (str, None), "events": (list, None), "silenced": (bool, None),
                "retry_seconds": (_NUM, 1.0), "retry_max_seconds": (_NUM, 60.0)}
_SINK_KEYS = {
    "jsonl": {"path": (str, "alerts.jsonl")},
    "webhook": {"url": (str, None), "timeout": (_NUM, 5.0), "headers": (dict, {})},
    "mqtt": {"host": (str, "127.0.0.1"), "port": (int, 1883), "username": (str, None), "password": (str, None),
             "prefix": (str, "machine-monitor"), "client_id": (str, None), "homeassistant": (bool, False),
             "discovery_prefix": (str, "homeassistant"), "qos": (int, 1), "keepalive": (int, 30),
             "timeout": (_NUM, 10.0)},
    "command": {"command": ((list, str), None), "timeout": (_NUM, 60.0)},
}
_HTTP_KEYS = {"enabled": (bool, True), "bind": (str, "127.0.0.1"), "port": (int, None)}
_DASHBOARD_KEYS = {**_HTTP_KEYS, "token": (str, None)}
_TOP = ("service", "defaults", "sinks", "machines", "prometheus", "dashboard")


@dataclasses.dataclass(frozen=True)
class SinkConfig:
    """One named sink: ``type``, which events it takes, its options (``options``)."""

    name: str
    type: str
    events: tuple[str, ...] | None  # None: every kind
    silenced: bool  # deliver events raised during a silence
    retry_seconds: float
    retry_max_seconds: float
    options: dict


@dataclasses.dataclass(frozen=True)
class MachineConfig:
    """One machine: its model, its input, its policy and its sinks."""

    name: str
    model: Path
    device: str | int | None
    channel: int | None
    samplerate: float | None
    input: Path | None
    speed: float
    sinks: tuple[str, ...]
    policy: LifecyclePolicy
    margin: float | None  # None: the model's calibrated live level (threshold + 10 % without one)
    false_alarms_per_day: float | None
    window_seconds: float | None
    hop_seconds: float
    clip_level: float
    clip_fraction: float
    stopped_below_dbfs: float | None


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """An HTTP endpoint the service serves (Prometheus metrics, the dashboard)."""

    enabled: bool
    bind: str
    port: int
    token: str | None = None


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """The whole ``machines.toml``."""

    path: Path
    store: Path
    evidence_dir: Path
    heartbeat_seconds: float
    retention_days: float
    max_events: int
    status_seconds: float
    device_retry_seconds: float  # first wait before re-opening a lost input; doubles up to the max
    device_retry_max_seconds: float
    sinks: dict[str, SinkConfig]
    machines: tuple[MachineConfig, ...]
    prometheus: HttpConfig | None
    dashboard: HttpConfig | None

    def machine(self, name: str) -> MachineConfig:
        return next(m for m in self.machines if m.name == name)


def _check_table(path: Path, where: str, table, keys: dict) -> dict:
    """Values of ``table`` with defaults filled in; one-line errors naming ``where.key``."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where}: must be a table")
    for key in table:
        if key not in keys:
            raise ConfigError(f"{path}: {where}.{key}: unknown key (known: {', '.join(sorted(keys))})")
    out = {}
    for key, (types, default) in keys.items():
        if key not in table:
            out[key] = default
            continue
        v = table[key]
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise ConfigError(f"{path}: {where}.{key}: expected {_type_name(types)}, got {v!r}")
        if not isinstance(v, types):
            raise ConfigError(f"{path}: {where}.{key}: expected {_type_name(types)}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{path}: {where}.{key}: must be finite, got {v!r}")
        out[key] = v
    return out


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table",
             bool: "true or false"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _nonneg(path: Path, where: str, values: dict, *keys: str) -> None:
    for k in keys:
        v = values.get(k)
        if v is not None and v < 0:
            raise ConfigError(f"{path}: {where}.{k}: must be >= 0, got {v!r}")


def _http(path: Path, name: str, table, default_port: int) -> HttpConfig | None:
    if table is None:
        return None
    keys = _DASHBOARD_KEYS if name == "dashboard" else _HTTP_KEYS
    v = _check_table(path, name, table, keys)
    port = default_port if v["port"] is None else v["port"]
    if not 0 <= port <= 65535:
        raise ConfigError(f"{path}: {name}.port: must be 0-65535, got {port}")
    bind = v["bind"]
    if name == "dashboard" and v["enabled"] and not _is_loopback(bind) and not v["token"]:
        raise ConfigError(f"{path}: dashboard.token: binding the dashboard to {bind} (not loopback) needs a token; "
                          "set dashboard.token or bind to 127.0.0.1")
    return HttpConfig(enabled=v["enabled"], bind=bind, port=port, token=v.get("token"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sink(path: Path, name: str, table) -> SinkConfig:
    where = f"sinks.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {where}: must be a table")
    kind = table.get("type")
    if kind not in SINK_TYPES:
        raise ConfigError(f"{path}: {where}.type: must be one of {', '.join(SINK_TYPES)}, got {kind!r}")
    v = _check_table(path, where, table, {**_SINK_COMMON, **_SINK_KEYS[kind]})
    _nonneg(path, where, v, "retry_seconds", "retry_max_seconds", "timeout")
    opts = {k: v[k] for k in _SINK_KEYS[kind]}
    if kind == "webhook" and not str(opts["url"] or "").startswith(("http://", "https://")):
        raise ConfigError(f"{path}: {where}.url: an http:// or https:// URL is required, got {opts['url']!r}")
    if kind == "command":
        cmd = opts["command"]
        argv = shlex.split(cmd) if isinstance(cmd, str) else cmd
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(f"{path}: {where}.command: a command (list of strings) is required")
        opts["command"] = list(argv)
    if kind == "mqtt" and opts["qos"] not in (0, 1, 2):
        raise ConfigError(f"{path}: {where}.qos: must be 0, 1 or 2, got {opts['qos']}")
    if kind == "jsonl":
        opts["path"] = _resolve(path, opts["path"])
    events = v["events"]
    if events is None and kind == "command":
        events = list(ACTION_EVENTS)
    if events is not None and not all(isinstance(e, str) for e in events):
        raise ConfigError(f"{path}: {where}.events: a list of event kinds")
    silenced = v["silenced"] if v["silenced"] is not None else kind == "jsonl"
    return SinkConfig(name=name, type=kind, events=tuple(events) if events is not None else None, silenced=silenced,
                      retry_seconds=float(v["retry_seconds"]), retry_max_seconds=float(v["retry_max_seconds"]),
                      options=opts)


def _resolve(path: Path, p: str) -> Path:
    q = Path(p).expanduser()
    # Absolute: the service's events name evidence files that other processes (the dashboard) open.
    return q if q.is_absolute() else (path.resolve().parent / q)


def _machine(path: Path, name: str, table, defaults: dict, sinks: dict) -> MachineConfig:
    where = f"machines.{name}"
    v = _check_table(path, where, table, _MACHINE_KEYS)
    v = {**v, **{k: table.get(k, defaults[k]) for k in _POLICY_KEYS}}
    _nonneg(path, where, v, "speed", "clip_fraction")
    if not v["model"]:
        raise ConfigError(f"{path}: {where}.model: required (a model directory made by `machine-monitor train`)")
    model = _resolve(path, v["model"])
    if not (model / "model.json").is_file():
        raise ConfigError(f"{path}: {where}.model: {model} is not a model directory (no model.json)")
    if v["input"] is not None and v["device"] is not None:
        raise ConfigError(f"{path}: {where}: give either input (a file to replay) or device, not both")
    inp = None
    if v["input"] is not None:
        inp = _resolve(path, v["input"])
        if not inp.is_file():
            raise ConfigError(f"{path}: {where}.input: {inp}: no such file")
    if v["channel"] is not None and v["channel"] < 0:
        raise ConfigError(f"{path}: {where}.channel: must be >= 0 (0-based), got {v['channel']}")
    names = v["sinks"] if v["sinks"] is not None else list(sinks)
    for s in names:
        if s not in sinks:
            raise ConfigError(f"{path}: {where}.sinks: no sink named {s!r} (defined: {', '.join(sinks) or 'none'})")
    try:
        policy = LifecyclePolicy(k=v["k"], n=v["n"], quiet_seconds=float(v["quiet_seconds"]),
                                 margin=0.1 if v["margin"] is None else float(v["margin"]),
                                 hysteresis=float(v["hysteresis"]), repeat_seconds=float(v["repeat_seconds"]))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {where}: {exc}") from None
    for key in ("window_seconds", "hop_seconds", "samplerate", "false_alarms_per_day"):
        if v[key] is not None and v[key] <= 0:
            raise ConfigError(f"{path}: {where}.{key}: must be > 0, got {v[key]!r}")
    if not 0 < v["clip_level"] <= 1:
        raise ConfigError(f"{path}: {where}.clip_level: must be in (0, 1], got {v['clip_level']!r}")
    device = v["device"]
    if device == "default":
        device = None
    return MachineConfig(name=name, model=model, device=device if inp is None else None, channel=v["channel"],
                         samplerate=v["samplerate"], input=inp, speed=float(v["speed"]), sinks=tuple(names),
                         policy=policy, margin=v["margin"], false_alarms_per_day=v["false_alarms_per_day"],
                         window_seconds=v["window_seconds"], hop_seconds=float(v["hop_seconds"]),
                         clip_level=float(v["clip_level"]), clip_fraction=float(v["clip_fraction"]),
                         stopped_below_dbfs=v["stopped_below_dbfs"])


def parse_config(text: str, path: str | Path = "machines.toml") -> ServiceConfig:
    """Validate the TOML ``text`` (read from ``path``, which relative paths are resolved against)."""
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for key in doc:
        if key not in _TOP:
            raise ConfigError(f"{path}: {key}: unknown table (known: {', '.join(_TOP)})")
    svc = _check_table(path, "service", doc.get("service", {}), _SERVICE_KEYS)
    _nonneg(path, "service", svc, "heartbeat_seconds", "retention_days", "status_seconds")
    for key in ("device_retry_seconds", "device_retry_max_seconds"):
        if not svc[key] > 0:
            raise ConfigError(f"{path}: service.{key}: must be > 0, got {svc[key]!r}")
    if svc["max_events"] < 1000:
        raise ConfigError(f"{path}: service.max_events: at least 1000, got {svc['max_events']}")
    defaults = _check_table(path, "defaults", doc.get("defaults", {}), _POLICY_KEYS)
    sinks_t = doc.get("sinks", {})
    if not isinstance(sinks_t, dict):
        raise ConfigError(f"{path}: sinks: must be a table of named sinks ([sinks.NAME])")
    sinks = {name: _sink(path, name, t) for name, t in sinks_t.items()}
    machines_t = doc.get("machines")
    if not machines_t or not isinstance(machines_t, dict):
        raise ConfigError(f"{path}: machines: at least one [machines.NAME] table is required")
    machines = []
    for name, table in machines_t.items():
        if not name or any(c in name for c in "/+#\\ ") or name != name.strip():
            raise ConfigError(f"{path}: machines.{name!r}: a machine name may not contain spaces, '/', '+' or '#'")
        machines.append(_machine(path, name, table, defaults, sinks))
    _check_channels(path, machines)
    prom = _http(path, "prometheus", doc.get("prometheus"), DEFAULT_PROMETHEUS_PORT)
    dash = _http(path, "dashboard", doc.get("dashboard"), DEFAULT_DASHBOARD_PORT)
    if prom and dash and prom.enabled and dash.enabled and prom.port == dash.port and prom.port:
        raise ConfigError(f"{path}: dashboard.port: {dash.port} is also prometheus.port")
    return ServiceConfig(path=path, store=_resolve(path, svc["store"]),
                         evidence_dir=_resolve(path, svc["evidence_dir"]),
                         heartbeat_seconds=float(svc["heartbeat_seconds"]),
                         retention_days=float(svc["retention_days"]), max_events=int(svc["max_events"]),
                         status_seconds=float(svc["status_seconds"]),
                         device_retry_seconds=float(svc["device_retry_seconds"]),
                         device_retry_max_seconds=float(svc["device_retry_max_seconds"]),
                         sinks=sinks, machines=tuple(machines),
                         prometheus=prom, dashboard=dash)


def _check_channels(path: Path, machines: list[MachineConfig]) -> None:
    """Two machines may share a device only on distinct, explicit channels."""
    seen: dict[str, MachineConfig] = {}
    for m in machines:
        if m.input is not None:
            continue
        key = str(m.device).lower() if m.device is not None else "default"
        for other in [o for k, o in seen.items() if k.split("\0")[0] == key]:
            if m.channel is None or other.channel is None or m.channel == other.channel:
                ch = "all channels" if m.channel is None or other.channel is None else f"channel {m.channel}"
                raise ConfigError(f"{path}: machines.{m.name}.channel: machines {other.name} and {m.name} both "
                                  f"listen to {ch} of device {m.device or 'default'!s}")
        seen[f"{key}\0{m.name}"] = m


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate ``machines.toml``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the service configuration ({exc.strerror or exc})") from None
    return parse_config(text, path)
