"""The alert lifecycle as a state machine on a fake clock, and the event store it writes to."""

from __future__ import annotations

import os
import sqlite3
import time

import numpy as np
import pytest

from machine_monitor.errors import ConfigError
from machine_monitor.service.lifecycle import LifecyclePolicy, MachineLifecycle
from machine_monitor.service.store import EventStore

HOP = 0.5


class Clock:
    """Feeds windows one hop apart; returns every event, bound to store-like ids."""

    def __init__(self, lc: MachineLifecycle, t0: float = 1000.0):
        self.lc, self.t, self.pos, self.next_id = lc, t0, 0.0, 1
        self.events: list[dict] = []

    def feed(self, *scores) -> list[str]:
        kinds = []
        for s in scores:
            self.t += HOP
            self.pos += HOP
            for ev in [*self.lc.window(self.t, s, start=self.pos - 1.0, stop=self.pos), *self.lc.tick(self.t)]:
                ev["id"] = self.next_id
                self.next_id += 1
                self.lc.bind(ev)
                self.events.append(ev)
                kinds.append(ev["event"])
        return kinds

    def wait(self, seconds: float) -> list[str]:
        self.t += seconds
        evs = self.lc.tick(self.t)
        self.events += evs
        return [e["event"] for e in evs]


def lifecycle(**kw) -> MachineLifecycle:
    # threshold 1.0, margin 0.1: raise level 1.1; hysteresis 0.2: clear level 0.88
    return MachineLifecycle("pump", 1.0, LifecyclePolicy(**{"margin": 0.1, "hysteresis": 0.2, "quiet_seconds": 2.0,
                                                           **kw}))


def test_pending_then_firing_at_k_of_n_then_resolved_after_quiet():
    c = Clock(lifecycle(k=3, n=5))
    assert c.feed(0.5) == [] and c.lc.state == "normal"
    assert c.feed(2.0, 0.5, 2.0) == [] and c.lc.state == "pending"
    assert c.feed(0.5) == [] and c.lc.state == "pending"  # 2 of the last 5
    assert c.feed(2.0) == ["alert"] and c.lc.state == "firing"
    alert = c.events[0]
    assert alert["episode"] == 1 and alert["windows"] == "3/5" and alert["peak_score"] == 2.0
    assert alert["threshold"] == pytest.approx(1.1) and alert["duration"] == pytest.approx(3.0)  # [0, 1) to 3
    assert c.feed(*[0.5] * 4) == [] and c.lc.state == "firing"  # 2 s quiet needs 4 windows after the last
    assert c.feed(0.5) == ["alert_end"] and c.lc.state == "normal"
    end = c.events[-1]
    assert end["alert_id"] == alert["id"] and end["episode"] == 1 and end["reason"] == "quiet for 2 s"


def test_hysteresis_keeps_a_borderline_alert_open_instead_of_flapping():
    c = Clock(lifecycle(k=2, n=3))
    c.feed(2.0, 2.0)
    # Scores hover between the clear level (0.88) and the raise level (1.1) for 10 s: still one episode.
    assert c.feed(*[1.0, 0.95, 1.05] * 7) == []
    assert c.lc.state == "firing"
    assert c.feed(*[0.5] * 5) == ["alert_end"]
    # The same hovering without hysteresis would have ended and re-opened alerts.
    flappy = Clock(lifecycle(k=2, n=3, hysteresis=0.0, quiet_seconds=1.0))
    kinds = flappy.feed(2.0, 2.0, *[1.0, 1.0, 1.0, 1.2, 1.2] * 4)
    assert kinds.count("alert") > 1


def test_repeats_while_firing_until_acknowledged():
    c = Clock(lifecycle(k=1, n=1, repeat_seconds=10, quiet_seconds=1000))
    assert c.feed(2.0) == ["alert"]
    alert_id = c.events[0]["id"]
    assert c.wait(5) == []
    assert c.wait(5) == ["alert_repeat"]
    assert c.events[-1]["alert_id"] == alert_id
    assert c.wait(10) == ["alert_repeat"]
    assert not c.lc.acknowledge(alert_id + 100, "anna", c.t)  # another alert: nothing changes
    assert c.lc.acknowledge(alert_id, "anna", c.t)
    assert c.lc.state == "acknowledged" and c.lc.snapshot()["acknowledged"]["who"] == "anna"
    assert c.wait(30) == []
    assert c.feed(*[2.0] * 3) == []  # still the same, acknowledged episode


def test_silence_marks_events_holds_repeats_and_notifies_once_it_ends():
    c = Clock(lifecycle(k=1, n=1, repeat_seconds=5, quiet_seconds=1000))
    c.lc.set_silences([{"id": 1, "machine": "fan", "start": 0, "until": 5000},  # another machine's
                       {"id": 2, "machine": None, "start": 0, "until": 1020}])  # every machine's
    assert c.feed(2.0) == ["alert"]
    assert c.events[0]["silenced"] is True and c.lc.state == "silenced"
    assert c.wait(10) == []  # no repeat during the silence
    assert c.wait(10) == ["alert_repeat"]  # silence over at 1020, alert still firing
    assert c.events[-1]["reason"] == "silence ended" and "silenced" not in c.events[-1]


def test_health_states_are_raised_and_cleared_once_each():
    lc = lifecycle()
    evs = lc.observe_health(10.0, "device_lost", True, "unplugged")
    assert [e["event"] for e in evs] == ["device_lost"] and lc.state == "device_lost"
    assert lc.observe_health(11.0, "device_lost", True, "still") == []
    assert lc.observe_health(12.0, "clipping", True) and lc.state == "device_lost"
    back = lc.observe_health(20.0, "device_lost", False)
    assert [e["event"] for e in back] == ["device_restored"] and back[0]["duration"] == 10.0
    assert lc.observe_health(21.0, "clipping", False)[0]["event"] == "clipping_cleared"
    assert lc.observe_health(22.0, "machine_stopped", True)[0]["event"] == "machine_stopped"
    assert lc.state == "machine_stopped"
    assert lc.observe_health(23.0, "machine_stopped", False)[0]["event"] == "machine_running"
    assert lc.state == "normal" and lc.window(24.0, None) == []  # an unscored window changes nothing
    with pytest.raises(ValueError):
        lc.observe_health(25.0, "on_fire", True)


def test_a_machine_that_stops_ends_its_alert():
    c = Clock(lifecycle(k=1, n=1))
    c.feed(5.0)
    evs = c.lc.observe_health(c.t, "machine_stopped", True, "level -80 dBFS")
    assert [e["event"] for e in evs] == ["alert_end", "machine_stopped"] and evs[0]["reason"] == "machine stopped"
    assert c.lc.state == "machine_stopped" and c.lc.alert_state == "normal"


def test_episode_numbers_go_on_after_a_restart_and_stop_closes_the_episode():
    c = Clock(MachineLifecycle("pump", 1.0, LifecyclePolicy(k=1, n=1), episode=7))
    c.feed(5.0)
    assert c.events[0]["episode"] == 8
    end = c.lc.stop(c.t, "monitor stopped")
    assert [e["event"] for e in end] == ["alert_end"] and end[0]["reason"] == "monitor stopped"
    assert c.lc.stop(c.t) == []


@pytest.mark.parametrize("kw", [{"k": 4, "n": 3}, {"k": 0}, {"quiet_seconds": -1}, {"hysteresis": 1.0},
                                {"repeat_seconds": float("nan")}])
def test_policy_refuses_values_that_cannot_work(kw):
    with pytest.raises(ConfigError):
        LifecyclePolicy(**kw)


# -- the store ------------------------------------------------------------------------------


def test_store_ids_only_grow_and_survive_reopening(tmp_path):
    db = tmp_path / "events.db"
    s = EventStore(db)
    a = [s.append({"event": "heartbeat"})["id"] for _ in range(3)]
    s.prune(now=time.time() + 1e9)  # everything old and delivered to no cursor: removed
    s.close()
    s = EventStore(db)
    b = s.append({"event": "alert", "machine": "pump", "episode": 1})
    assert a == [1, 2, 3] and b["id"] == 4  # never reused, even after pruning
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_filters_acks_and_silences(tmp_path):
    s = EventStore(tmp_path / "events.db")
    alert = s.append({"event": "alert", "machine": "pump", "episode": 1})
    s.append({"event": "alert", "machine": "fan", "episode": 1})
    rep = s.append({"event": "alert_repeat", "machine": "pump", "alert_id": alert["id"], "episode": 1})
    assert [e["machine"] for e in s.events(kinds=["alert"])] == ["pump", "fan"]
    assert [e["id"] for e in s.events(machine="pump")] == [alert["id"], rep["id"]]
    assert s.events(since_id=rep["id"]) == []
    ack = s.ack(rep["id"], "anna", comment="on it")  # acknowledging a repeat acknowledges its alert
    assert ack["alert_id"] == alert["id"] and s.acked(alert["id"])["who"] == "anna"
    assert s.ack(alert["id"], "bob")["who"] == "anna"  # recorded once
    with pytest.raises(ConfigError, match="not an alert"):
        s.ack(ack["id"], "anna")
    now = time.time()
    ev = s.silence("pump", now + 60, "anna", "bearing swap")
    s.silence(None, now + 30, "bob")
    assert [x["machine"] for x in s.active_silences()] == ["pump", None]
    assert s.active_silences(now + 45)[0]["machine"] == "pump"
    s.unsilence(ev["silence_id"], "anna")
    assert [x["machine"] for x in s.active_silences()] == [None]
    with pytest.raises(ConfigError, match="future"):
        s.silence("pump", now - 1, "anna")
    assert [e["event"] for e in s.events(kinds=["acknowledged", "silenced", "unsilenced"])] == [
        "acknowledged", "silenced", "silenced", "unsilenced"]


def test_retention_keeps_what_a_sink_has_not_delivered(tmp_path):
    s = EventStore(tmp_path / "events.db", max_age_days=1, max_events=1000)
    old = time.time() - 3 * 86400
    ids = [s.append({"event": "heartbeat", "epoch": old})["id"] for _ in range(10)]
    s.start_cursor("ops")
    s.advance("ops", ids[5])
    assert s.prune() == 6  # old and delivered
    assert [e["id"] for e in s.events()] == ids[6:]
    s.advance("ops", ids[-1])
    s.start_cursor("gone")  # a sink since removed from the configuration
    assert s.prune(sinks=["ops"]) == 4 and s.count() == 0
    many = EventStore(tmp_path / "size.db", max_age_days=None, max_events=10)
    for _ in range(25):
        many.append({"event": "heartbeat"})
    many.start_cursor("log")
    many.advance("log", 12)
    assert many.prune() == 12  # only delivered ones, though 15 are over the limit
    assert many.events(limit=1)[0]["id"] == 13
    for _ in range(10):
        many.append({"event": "heartbeat"})
    assert many.prune() == 13  # over twice the limit: back to the limit, undelivered or not (logged)
    assert many.count() == 10 and many.events(limit=1)[0]["id"] == 26


def test_evidence_goes_with_its_event_when_retention_removes_it(tmp_path):
    from machine_monitor.service.serve import prune_evidence, write_evidence

    store = EventStore(tmp_path / "events.db", max_age_days=30, max_events=1000)
    ev_dir = tmp_path / "evidence"
    audio = np.zeros(1600, np.float32)
    now = time.time()
    old, recent = now - 40 * 86400, now - 86400
    wavs = {when: write_evidence(ev_dir, "pump 3", i + 1, when, audio, 16000) for i, when in enumerate((old, recent))}
    for when, wav in wavs.items():
        store.append({"event": "alert", "machine": "pump 3", "epoch": when, "evidence": str(wav)})
        os.utime(wav, (when, when))
    orphan = write_evidence(ev_dir, "pump 3", 9, now - 7200, audio, 16000)  # a crash between WAV and event
    os.utime(orphan, (now - 7200, now - 7200))
    being_written = write_evidence(ev_dir, "pump 3", 10, now, audio, 16000)  # its event is not stored yet
    (ev_dir / "notes.wav").write_bytes(b"someone else's file")
    store.start_cursor("log")
    store.advance("log", store.last_id())

    assert store.prune(now) == 1  # the 40-day-old alert
    assert prune_evidence(ev_dir, store.evidence_paths(), now=now) == 2
    assert sorted(p.name for p in ev_dir.iterdir()) == sorted(
        [wavs[recent].name, being_written.name, "notes.wav"])


def test_the_service_measures_window_levels_as_monitor_does():
    import numpy as np

    from machine_monitor.service.serve import window_level_db
    from machine_monitor.threshold import window_level_db as monitors

    rng = np.random.default_rng(0)
    for scale, n in ((1e-4, 159_744), (0.3, 160_000), (0.05, 3000)):
        y = (rng.standard_normal(n) * scale).astype(np.float32)
        y[: n // 8] *= 0.01  # a quiet stretch: the median ignores it
        assert window_level_db(y, sr=16_000) == pytest.approx(monitors(y, sr=16_000), abs=1e-3)
