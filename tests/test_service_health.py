"""A machine's health states through the service's own loop (in-process, replay as fast as possible):
clipping, digital silence, a stopped machine; each raised once and cleared once. And a model
re-calibrated in place while the service runs: the next reload (SIGHUP) picks it up.

Silent and stopped windows are not scored (they say nothing about the machine's condition). Clipped
windows are: a fault loud enough to clip must still raise its alert; the clipping event tells the
engineer the input gain is wrong.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from machine_monitor.audio.sources import ArraySource
from machine_monitor.detectors.registry import load_detector
from machine_monitor.service.config import parse_config
from machine_monitor.service.serve import Service
from tests.conftest import SR, hum
from tests.test_service_sinks import tiny_model  # noqa: F401 - fixture


def service_config(tmp_path, models: dict, defaults: str = ""):
    """machines.toml in ``tmp_path`` (its store there, no heartbeat), one machine per ``{name: model}``
    on a device that does not exist (the tests give each a replay instead), parsed."""
    machines = "".join(f'[machines.{n}]\nmodel = "{m}"\ndevice = "no-such-device-{n}"\n\n' for n, m in models.items())
    conf = tmp_path / "machines.toml"
    conf.write_text(f'[service]\nstore = "events.db"\nheartbeat_seconds = 0\n\n[defaults]\n{defaults}\n{machines}')
    return parse_config(conf.read_text(), conf)


def test_clipping_silence_and_a_stopped_machine_are_health_events_not_alerts(tmp_path, tiny_model):  # noqa: F811
    clipped = hum(4, seed=1) * 12  # the same machine, an input gain far too high: it hits full scale
    parts = [hum(4, seed=0), np.clip(clipped, -1, 1), hum(4, seed=2), np.zeros(SR * 2, np.float32),
             hum(4, seed=3), hum(4, seed=4) * 0.003, hum(4, seed=5)]
    y = np.concatenate(parts).astype(np.float32)
    cfg = service_config(tmp_path, {"a": tiny_model},
                         defaults="margin = 0.1\nquiet_seconds = 1\nstopped_below_dbfs = -50")
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


class _Replays(dict):
    """A fresh real-time replay of normal hum whenever a machine (re)starts."""

    def get(self, name, default=None):
        return ArraySource(hum(60, seed=len(name)), speed=1, name=f"replay of {name}")


def test_a_model_re_saved_in_place_is_reloaded_and_the_other_machines_keep_running(tmp_path, tiny_model):  # noqa: F811
    # As after `machine-monitor threshold -m a-model recent/` then `systemctl reload machine-monitor`.
    models = {n: shutil.copytree(tiny_model, tmp_path / f"{n}-model") for n in ("a", "b")}
    service = Service(service_config(tmp_path, models, defaults="margin = 0.1"), sources=_Replays()).start()
    try:
        a, b = service.runners["a"], service.runners["b"]
        det = load_detector(models["a"])
        new = 2 * det.threshold_value_
        det.set_threshold(scores=[new], method="percentile", percentile=100).save(models["a"])
        assert a.lifecycle.level != pytest.approx(new * 1.1)  # running on the model it loaded

        service.reload()
        assert service.runners["b"] is b  # untouched: same section, same model
        assert service.runners["a"] is not a and service.runners["a"].lifecycle.level == pytest.approx(new * 1.1)
        reloaded = service.store.events(kinds=["config_reloaded"], limit=None)
        assert reloaded[-1]["models_reloaded"] == ["a"]

        service.reload()  # nothing changed since: nothing restarts
        assert service.runners["a"] is not a and service.store.events(kinds=["config_reloaded"])[-1][
            "models_reloaded"] == []
        a2 = service.runners["a"]
        service.reload()
        assert service.runners["a"] is a2
    finally:
        service.stop()
        service.shutdown()


def test_an_event_the_store_cannot_take_waits_and_is_stored_once_it_can(tmp_path, tiny_model, monkeypatch, caplog):  # noqa: F811
    # Disk full for a moment: the alert must not be dropped, nor the machine's monitoring end.
    import machine_monitor.service.serve as serve
    from machine_monitor.service.store import StoreError

    service = Service(service_config(tmp_path, {"a": tiny_model}), detectors={"a": load_detector(tiny_model)})
    monkeypatch.setattr(serve, "STORE_RETRY_SECONDS", (0.01, 0.02))
    real, failures = service.store.append, []

    def full_disk_twice(event):
        if len(failures) < 2:
            failures.append(event["event"])
            raise StoreError(f"{service.store.path}: cannot write the {event['event']} event "
                             "(database or disk is full)")
        return real(event)

    monkeypatch.setattr(service.store, "append", full_disk_twice)
    stored = service.emit(None, {"event": "alert", "machine": "a", "episode": 1})
    assert failures == ["alert", "alert"] and [e["id"] for e in service.store.events()] == [stored["id"]]
    assert caplog.text.count("database or disk is full") == 1 and "writable again" in caplog.text

    failures.clear()
    service.stop()  # stopping while the store still refuses: the event is lost, loudly
    with pytest.raises(StoreError):
        service.emit(None, {"event": "alert_end", "machine": "a", "episode": 1})
    assert "service stopping: the alert_end event is lost" in caplog.text
