"""The dashboard over HTTP (a real uvicorn server on a free loopback port, raw requests): who may
do what, which files a request can reach, the live stream, the evidence of an alert.
The browser test (test_dashboard_browser.py) drives the page itself."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.dashboard import check_bind, create_app, start_dashboard
from machine_monitor.dashboard.app import STATIC_DIR, TEMPLATE, ScoreHistory
from machine_monitor.errors import ConfigError
from tests.conftest import SR
from tests.test_service_sinks import free_port, machine_audio, tiny_model, wait_for  # noqa: F401 - shared

TOKEN = "test-token-7f3a"


def write_config(tmp: Path, model: Path, *, dashboard: str = f'token = "{TOKEN}"') -> Path:
    wav = tmp / "pump.wav"
    sf.write(wav, machine_audio([("n", 60.0)]), SR)
    conf = tmp / "machines.toml"
    conf.write_text(f"""
[service]
store = "events.db"
evidence_dir = "evidence"
[dashboard]
{dashboard}
[machines.pump3]
model = "{model}"
input = "pump.wav"
[machines.fan1]
model = "{model}"
input = "pump.wav"
""")
    return conf


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):  # noqa: F811
    """The service replaying normal sound on two machines, one stored alert with its evidence WAV,
    and the dashboard served on a free port (the service's own start of it is switched off)."""
    from machine_monitor.service.config import load_config
    from machine_monitor.service.serve import Service, write_evidence

    tmp = tmp_path_factory.mktemp("dash")
    service = Service(load_config(write_config(tmp, tiny_model, dashboard=f'enabled = false\ntoken = "{TOKEN}"')))
    service.start()
    det = service.detectors["pump3"]
    now = time.time()
    wav = write_evidence(service.evidence_dir, "pump3", 1, now, machine_audio([("n", 1.0), ("a", 2.0)], seed=5), SR)
    alert = service.store.append({"event": "alert", "machine": "pump3", "epoch": now, "episode": 1,
                                  "threshold": det.threshold_value_ * 1.1, "peak_score": 30 * det.threshold_value_,
                                  "windows": "3/5", "duration": 2.0, "evidence": str(wav)})
    (tmp / "secret.wav").write_bytes(b"RIFF-SECRET-OUTSIDE-THE-EVIDENCE-FOLDER")
    (service.evidence_dir / "link.wav").symlink_to(tmp / "secret.wav")
    lines = []
    server = start_dashboard(service, port=0, announce=lines.append)
    yield {"server": server, "service": service, "alert": alert, "wav": wav, "tmp": tmp, "lines": lines,
           "port": int(server.url.rsplit(":", 1)[1].strip("/"))}
    server.stop()
    service.shutdown(drain_seconds=0)
    service.store.close()


def request(port: int, method: str, path: str, body: dict | None = None, headers: dict | None = None,
            timeout: float = 10.0):
    """One raw request: the path is sent exactly as given (no client-side clean-up of dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})} if data is not None else dict(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    out = resp.status, dict(resp.getheaders()), resp.read()
    conn.close()
    return out


def auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_binding_beyond_loopback_without_a_token_is_refused(served, tiny_model, tmp_path):  # noqa: F811
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(ConfigError, match=r"needs a token.*\[dashboard\]"):
            check_bind(host, None)
        check_bind(host, "some-token")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    with pytest.raises(ConfigError, match="0.0.0.0"):
        create_app(_without_token(served["service"]), bind="0.0.0.0", announce=False)
    app = create_app(_without_token(served["service"]), announce=False)  # loopback: a token is made
    assert app.state.token_generated and len(app.state.token) >= 20
    # The configuration file refuses it too, naming the key.
    from machine_monitor.service.config import load_config

    with pytest.raises(ConfigError, match="dashboard.token"):
        load_config(write_config(tmp_path, tiny_model, dashboard='bind = "0.0.0.0"'))


class _without_token:  # noqa: N801 - the served service with its [dashboard] token removed
    def __init__(self, service):
        import dataclasses

        self.store, self.machines = service.store, {}
        self.config = dataclasses.replace(service.config,
                                          dashboard=dataclasses.replace(service.config.dashboard, token=None))


def test_a_port_in_use_is_a_clear_error(served):
    with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{served['port']} \\(Address already in use"):
        start_dashboard(served["service"], port=served["port"], announce=lambda line: None, ready_timeout=5)


def test_reads_are_open_and_actions_need_the_token(served):
    port, store, alert = served["port"], served["service"].store, served["alert"]
    status, _, body = request(port, "GET", "/api/state")
    assert status == 200
    st = json.loads(body)
    assert [m["name"] for m in st["machines"]] == ["pump3", "fan1"]
    assert st["machines"][0]["last_alert"]["id"] == alert["id"]
    ack = f"/api/alerts/{alert['id']}/ack"
    for headers in ({}, auth("wrong"), auth(""), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        status, _, body = request(port, "POST", ack, {"who": "mallory"}, headers)
        assert status == 401 and b"token" in body
    assert store.acked(alert["id"]) is None
    status, _, body = request(port, "POST", ack, {}, auth())
    assert status == 400 and b"who" in body  # a name is recorded with every action
    status, _, body = request(port, "POST", ack, {"who": "anna", "comment": "bearing noise, checked"}, auth())
    assert status == 200, body
    got = store.acked(alert["id"])
    assert got["who"] == "anna" and got["comment"] == "bearing noise, checked" and time.time() - got["epoch"] < 60
    assert store.events(kinds=["acknowledged"])[-1]["alert_id"] == alert["id"]

    status, _, _ = request(port, "POST", "/api/silences", {"who": "bob", "machine": "fan1", "minutes": 90})
    assert status == 401 and store.active_silences() == []
    assert request(port, "POST", "/api/silences", {"who": "bob", "machine": "nope", "minutes": 9}, auth())[0] == 404
    assert request(port, "POST", "/api/silences", {"who": "bob", "machine": "fan1", "minutes": -5}, auth())[0] == 400
    status, _, body = request(port, "POST", "/api/silences",
                              {"who": "bob", "machine": "fan1", "minutes": 90, "reason": "belt change"}, auth())
    assert status == 200, body
    (s,) = store.active_silences()
    assert (s["machine"], s["who"], s["reason"]) == ("fan1", "bob", "belt change")
    assert s["until"] - time.time() == pytest.approx(90 * 60, abs=60)
    assert request(port, "POST", f"/api/silences/{s['id']}/end", {"who": "bob"})[0] == 401
    assert request(port, "POST", f"/api/silences/{s['id']}/end", {"who": "bob"}, auth())[0] == 200
    assert store.active_silences() == []
    assert served["lines"] and "token set in machines.toml" in served["lines"][0]


TRAVERSALS = [
    "/evidence/../secret.wav", "/evidence/%2e%2e/secret.wav", "/evidence/%2E%2E%2Fsecret.wav",
    "/evidence/..%2fsecret.wav", "/evidence/%252e%252e%252fsecret.wav", "/evidence/....//secret.wav",
    "/evidence/..%5csecret.wav", "/evidence/..\\secret.wav", "/evidence//etc/passwd", "/evidence/%2fetc%2fpasswd",
    "/evidence/link.wav", "/evidence/secret.wav%00.wav", "/evidence/./link.wav", "/evidence/x/../../secret.wav",
    "/evidence/../events.db", "/evidence/%2e%2e/machines.toml", "/static/../secret.wav",
    "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2f%2e%2e%2fsecret.wav",
    "/evidence/%c0%ae%c0%ae/secret.wav", "/api/alerts/..%2f..%2fsecret.wav/evidence.png",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_request_reaches_a_file_outside_the_evidence_folder(served, path):
    status, headers, body = request(served["port"], "GET", path)
    assert status in (400, 404), (path, status)
    assert b"SECRET" not in body and b"import" not in body and b"[service]" not in body and b"SQLite" not in body


def test_an_evidence_recording_is_served_whole_and_in_ranges(served):
    name = served["wav"].name
    status, headers, body = request(served["port"], "GET", f"/evidence/{name}")
    assert status == 200 and headers["content-type"] == "audio/wav"
    assert body == served["wav"].read_bytes()
    status, headers, part = request(served["port"], "GET", f"/evidence/{name}", headers={"Range": "bytes=0-99"})
    assert status == 206 and part == body[:100]  # the audio element seeks with ranges


def test_each_alert_lists_its_evidence_and_the_picture_is_drawn(served):
    port, alert = served["port"], served["alert"]
    status, _, body = request(port, "GET", "/api/alerts")
    (row,) = [a for a in json.loads(body) if a["id"] == alert["id"]]
    assert row["audio_url"] == f"/evidence/{served['wav'].name}" and row["machine"] == "pump3"
    status, headers, png = request(port, "GET", row["evidence_url"], timeout=60)
    assert status == 200 and headers["content-type"] == "image/png" and png[:4] == b"\x89PNG"
    status, _, body = request(port, "GET", row["summary_url"])
    summary = json.loads(body)["summary"]
    assert summary[0].startswith("Score ") and any(s.startswith("Windows above the threshold") for s in summary)
    assert request(port, "GET", "/api/alerts/99999/evidence.png")[0] == 404
    assert request(port, "GET", "/api/alerts/abc/evidence.png")[0] == 404


def test_the_page_and_every_asset_come_from_the_package(served):
    status, headers, page = request(served["port"], "GET", "/")
    assert status == 200
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self': no other script
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    text = page.decode()
    assert "<script>" not in text  # no inline script: the policy would block it
    assert "<title>machine-monitor: pump3, fan1</title>" in text
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    for asset in ("/static/uPlot.iife.min.js", "/static/uPlot.min.css", "/static/dashboard.js",
                  "/static/dashboard.css"):
        assert f'"{asset}"' in text
        status, headers, body = request(served["port"], "GET", asset)
        assert status == 200 and body == (STATIC_DIR / Path(asset).name).read_bytes()
    assert "fetch(\"http" not in (STATIC_DIR / "dashboard.js").read_text()
    assert (STATIC_DIR / "uPlot.LICENSE").read_text().startswith("The MIT License")
    assert TEMPLATE.is_file()


def test_the_live_stream_sends_state_then_new_events(served):
    store = served["service"].store
    conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=10)
    conn.request("GET", f"/api/stream?after={store.last_id()}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")

    def next_message() -> tuple[str, str]:
        kind = data = ""
        while True:
            line = resp.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and kind:
                return kind, data

    kind, data = next_message()
    assert kind == "state" and [m["name"] for m in json.loads(data)["machines"]] == ["pump3", "fan1"]
    new = store.append({"event": "signal_lost", "machine": "fan1", "reason": "cable pulled"})
    for _ in range(10):
        kind, data = next_message()
        if kind == "events":
            break
    assert kind == "events" and [e["id"] for e in json.loads(data)] == [new["id"]]
    conn.close()


def test_timelines_keep_every_window_of_the_hour_and_the_maximum_of_each_half_minute_of_the_day():
    h = ScoreHistory(bucket=30.0)
    now = 1_000_000.0
    pts = [(now - 7200 + 0.5 * i, float(i % 100)) for i in range(14400)]
    assert h.ingest("pump3", pts) == 14400
    assert h.ingest("pump3", pts[-10:]) == 0  # seen already
    assert h.ingest("pump3", [(now + 1, None), (now + 2, float("nan"))]) == 2
    hour = h.series("pump3", 3600, now=now + 2)
    assert len(hour["t"]) == 7196 + 2 and hour["score"][-2:] == [None, None]
    day = h.series("pump3", 86400, now=now + 2)
    assert len(day["t"]) == 241 and np.all(np.diff(day["t"]) == 30.0)
    assert max(s for s in day["score"] if s is not None) == 99.0
    assert h.since("pump3", now) == [(now + 1, None), (now + 2, None)]


def test_evidence_recorded_as_a_relative_path_or_a_bare_name_is_found(served):
    """The service records the path it wrote: relative to its working directory when evidence_dir
    is relative in machines.toml (serve started from the file's folder)."""
    import os

    store, wav = served["service"].store, served["wav"]
    rel = store.append({"event": "alert", "machine": "fan1", "episode": 7, "evidence": os.path.relpath(wav)})
    bare = store.append({"event": "alert", "machine": "fan1", "episode": 8, "evidence": wav.name})
    gone = store.append({"event": "alert", "machine": "fan1", "episode": 9, "evidence": str(wav) + ".missing"})
    rows = {a["id"]: a for a in json.loads(request(served["port"], "GET", "/api/alerts")[2])}
    assert rows[rel["id"]]["audio_url"] == rows[bare["id"]]["audio_url"] == f"/evidence/{wav.name}"
    assert rows[gone["id"]]["audio_url"] is None
    assert rows[gone["id"]]["evidence_note"] == "evidence recording no longer on disk"


def test_a_silenced_machine_says_so_in_the_overview(served):
    served["service"].silence("fan1", time.time() + 2.5, "carl", "belt change")  # over by itself

    def states():
        return {m["name"]: m["state"] for m in json.loads(request(served["port"], "GET", "/api/state")[2])["machines"]}

    got = wait_for(lambda: states()["fan1"] == "silenced" and states(), 3, "fan1 to show as silenced")
    assert got["pump3"] != "silenced"
    wait_for(lambda: states()["fan1"] != "silenced", 8, "the silence to end")


def test_score_timelines_of_the_hour_and_the_day_come_from_the_running_machines(served):
    def scores(path):
        status, _, body = request(served["port"], "GET", path)
        return status, json.loads(body)

    status, hour = wait_for(lambda: (s := scores("/api/machines/pump3/scores?range=hour"))[1]["t"] and s, 20,
                            "pump3's first scores")
    assert status == 200 and len(hour["t"]) == len(hour["score"]) and all(np.diff(hour["t"]) > 0)
    assert time.time() - hour["t"][-1] < 10 and all(s is None or s >= 0 for s in hour["score"])
    status, day = scores("/api/machines/pump3/scores?range=day")
    assert status == 200 and 0 < len(day["t"]) <= len(hour["t"]) and all(t % 30 == 0 for t in day["t"])
    assert scores("/api/machines/pump3/scores?range=week")[0] == 400
    assert scores("/api/machines/nope/scores")[0] == 404
