"""Sinks against real receivers on loopback: an HTTP receiver that goes down and comes back,
a Mosquitto broker started here, the Prometheus endpoint scraped over HTTP, a command, a JSONL file.

Also the shared test infrastructure of the service tests (imported by test_service_serve.py and
test_fault_drill.py): free ports, the receiver, the broker, an MQTT subscriber, a tiny model.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from machine_monitor.service.sinks import DeliveryWorker
from machine_monitor.service.sinks.command import CommandSink
from machine_monitor.service.sinks.jsonl import JsonlSink
from machine_monitor.service.sinks.webhook import WebhookSink
from machine_monitor.service.store import EventStore
from tests.conftest import clicks, hum

# -- shared infrastructure ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Receiver:
    """A webhook receiver on a fixed loopback port that can be stopped and started again.

    ``received`` lists the event ids it answered 200 to (acknowledged), in arrival order.
    """

    def __init__(self, port: int | None = None, status: int = 200):
        self.port = port or free_port()
        self.status = status
        self.received: list[int] = []
        self.bodies: list[dict] = []
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert int(self.headers["X-Machine-Monitor-Event-Id"]) == body["id"]
                self.send_response(outer.status)
                self.end_headers()
                if outer.status == 200:
                    outer.received.append(body["id"])
                    outer.bodies.append(body)

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class Mosquitto:
    """A Mosquitto broker on a loopback port, with persistence so that it can be restarted."""

    def __init__(self, directory: Path):
        self.binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists()
                                                    else None)
        if self.binary is None:
            pytest.skip("MQTT test: mosquitto not installed (apt-get install mosquitto)")
        self.port = free_port()
        self.dir = directory
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {directory}/\nautosave_interval 1\n")
        self.proc = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def up():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                assert self.proc.poll() is None, "mosquitto exited"
                return False

        wait_for(up, 10, "mosquitto to listen")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # saves its persistence file
            self.proc.wait(10)
        self.proc = None


class Subscriber:
    """An MQTT client with a persistent session (QoS 1) collecting every message under ``topic``."""

    def __init__(self, port: int, topic: str = "machine-monitor/#", client_id: str = "test-subscriber"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.2, 1)

        def on_connect(client, userdata, flags, rc, props=None):
            client.subscribe(topic, qos=1)
            self.connected.set()

        def on_message(client, userdata, msg):
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10)

    def event_ids(self) -> list[int]:
        return [json.loads(p)["id"] for t, p, _ in self.messages if t.endswith("/event")]

    def last(self, topic: str):
        got = [p for t, p, _ in self.messages if t == topic]
        return got[-1].decode() if got else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def train_tiny_model(path: Path):
    """A small default-kind detector on a synthetic hum (about a second to train)."""
    from machine_monitor import Detector

    det = Detector(seed=0, folds=2, epochs=200).fit([hum(1.0, seed=s) for s in range(12)])
    det.save(path)
    return det


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "service-model"
    if not (path / "model.json").exists():
        train_tiny_model(path)
    return path


def machine_audio(pattern: list[tuple[str, float]], seed: int = 0) -> np.ndarray:
    """Hum and clicks ('n' normal, 'a' anomalous) in the given order and lengths (seconds)."""
    parts = [(hum if kind == "n" else clicks)(sec, seed=seed + i) for i, (kind, sec) in enumerate(pattern)]
    return np.concatenate(parts)


def fill(store: EventStore, n: int, machine: str = "pump") -> list[int]:
    kinds = ("alert", "alert_end")
    return [store.append({"event": kinds[i % 2], "machine": machine, "episode": i // 2 + 1})["id"] for i in range(n)]


# -- the sinks ------------------------------------------------------------------------------


def test_webhook_receiver_down_gets_every_event_afterwards_in_order(tmp_path):
    store = EventStore(tmp_path / "events.db")
    rx = Receiver()  # not started: the receiver is down
    worker = DeliveryWorker(store, "ops", WebhookSink(rx.url, timeout=1), retry_seconds=0.05,
                            retry_max_seconds=0.2).start()
    ids = fill(store, 6)
    time.sleep(0.4)
    assert rx.received == [] and worker.failures >= 1 and worker.cursor == 0
    rx.start()
    try:
        wait_for(lambda: len(rx.received) == 6, 10, "the backlog")
        ids += fill(store, 3)
        wait_for(lambda: len(rx.received) == 9, 10, "new events")
        rx.stop()  # down again mid-stream, then back on the same port
        ids += fill(store, 2)
        time.sleep(0.3)
        rx.start()
        wait_for(lambda: len(rx.received) == 11, 10, "events after the second outage")
    finally:
        worker.stop()
        rx.stop()
    assert rx.received == ids  # every event, once, in order
    assert store.cursor("ops") == ids[-1]


def test_webhook_refusal_is_not_retried_forever(tmp_path):
    store = EventStore(tmp_path / "events.db")
    rx = Receiver(status=400).start()
    try:
        worker = DeliveryWorker(store, "ops", WebhookSink(rx.url), retry_seconds=0.05).start()
        assert worker.cursor == 0
        ids = fill(store, 2)
        wait_for(lambda: worker.cursor == ids[-1], 5, "the cursor to pass refused events")
        worker.stop()
    finally:
        rx.stop()
    assert worker.failures == 2 and worker.delivered == 0


def test_jsonl_sink_resumes_without_repeating_after_a_crash(tmp_path):
    store = EventStore(tmp_path / "events.db")
    log = tmp_path / "alerts.jsonl"
    ids = fill(store, 4)
    sink = JsonlSink(log)
    sink.open()
    for ev in store.events()[:3]:
        sink.deliver(ev)
    store.advance("log", ids[1])  # "killed" after writing event 3, before its cursor commit
    with open(log, "a") as f:
        f.write('{"id": 99, "torn')  # and a torn line from a write cut short
    worker = DeliveryWorker(store, "log", JsonlSink(log)).start()
    worker.drain(5)
    worker.stop()
    lines = log.read_text().splitlines()
    good = [json.loads(x)["id"] for x in lines if x.endswith("}")]
    assert good == ids  # event 3 is not written twice; event 4 follows the torn line
    assert sum(1 for x in lines if x.startswith('{"id": 99')) == 1


def test_command_sink_gets_the_event_in_env_and_stdin_without_a_shell(tmp_path):
    out = tmp_path / "out.json"
    script = ("import json, os, sys; ev = json.loads(sys.stdin.readline()); "
              f"open({str(out)!r}, 'a').write(json.dumps([os.environ['MM_EVENT'], os.environ['MM_MACHINE'], "
              "ev['id'], sys.argv[1]]) + '\\n')")
    store = EventStore(tmp_path / "events.db")
    worker = DeliveryWorker(store, "pager", CommandSink([sys.executable, "-c", script, "$MM_MACHINE"]),
                            events=("alert",)).start()
    ids = fill(store, 2, machine="pump; rm -rf /")
    worker.drain(20)
    worker.stop()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [["alert", "pump; rm -rf /", ids[0], "$MM_MACHINE"]]  # only alerts; argv not expanded


@pytest.mark.slow
def test_mqtt_events_retained_state_last_will_and_discovery(tmp_path):
    from machine_monitor.service.sinks.mqtt import MqttSink

    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port, topic="#", client_id="sub-basic")
    store = EventStore(tmp_path / "events.db")
    sink = MqttSink(port=broker.port, client_id="mm-test", homeassistant=True, machines=["pump"], timeout=2)
    worker = DeliveryWorker(store, "broker", sink, retry_seconds=0.1, retry_max_seconds=0.5).start()
    try:
        ids = fill(store, 3)
        ack = store.ack(ids[2], "anna")
        assert worker.drain(10)
        wait_for(lambda: len(sub.event_ids()) == 4, 5, "events at the subscriber")
        assert sub.event_ids() == [*ids, ack["id"]]
        wait_for(lambda: sub.last("machine-monitor/status") == "online", 5, "online status")
        # The retained state follows its event (another topic, another publish): wait for it, as a receiver would.
        wait_for(lambda: json.loads(sub.last("machine-monitor/pump/state") or "{}").get("state") == "acknowledged",
                 5, "the acknowledged state")
        state = json.loads(sub.last("machine-monitor/pump/state"))
        assert state["state"] == "acknowledged" and state["id"] == ack["id"]
        config = json.loads(sub.last("homeassistant/sensor/machine_monitor_pump/config"))
        assert config["state_topic"] == "machine-monitor/pump/state"
        assert config["availability_topic"] == "machine-monitor/status"
        # A late subscriber still sees the retained state.
        late = Subscriber(broker.port, topic="machine-monitor/pump/state", client_id="late")
        wait_for(lambda: late.messages, 5, "the retained state")
        assert json.loads(late.messages[0][1])["state"] == "acknowledged" and late.messages[0][2]
        late.close()
        # The broker publishes the last will when the service's connection dies without a goodbye.
        sink._client._sock.close()  # noqa: SLF001 - what a killed process leaves behind
        sink._client.loop_stop()
        wait_for(lambda: sub.last("machine-monitor/status") == "offline", 60, "the last will")
    finally:
        worker._stop.set()
        sub.close()
        broker.stop()


def test_mqtt_restart_after_the_brokers_ack_but_before_the_cursor_moved_repeats_nothing(tmp_path):
    """``kill -9`` between the broker's PUBACK and the store's cursor commit: the restarted
    service delivers that event again from its cursor; the broker must not get it twice."""
    from machine_monitor.service.sinks.mqtt import MqttSink

    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port, client_id="sub-restart")
    store = EventStore(tmp_path / "events.db")
    ids = fill(store, 4)
    events = {e["id"]: e for e in store.events(limit=None)}
    try:
        first = MqttSink(port=broker.port, client_id="mm-restart", timeout=5)
        first.open()
        wait_for(lambda: first._client.is_connected(), 10, "the first connection")
        for i in ids[:3]:
            first.deliver(events[i])  # acknowledged by the broker; the cursor would move after this
        first._client._sock.close()  # noqa: SLF001 - killed before the cursor's commit
        first._client.loop_stop()
        again = MqttSink(port=broker.port, client_id="mm-restart", timeout=5)
        again.open()
        wait_for(lambda: again._client.is_connected(), 10, "the restarted connection")
        for i in ids[2:]:  # from the cursor: the last event again, then the new one
            again.deliver(events[i])
        wait_for(lambda: len(sub.event_ids()) >= 4, 5, "events at the subscriber")
        time.sleep(0.3)  # a second copy, if any, would arrive now
        assert sub.event_ids() == ids
        again.close()
    finally:
        sub.close()
        broker.stop()


def test_prometheus_endpoint_is_scraped_over_http(tmp_path):
    from machine_monitor.service.sinks.prometheus import start_metrics_server

    class FakeService:
        def metrics(self):
            snap = {"score": 3.5, "level": 2.0, "state": "firing", "episodes": 4, "windows": 120,
                    "dropped_blocks": 2, "overflows": 0, "hop_p99": 0.004, "up": True}
            return {"machines": {"pump3": snap, "fan1": {**snap, "score": None, "state": "signal_lost",
                                                         "up": False}},
                    "sinks": {"ops": 7}}

    server = start_metrics_server(FakeService(), "127.0.0.1", 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'machine_monitor_score{machine="pump3"} 3.5' in text
    assert 'machine_monitor_score{machine="fan1"} NaN' in text
    assert 'machine_monitor_threshold{machine="pump3"} 2.0' in text
    assert 'machine_monitor_state{machine="pump3",state="firing"} 1.0' in text
    assert 'machine_monitor_state{machine="pump3",state="normal"} 0.0' in text
    assert 'machine_monitor_alerts_total{machine="pump3"} 4.0' in text
    assert 'machine_monitor_dropped_blocks_total{machine="pump3"} 2.0' in text
    assert 'machine_monitor_up{machine="fan1"} 0.0' in text
    assert 'machine_monitor_sink_backlog{sink="ops"} 7.0' in text
