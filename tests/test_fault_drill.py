"""Fault drill: nothing lost, nothing repeated, whatever breaks.

Two machines replay recurring faults (alerts, repeats, ends, heartbeats: a steady stream of
events). During the drill the webhook receiver is down for the first two runs of the service,
the MQTT broker is restarted under the running service, and the service is killed with SIGKILL
twice in the middle of an alert and started again. At the end every sink must hold every event
the store holds: counted per sink as produced vs delivered, 0 lost, 0 duplicated, in order.

(The issue's drill keeps the receiver down for 2 minutes of alerts; here the service runs on
fast clocks, replays at 4x and repeats every 0.3 s, so a few seconds carry dozens of events.)
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf

from machine_monitor.service.store import EventStore
from tests.conftest import SR
from tests.test_service_sinks import Mosquitto, Receiver, Subscriber, machine_audio, tiny_model, wait_for  # noqa: F401

pytestmark = pytest.mark.slow


def start(conf, cwd):
    return subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "serve", str(conf)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def firing_alert(store: EventStore, after_id: int) -> dict | None:
    """An alert newer than ``after_id`` that has not ended yet."""
    for m in ("a", "b"):
        open_alert = store.open_alert(m)
        if open_alert is not None and open_alert["id"] > after_id:
            return open_alert
    return None


def kill9(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def test_fault_drill_loses_and_repeats_nothing(tiny_model, tmp_path):  # noqa: F811
    pattern = [("n", 2), ("a", 3), ("n", 2), ("a", 2), ("n", 1.5)]
    for i, m in enumerate(("a", "b")):
        sf.write(tmp_path / f"{m}.wav", machine_audio(pattern, seed=100 + 10 * i), SR)
    rx = Receiver()  # down
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port, client_id="drill-sub")
    conf = tmp_path / "machines.toml"
    conf.write_text(f"""
[service]
store = "events.db"
heartbeat_seconds = 0.5

[defaults]
margin = 0.1  # the tiny model's live calibration rests on 12 s of audio: use its clip threshold
quiet_seconds = 1
repeat_seconds = 0.3

[sinks.log]
type = "jsonl"
path = "alerts.jsonl"

[sinks.hook]
type = "webhook"
url = "{rx.url}"
retry_seconds = 0.1
retry_max_seconds = 0.5

[sinks.broker]
type = "mqtt"
port = {broker.port}
client_id = "drill-service"
timeout = 2
retry_seconds = 0.1
retry_max_seconds = 0.5

[machines.a]
model = "{tiny_model}"
input = "a.wav"
speed = 4

[machines.b]
model = "{tiny_model}"
input = "b.wav"
speed = 4
""")
    store = EventStore(tmp_path / "events.db")
    procs = []
    left_open = 0
    try:
        # Run 1: killed mid-alert; the receiver is down throughout.
        procs.append(start(conf, tmp_path))
        first = wait_for(lambda: firing_alert(store, 0), 40, "an alert in run 1", interval=0.02)
        time.sleep(0.1)
        kill9(procs[-1])
        left_open += sum(store.open_alert(m) is not None for m in ("a", "b"))
        # Run 2: the broker restarts under it, then it is killed mid-alert again.
        procs.append(start(conf, tmp_path))
        wait_for(lambda: store.events(since_id=first["id"], kinds=["service_started"]), 30, "run 2")
        broker.stop()
        time.sleep(0.5)
        broker.start()
        wait_for(lambda: firing_alert(store, first["id"]), 40, "an alert in run 2", interval=0.02)
        time.sleep(0.1)
        kill9(procs[-1])
        left_open += sum(store.open_alert(m) is not None for m in ("a", "b"))
        # Run 3: the receiver is back; the replays run to their end and the service exits by itself.
        rx.start()
        procs.append(start(conf, tmp_path))
        out, err = procs[-1].communicate(timeout=60)
        assert procs[-1].returncode == 1, err  # inputs ended, alerts raised
        assert "Traceback" not in err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        rx.stop()
    try:
        produced = [e["id"] for e in store.events(limit=None)]
        kinds = collections.Counter(e["event"] for e in store.events(limit=None))
        wait_for(lambda: len(sub.event_ids()) >= len(produced), 10, "MQTT deliveries")
        delivered = {
            "jsonl": [json.loads(x)["id"] for x in (tmp_path / "alerts.jsonl").read_text().splitlines()],
            "webhook": list(rx.received),
            "mqtt": sub.event_ids(),
        }
        counts = {name: {"produced": len(produced), "delivered": len(set(got)),
                         "lost": len(set(produced) - set(got)), "duplicated": len(got) - len(set(got))}
                  for name, got in delivered.items()}
        print(f"\nfault drill: {len(produced)} events ({dict(kinds)}); {json.dumps(counts)}")
        (tmp_path / "drill.json").write_text(json.dumps({"kinds": kinds, "counts": counts}))
        assert kinds["service_started"] == 3 and kinds["alert"] >= 4 and kinds["alert_repeat"] >= 4
        # Both killed runs left alerts open; the next run closed them.
        assert kinds["alert_end"] == kinds["alert"] and left_open >= 2
        assert sum(e.get("reason") == "monitor restarted" for e in store.events(kinds=["alert_end"])) == left_open
        for name, got in delivered.items():
            assert got == produced, (name, counts[name])  # every event, once, in order
    finally:
        sub.close()
        broker.stop()
