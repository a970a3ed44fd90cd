"""machines.toml: validated up front, every mistake a one-line error naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from machine_monitor.errors import ConfigError
from machine_monitor.service.config import parse_config
from machine_monitor.service.serve import JournalFormatter, systemd_unit
from tests.test_service_sinks import tiny_model  # noqa: F401 - fixture

README = Path(__file__).resolve().parents[1] / "README.md"


def write(tmp_path: Path, model: Path, extra: str = "", machines: str | None = None) -> Path:
    (tmp_path / "replay.wav").write_bytes(b"")
    machines = machines if machines is not None else f"""
[machines.pump3]
model = "{model}"
device = "USB"
channel = 0

[machines.fan1]
model = "{model}"
device = "USB"
channel = 1
sinks = ["log"]
k = 2
"""
    path = tmp_path / "machines.toml"
    path.write_text(f"""
[service]
store = "var/events.db"
heartbeat_seconds = 60

[defaults]
quiet_seconds = 20
repeat_seconds = 600

[sinks.log]
type = "jsonl"
path = "alerts.jsonl"

[sinks.ops]
type = "webhook"
url = "http://127.0.0.1:9/hook"

[sinks.broker]
type = "mqtt"
port = 1884
homeassistant = true

[sinks.pager]
type = "command"
command = "notify-send 'machine alert'"

[prometheus]
port = 9108
{extra}
{machines}""")
    return path


def test_a_complete_configuration_is_read_with_defaults(tmp_path, tiny_model):  # noqa: F811
    cfg = parse_config(write(tmp_path, tiny_model).read_text(), tmp_path / "machines.toml")
    assert cfg.store == tmp_path / "var/events.db"  # relative to the file
    assert [m.name for m in cfg.machines] == ["pump3", "fan1"]
    pump, fan = cfg.machines
    assert pump.sinks == ("log", "ops", "broker", "pager") and fan.sinks == ("log",)
    assert pump.policy.quiet_seconds == 20 and pump.policy.k == 3 and fan.policy.k == 2
    assert pump.policy.repeat_seconds == 600 and pump.channel == 0 and pump.device == "USB"
    assert cfg.sinks["pager"].options["command"] == ["notify-send", "machine alert"]
    assert cfg.sinks["pager"].events[:2] == ("alert", "alert_repeat")  # commands: action events only
    assert cfg.sinks["log"].silenced and not cfg.sinks["ops"].silenced
    assert cfg.prometheus.port == 9108 and cfg.prometheus.bind == "127.0.0.1" and cfg.dashboard is None


@pytest.mark.parametrize("extra, machines, message", [
    ("", "[machines.pump3]\nmodle = 'x'\n", r"machines\.pump3\.modle: unknown key"),
    ("[service]\nstroe = 'x'\n", None, "not valid TOML"),  # a second [service] table
    ("[alerts]\n", None, r"alerts: unknown table"),
    ("", "[machines.pump3]\nmodel = 'nowhere'\ndevice = 1\n", r"machines\.pump3\.model: .*nowhere.* not a model"),
    ("", "[machines.pump3]\ndevice = 1\n", r"machines\.pump3\.model: required"),
    ("", "", r"machines: at least one"),
    ("[dashboard]\nbind = '0.0.0.0'\n", None, r"dashboard\.token: binding the dashboard to 0\.0\.0\.0"),
    ("[dashboard]\nport = 9108\n", None, r"dashboard\.port: 9108 is also prometheus\.port"),
    ("[sinks.x]\ntype = 'email'\n", None, r"sinks\.x\.type: must be one of"),
    ("[sinks.x]\ntype = 'webhook'\nurl = 'ftp://a'\n", None, r"sinks\.x\.url"),
    ("[sinks.x]\ntype = 'webhook'\nurl = 'http://a'\nretries = 3\n", None, r"sinks\.x\.retries: unknown key"),
])
def test_mistakes_are_one_line_errors_naming_the_key(tmp_path, tiny_model, extra, machines, message):  # noqa: F811
    path = write(tmp_path, tiny_model, extra, machines)
    with pytest.raises(ConfigError, match=message) as err:
        parse_config(path.read_text(), path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("table, message", [
    ("channel = 0\n[machines.b]\nmodel = '{m}'\ndevice = 'usb'\nchannel = 0",
     r"machines\.b\.channel: machines a and b both listen to channel 0 of device usb"),
    ("\n[machines.b]\nmodel = '{m}'\ndevice = 'USB'\nchannel = 1",
     r"machines\.b\.channel: .* all channels of device USB"),
    ("channel = 0\nk = 6\n", r"machines\.a: alert policy needs 1 <= k <= n"),
    ("channel = 0\nsinks = ['pagr']\n", r"machines\.a\.sinks: no sink named 'pagr'"),
    ("channel = 'left'\n", r"machines\.a\.channel: expected an integer, got 'left'"),
    ("input = 'gone.wav'\n", r"machines\.a: give either input"),
])
def test_two_machines_on_one_channel_and_bad_machine_values(tmp_path, tiny_model, table, message):  # noqa: F811
    machines = f"[machines.a]\nmodel = '{tiny_model}'\ndevice = 'USB'\n" + table.format(m=tiny_model) + "\n"
    path = write(tmp_path, tiny_model, machines=machines)
    with pytest.raises(ConfigError, match=message):
        parse_config(path.read_text(), path)


def test_the_readme_example_is_a_valid_configuration(tmp_path, tiny_model):  # noqa: F811
    text = README.read_text()
    section = text.split("## Running on a factory PC", 1)[1]
    example = section.split("```toml", 1)[1].split("```", 1)[0]
    models = tmp_path / "models"
    models.mkdir()
    for name in ("pump3", "fan1", "press"):
        (models / name).symlink_to(tiny_model)
    cfg = parse_config(example, tmp_path / "machines.toml")
    assert len(cfg.machines) >= 2 and {"webhook", "mqtt", "jsonl"} <= {s.type for s in cfg.sinks.values()}


def test_systemd_unit_restarts_on_failure_as_a_non_root_audio_user(tmp_path):
    unit = systemd_unit(tmp_path / "machines.toml", user="mm", exe="/opt/mm/bin/machine-monitor")
    assert f"ExecStart=/opt/mm/bin/machine-monitor serve {tmp_path / 'machines.toml'}" in unit
    for line in ("Restart=on-failure", "User=mm", "SupplementaryGroups=audio", "ExecReload=/bin/kill -HUP $MAINPID",
                 "SuccessExitStatus=130", "[Install]"):
        assert line in unit.splitlines()
    with pytest.raises(ConfigError, match="root"):
        systemd_unit(None, user="root")


def test_logs_carry_journald_priorities_under_systemd():
    import logging

    rec = logging.LogRecord("x", logging.WARNING, __file__, 1, "pump3: alert #1", None, None)
    assert JournalFormatter(journal=True).format(rec) == "<4>pump3: alert #1"
    assert "WARNING pump3: alert #1" in JournalFormatter(journal=False).format(rec)


def test_serve_check_validates_without_starting(tmp_path, tiny_model, capsys):  # noqa: F811
    from machine_monitor.cli import main

    good = write(tmp_path, tiny_model)
    assert main(["serve", "--check", str(good)]) == 0
    assert "valid: 2 machine(s) (pump3, fan1), 4 sink(s)" in capsys.readouterr().out
    assert not (tmp_path / "var").exists()  # nothing started, no store created
    bad = write(tmp_path, tiny_model, machines="[machines.pump3]\nmodle = 'x'\n")
    assert main(["serve", "--check", str(bad)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"machine-monitor: error: {bad}: machines.pump3.modle: unknown key (known: ")
    assert main(["serve", "--print-systemd-unit", str(good)]) == 0
    assert f"serve {good.resolve()}" in capsys.readouterr().out


def test_events_follow_prints_each_new_matching_event_once(tmp_path):
    import json
    import subprocess
    import sys
    import threading

    from machine_monitor.service.store import EventStore

    store = EventStore(tmp_path / "events.db")
    store.append({"event": "heartbeat"})
    proc = subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "events", "--store", str(store.path),
                             "--follow", "--kind", "alert", "--format", "jsonl"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    timer = threading.Timer(30, proc.kill)  # a hang fails the test instead of blocking it
    timer.start()
    try:
        ids = []
        for episode in (1, 2):
            store.append({"event": "heartbeat"})
            ids.append(store.append({"event": "alert", "machine": "pump", "episode": episode})["id"])
            got = json.loads(proc.stdout.readline())
            assert got["id"] == ids[-1] and got["event"] == "alert"
    finally:
        proc.terminate()
        proc.wait(10)
        timer.cancel()
