"""`machine-monitor serve` end to end, as on a factory PC: two machines replaying files, two listening
to the two channels of one interface (a stereo PulseAudio null sink: the real PortAudio path, one
stream shared by both machines), one whose device does not exist; events
checked in the store and in every sink (JSONL, webhook receiver, Mosquitto, Prometheus scraped over
HTTP); `events`, `ack` and `silence` acting on the running service; SIGHUP reload; SIGTERM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.service.store import EventStore
from tests.conftest import SR
from tests.test_live_pulse import SINK, SINK_ARGS, _pactl, pulse  # noqa: F401 - fixture
from tests.test_service_sinks import (
    Mosquitto,
    Receiver,
    Subscriber,
    free_port,
    machine_audio,
    tiny_model,  # noqa: F401 - fixture
    wait_for,
)

pytestmark = [pytest.mark.live, pytest.mark.slow]


def cli(*args, env=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "machine_monitor.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def machine_table(name, model, **kw) -> str:
    lines = [f"[machines.{name}]", f'model = "{model}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"


def config_text(tmp_path, model, *, hook_url, mqtt_port, prom_port, dash_port, machines: str) -> str:
    return f"""
[service]
store = "events.db"
heartbeat_seconds = 2

[defaults]
margin = 0.1  # the tiny model's live calibration rests on 12 s of audio: use its clip threshold
quiet_seconds = 1.5
repeat_seconds = 0.6

[sinks.log]
type = "jsonl"
path = "alerts.jsonl"

[sinks.hook]
type = "webhook"
url = "{hook_url}"
retry_seconds = 0.2
retry_max_seconds = 1

[sinks.broker]
type = "mqtt"
port = {mqtt_port}
client_id = "serve-test"

[prometheus]
port = {prom_port}

[dashboard]
port = {dash_port}
token = "test-token"

{machines}"""


def test_serve_several_machines_to_every_sink_with_ack_silence_reload(pulse, tiny_model, tmp_path):  # noqa: F811
    # "a" turns anomalous after 3 s, "b" stays normal; on the interface, the left channel's machine turns
    # anomalous after 9 s, the right one's stays normal.
    sf.write(tmp_path / "a.wav", machine_audio([("n", 3), ("a", 3), ("n", 6)], seed=10), SR)
    sf.write(tmp_path / "b.wav", machine_audio([("n", 12)], seed=20), SR)
    sf.write(tmp_path / "c.wav", machine_audio([("n", 1), ("a", 2), ("n", 1)], seed=40), SR)
    stereo = np.stack([machine_audio([("n", 9), ("a", 5), ("n", 10)], seed=30),
                       machine_audio([("n", 24)], seed=50)], axis=1)
    sf.write(tmp_path / "interface.wav", stereo, SR, subtype="PCM_16")
    module = _pactl(pulse, "load-module", "module-null-sink", "sink_name=mm_stereo", "rate=16000",
                    "channels=2").strip()
    env = {**pulse, "PULSE_SOURCE": "mm_stereo.monitor"}
    rx = Receiver().start()
    broker = Mosquitto(tmp_path).start()
    sub = Subscriber(broker.port, client_id="serve-sub")
    prom, dash = free_port(), free_port()
    machines = (machine_table("a", tiny_model, input="a.wav", speed=2)
                + machine_table("b", tiny_model, input="b.wav", speed=2)
                + machine_table("left", tiny_model, device="pulse", samplerate=16000, channel=0)
                + machine_table("right", tiny_model, device="pulse", samplerate=16000, channel=1)
                + machine_table("ghost", tiny_model, device="no-such-microphone"))
    text = config_text(tmp_path, tiny_model, hook_url=rx.url, mqtt_port=broker.port, prom_port=prom,
                       dash_port=dash, machines=machines)
    conf = tmp_path / "machines.toml"
    conf.write_text(text)
    # Planned maintenance on the microphone's machine, set before the service starts.
    store = EventStore(tmp_path / "events.db")
    res = cli("silence", "-c", str(conf), "left", "--for", "10m", "--reason", "test", "--who", "tester")
    assert res.returncode == 0 and "silence 1: left until" in res.stdout, res.stderr
    # Playing first: the service never hears the idle sink.
    player = subprocess.Popen(["paplay", "--device=mm_stereo", str(tmp_path / "interface.wav")], env=pulse,
                              stderr=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "serve", str(conf)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        def alert_of(machine):
            return store.events(machine=machine, kinds=["alert"])

        alert = wait_for(lambda: alert_of("a"), 40, "machine a's alert", interval=0.1)[0]
        # Acknowledge it from the command line while it fires: its repeats stop.
        wait_for(lambda: store.events(machine="a", kinds=["alert_repeat"]), 5, "a repeat")
        res = cli("ack", "--store", str(tmp_path / "events.db"), str(alert["id"]), "--who", "anna")
        assert res.returncode == 0 and "acknowledged by anna" in res.stdout, res.stderr
        acked_at = time.time()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{prom}/metrics", timeout=5).read().decode()
        assert 'machine_monitor_state{machine="ghost",state="device_lost"} 1.0' in metrics
        assert 'machine_monitor_score{machine="b"}' in metrics and 'machine_monitor_up{machine="b"} 1.0' in metrics
        # The dashboard runs inside the service, on the configured port.
        page = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/state", timeout=10).read())
        assert "ghost" in json.dumps(page) and "device_lost" in json.dumps(page)
        # Reload with one machine more (SIGHUP): the others keep running.
        conf.write_text(text + machine_table("c", tiny_model, input="c.wav", speed=2))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: alert_of("c"), 20, "the reloaded machine's alert")
        wait_for(lambda: alert_of("left"), 30, "the left channel's alert")
        wait_for(lambda: store.events(machine="a", kinds=["alert_end"]), 20, "a's alert to end")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        player.terminate()
        if proc.poll() is None:
            proc.kill()
        rx.stop()
        _pactl(pulse, "unload-module", module, check=False)
    try:
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        evs = store.events(limit=None)
        kinds = {m: [e["event"] for e in evs if e["machine"] == m] for m in ("a", "b", "c", "left", "right", "ghost")}
        assert kinds["a"][0] == "alert" and kinds["a"][-1] == "alert_end" and "acknowledged" in kinds["a"]
        assert not [e for e in evs if e["event"] == "alert_repeat" and e["epoch"] > acked_at + 1.0
                    and e.get("alert_id") == alert["id"]]
        assert kinds["b"] == [] and kinds["right"] == []  # normal sound: not one event
        assert err.count("listening on") == 1 and "2 channel(s)" in err, err  # one stream for both channels
        assert kinds["c"][0] == "alert"
        assert kinds["ghost"][:1] == ["device_lost"]
        left_alert = next(e for e in evs if e["machine"] == "left" and e["event"] == "alert")
        assert left_alert["silenced"] is True
        assert {"service_started", "config_reloaded", "heartbeat", "service_stopped"} <= {e["event"] for e in evs}
        assert sf.info(alert["evidence"]).duration >= 1.0  # the audio that opened the alert
        # Every sink got every event it takes, once, in order.
        ids = [e["id"] for e in evs if e["id"] > 1]  # the silence (id 1) predates the sinks
        notified = [e["id"] for e in evs if e["id"] > 1 and not e.get("silenced")]
        logged = [json.loads(x)["id"] for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        assert logged == ids
        assert rx.received == notified
        wait_for(lambda: sub.event_ids() == notified, 10, "MQTT events")
        assert json.loads(sub.last("machine-monitor/a/state"))["state"] == "normal"
        assert sub.last("machine-monitor/status") == "offline"  # said goodbye on SIGTERM
        # `events` reads the store.
        res = cli("events", "-c", str(conf), "--machine", "a", "--kind", "alert", "--format", "jsonl")
        assert res.returncode == 0 and [json.loads(x)["id"] for x in res.stdout.splitlines()] == [alert["id"]]
        res = cli("events", "--store", str(tmp_path / "events.db"), "--since", "1h", "--limit", "0")
        assert res.returncode == 0 and f"{len(evs)} event(s)" in res.stderr and "a: alert #1" in res.stdout
    finally:
        sub.close()
        broker.stop()


def test_an_interface_that_vanishes_is_device_lost_for_its_machines_only(pulse, tiny_model, tmp_path):  # noqa: F811
    sf.write(tmp_path / "a.wav", machine_audio([("n", 6), ("a", 3), ("n", 12)], seed=60), SR)
    sf.write(tmp_path / "interface.wav", np.stack([machine_audio([("n", 40)], seed=61),
                                                   machine_audio([("n", 40)], seed=62)], axis=1), SR,
             subtype="PCM_16")
    load = ("load-module", "module-null-sink", "sink_name=mm_lost", "rate=16000", "channels=2")
    module = _pactl(pulse, *load).strip()
    conf = tmp_path / "machines.toml"
    conf.write_text("""
[service]
store = "events.db"
heartbeat_seconds = 0
device_retry_max_seconds = 1

[defaults]
margin = 0.1  # the tiny model's live calibration rests on 12 s of audio: use its clip threshold
quiet_seconds = 1

""" + machine_table("a", tiny_model, input="a.wav") + machine_table("left", tiny_model, device="pulse",
                                                                      samplerate=16000, channel=0)
                    + machine_table("right", tiny_model, device="pulse", samplerate=16000, channel=1))
    store = EventStore(tmp_path / "events.db")
    players = [subprocess.Popen(["paplay", "--device=mm_lost", str(tmp_path / "interface.wav")], env=pulse)]
    proc = subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "-v", "serve", str(conf)],
                            env={**pulse, "PULSE_SOURCE": "mm_lost.monitor"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_for(lambda: store.events(kinds=["service_started"]), 30, "the service")
        time.sleep(1.5)
        # The interface is unplugged. (The fixture's sink goes too: PulseAudio would move the orphaned
        # stream to it, and the machines would hear silence instead of losing their device.)
        fixture_sink = next(line.split()[0] for line in _pactl(pulse, "list", "short", "modules").splitlines()
                            if "sink_name=mm_sink " in line + " ")
        _pactl(pulse, "unload-module", fixture_sink)
        _pactl(pulse, "unload-module", module)
        players[0].terminate()
        lost = wait_for(lambda: {e["machine"] for e in store.events(kinds=["device_lost"])} >= {"left", "right"}
                        and store.events(kinds=["device_lost"]), 20, f"device_lost ({store.events()})")
        # The replayed machine goes on meanwhile: its fault (at 6 s) is raised while the interface is gone.
        wait_for(lambda: store.events(machine="a", kinds=["alert"]), 20, "machine a's alert")
        assert not store.events(kinds=["device_restored"], since_id=lost[-1]["id"])
        _pactl(pulse, "load-module", "module-null-sink", *SINK_ARGS)
        module = _pactl(pulse, *load).strip()  # plugged back in
        players.append(subprocess.Popen(["paplay", "--device=mm_lost", str(tmp_path / "interface.wav")],
                                        env=pulse))
        wait_for(lambda: {e["machine"] for e in store.events(kinds=["device_restored"],
                                                             since_id=lost[-1]["id"])} >= {"left", "right"},
                 45, "device_restored")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        for p in players:
            p.terminate()
        if proc.poll() is None:
            proc.kill()
        _pactl(pulse, "unload-module", module, check=False)
        if SINK not in _pactl(pulse, "list", "short", "sinks", check=False):  # leave the fixture's sink in place
            _pactl(pulse, "load-module", "module-null-sink", *SINK_ARGS)
    assert proc.returncode == 130 and "Traceback" not in err, err
    evs = store.events(limit=None)
    assert [e["event"] for e in evs if e["machine"] == "a"][:1] == ["alert"]
    for m in ("left", "right"):
        kinds = [e["event"] for e in evs if e["machine"] == m]
        assert kinds.count("device_lost") == 1 and "device_restored" in kinds and "alert" not in kinds, kinds
