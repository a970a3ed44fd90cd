"""A machine's health states through the service's own loop (in-process, replay as fast as possible):
clipping, digital silence, a stopped machine; each raised once and cleared once.

Silent and stopped windows are not scored (they say nothing about the machine's condition). Clipped
windows are: a fault loud enough to clip must still raise its alert; the clipping event tells the
engineer the input gain is wrong.
"""

from __future__ import annotations

import numpy as np

from machine_monitor.audio.sources import ArraySource
from machine_monitor.detectors.registry import load_detector
from machine_monitor.service.config import parse_config
from machine_monitor.service.serve import Service
from tests.conftest import SR, hum
from tests.test_service_sinks import tiny_model  # noqa: F401 - fixture


def test_clipping_silence_and_a_stopped_machine_are_health_events_not_alerts(tmp_path, tiny_model):  # noqa: F811
    clipped = hum(4, seed=1) * 12  # the same machine, an input gain far too high: it hits full scale
    parts = [hum(4, seed=0), np.clip(clipped, -1, 1), hum(4, seed=2), np.zeros(SR * 2, np.float32),
             hum(4, seed=3), hum(4, seed=4) * 0.003, hum(4, seed=5)]
    y = np.concatenate(parts).astype(np.float32)
    conf = tmp_path / "machines.toml"
    conf.write_text(f"""
[service]
store = "events.db"
heartbeat_seconds = 0

[defaults]
margin = 0.1
quiet_seconds = 1
stopped_below_dbfs = -50

[machines.a]
model = "{tiny_model}"
device = "no-such-device"   # replaced by the replay below
""")
    cfg = parse_config(conf.read_text(), conf)
    service = Service(cfg, detectors={"a": load_detector(tiny_model)},
                      sources={"a": ArraySource(y, speed=0, name="replay")})
    service.run()
    evs = service.store.events(machine="a", limit=None)
    health = [e["event"] for e in evs if not e["event"].startswith("alert")]
    assert health == ["clipping", "clipping_cleared", "signal_lost", "signal_restored", "machine_stopped",
                      "machine_running"], health
    # Alerts, if any, belong to the clipped stretch only (4-8 s of audio, ended by the quiet period).
    assert all(4.0 <= e["stream_seconds"] <= 12.0 for e in evs if e["event"].startswith("alert")), evs
    windows = service.machine("a")["windows"]
    assert 0 < windows < len(y) / SR / 0.512  # silent and stopped windows were not scored
