"""Live monitoring with injected sources: windows, scores, alert policy, health, sinks, CLI.

Audio comes from the demo machine (``machine_sound``), the same machine as the
recordings the detector is trained on; replays run as fast as possible
(``speed=0``), so these tests are deterministic and need no sound card.
"""

from __future__ import annotations

import builtins
import functools
import json
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr

from machine_monitor.audio.sources import ArraySource, FileSource, SourceLost
from machine_monitor.live.monitor import Monitor, StatusLine
from machine_monitor.live.policy import AlertPolicy
from machine_monitor.live.sinks import ALERT, ALERT_END, SIGNAL_LOST, SIGNAL_RESTORED, CommandRunner, Event, JsonlLog
from machine_monitor.live.windows import RingBuffer
from machine_monitor.synth import machine_sound
from tests.conftest import FAST, PEAK, RECORDINGS, SR

ONSET = 20.0


@functools.lru_cache(maxsize=1)
def train_demo_detector(out_dir: str):
    """A small detector on recordings/normal, saved to ``out_dir`` (once per test process)."""
    from machine_monitor import Detector

    det = Detector(**PEAK).fit(sorted((RECORDINGS / "normal").glob("*.wav")))
    det.save(out_dir)
    return Detector.load(out_dir)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory, recordings):
    import torch

    torch.set_num_threads(1)
    path = tmp_path_factory.getbasetemp() / "demo-model"
    return path, train_demo_detector(str(path))


@pytest.fixture(scope="session")
def detector(demo_model):
    return demo_model[1]


class Collect:
    """A sink that keeps every event (and the audio handed with it)."""

    def __init__(self):
        self.events: list[Event] = []
        self.audio: list[np.ndarray | None] = []

    def handle(self, event, audio=None):
        self.events.append(event)
        self.audio.append(audio)

    def kinds(self):
        return [e.event for e in self.events]


def run_monitor(detector, y, **kw):
    sink = Collect()
    sinks = [*kw.pop("sinks", []), sink]
    mon = Monitor(detector, ArraySource(y, speed=0), sinks=sinks, model_name="demo", **kw)
    return mon, mon.run(), sink


def test_ring_buffer_returns_any_recent_span_across_the_wrap():
    ring = RingBuffer(10)
    stream = np.arange(27, dtype=np.float32)
    for part in np.split(stream, [4, 9, 10, 23]):
        ring.extend(part)
    assert ring.total == 27
    np.testing.assert_array_equal(ring.get(17, 27), stream[17:27])
    np.testing.assert_array_equal(ring.get(19, 22), stream[19:22])
    with pytest.raises(IndexError):
        ring.get(16, 20)  # overwritten already


def test_peak_windows_are_scored_whole(detector):
    # Peak spans do not tile frame by frame, so nothing is cached between hops.
    assert detector.feature_config.kind == "peak"
    assert not detector.streaming().incremental


def test_incremental_window_scores_equal_scoring_each_window_whole(recordings):
    from machine_monitor import Detector

    detector = Detector(features="logmel", **FAST).fit(sorted((recordings / "normal").glob("*.wav"))[:8])
    y = machine_sound(8.0, seed=31)
    mon = Monitor(detector, ArraySource(y, speed=0), window_seconds=2.0, hop_seconds=0.5)
    assert mon.scorer.incremental  # frame windows pool into a clip score: work is reused
    ring = RingBuffer(len(y))
    ring.extend(y)
    scorer = detector.streaming()
    for stop in range(mon.window, len(y) + 1, mon.hop):
        whole = detector.score_signal(y[stop - mon.window:stop])
        assert scorer.score(ring, stop - mon.window, stop) == pytest.approx(whole, rel=1e-4)


def test_normal_audio_raises_no_alert(detector):
    mon, summary, sink = run_monitor(detector, machine_sound(60.0, seed=9001))
    assert summary.windows == (60 * SR - mon.window) // mon.hop + 1
    assert sink.events == []
    assert summary.alerts == 0 and summary.stopped_by == "end of input"


@pytest.mark.parametrize("kind", ["bearing", "imbalance", "squeal"])
def test_anomaly_opens_exactly_one_episode_within_3_s(detector, kind):
    y = machine_sound(40.0, seed=9002, anomaly=kind, onset=ONSET)
    _, summary, sink = run_monitor(detector, y)
    assert sink.kinds() == [ALERT, ALERT_END]  # one episode, not one event per window
    alert, end = sink.events
    assert ONSET < alert.stream_seconds <= ONSET + 3.0
    assert alert.peak_score > alert.threshold
    assert alert.windows.startswith("3/") or alert.windows.startswith("4/")
    assert end.reason == "end of input" and end.duration > 40.0 - ONSET - 1
    assert summary.alerts == 1


def test_the_status_says_pending_while_windows_are_above_the_level_before_the_alert(detector):
    y = machine_sound(ONSET + 10.0, seed=9002, anomaly="squeal", onset=ONSET)
    states = []
    run_monitor(detector, y, on_window=lambda r: states.append(r.state))
    first_alert = states.index("ALERT")
    assert set(states[:first_alert]) - {"normal"}, "no window above the level before the alert"
    assert all(s == "normal" or s.startswith("pending (") for s in states[:first_alert])
    assert states[first_alert - 1] == "pending (2 of the last 5 above; alert at 3)"


def test_episode_closes_after_the_quiet_period_and_a_new_one_can_open(detector):
    normal = machine_sound(70.0, seed=9003)
    faulty = machine_sound(70.0, seed=9003, anomaly="imbalance", onset=10.0)
    # Same machine, same seed: the fault is present in [10, 18) s and again in [50, 58) s.
    y = normal.copy()
    for a, b in ((10, 18), (50, 58)):
        y[a * SR:b * SR] = faulty[a * SR:b * SR]
    mon, summary, sink = run_monitor(detector, y, policy=AlertPolicy(quiet_seconds=10.0))
    assert sink.kinds() == [ALERT, ALERT_END, ALERT, ALERT_END]
    first_end = sink.events[1]
    assert first_end.reason == "quiet for 10 s"
    # Windows hold the fault until one window length after it stops; then 10 s of quiet.
    assert 18 + 10 <= first_end.stream_seconds <= 18 + mon.window_seconds + 10 + 1
    assert 50 < sink.events[2].stream_seconds <= 53
    assert summary.alerts == 2


def test_digital_silence_is_signal_lost_not_an_alert(detector):
    y = machine_sound(40.0, seed=9004)
    y[10 * SR:20 * SR] = 0.0  # a dead input for 10 s
    mon, summary, sink = run_monitor(detector, y)
    assert sink.kinds() == [SIGNAL_LOST, SIGNAL_RESTORED]
    lost, back = sink.events
    assert "digitally silent" in lost.reason
    assert 10 < lost.stream_seconds <= 10 + mon.window_seconds + mon.hop_seconds
    # Restored with the first window free of zeros (silence is checked per 16 ms).
    assert 20 + mon.window_seconds - 0.016 <= back.stream_seconds <= 20 + mon.window_seconds + mon.hop_seconds
    assert summary.signal_losses == 1 and summary.alerts == 0
    # Windows touching the gap are not scored at all.
    touching = (10 * SR + mon.window) // mon.hop + 1
    assert summary.windows < (40 * SR - mon.window) // mon.hop + 1 - touching + 4


def test_nan_input_is_signal_lost(detector):
    y = machine_sound(12.0, seed=9005)
    y[5 * SR] = np.nan
    _, summary, sink = run_monitor(detector, y)
    assert sink.kinds() == [SIGNAL_LOST, SIGNAL_RESTORED]
    assert "non-finite" in sink.events[0].reason


class FlakySource(ArraySource):
    """Dies after ``die_after`` blocks, then refuses ``refusals`` re-opens, then plays on."""

    def __init__(self, y, *, die_after: int, refusals: int):
        super().__init__(y, speed=0, queue_seconds=0.5)  # a dead device loses what was queued
        self.die_after, self.refusals, self.starts = die_after, refusals, 0
        self._offset = 0

    def start(self):
        self.starts += 1
        if self.starts > 1 and self.refusals:
            self.refusals -= 1
            raise SourceLost("device not found")
        self.stats.restarts += self.starts > 1
        super().start()

    def _blocks(self):
        step = int(self.block_seconds * self.rate)
        while self._offset < len(self.y):
            yield self.y[self._offset:self._offset + step]
            self._offset += step

    def read(self, timeout=0.1):
        if self.die_after == 0:
            self.die_after = -1
            raise SourceLost("input device 3 (USB mic) stopped (disconnected?)")
        self.die_after -= self.die_after > 0
        return super().read(timeout)


def test_a_lost_device_is_reported_and_reopened_with_backoff(detector):
    y = machine_sound(20.0, seed=9006)
    source = FlakySource(y, die_after=50, refusals=2)
    sink = Collect()
    mon = Monitor(detector, source, sinks=[sink], backoff=(0.01, 0.02))
    summary = mon.run()
    assert sink.kinds() == [SIGNAL_LOST, SIGNAL_RESTORED]
    assert "disconnected" in sink.events[0].reason
    assert source.starts == 4 and summary.restarts == 1  # two refused re-opens, then back
    assert summary.stopped_by == "end of input" and summary.alerts == 0
    assert summary.windows > 20  # it went on scoring after the loss


def test_alert_log_and_evidence_wav(detector, tmp_path):
    from machine_monitor.live.sinks import EvidenceWriter

    y = machine_sound(30.0, seed=9007, anomaly="bearing", onset=ONSET)
    log_path = tmp_path / "logs" / "alerts.jsonl"
    _, _, sink = run_monitor(detector, y, sinks=[EvidenceWriter(tmp_path / "ev"), JsonlLog(log_path)])
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["event"] for e in lines] == [ALERT, ALERT_END]
    alert = lines[0]
    assert {"time", "epoch", "model", "peak_score", "threshold", "duration", "evidence"} <= alert.keys()
    assert alert["model"] == "demo" and alert["peak_score"] > alert["threshold"]
    wavs = list((tmp_path / "ev").iterdir())
    assert [str(w) for w in wavs] == [alert["evidence"]]
    info = sf.info(wavs[0])
    assert (info.samplerate, info.channels) == (SR, 1)
    assert info.duration == pytest.approx(alert["duration"], abs=1e-3)
    # The evidence is the audio that was scored: it ends at the alert's window.
    audio = sink.audio[0]
    end = int(round(alert["stream_seconds"] * SR))
    np.testing.assert_allclose(audio, y[end - audio.size:end])


def test_on_alert_command_gets_the_event_without_a_shell(tmp_path):
    out = tmp_path / "got.json"
    script = ("import json, os, sys; d = json.loads(sys.stdin.read()); "
              f"json.dump({{'stdin': d, 'env_model': os.environ['MM_MODEL'], "
              f"'env_event': os.environ['MM_EVENT']}}, open({str(out)!r}, 'w'))")
    runner = CommandRunner([sys.executable, "-c", script])
    evil = "pump; touch $HOME/pwned `id`"
    runner.handle(Event.now(ALERT_END, model=evil, stream_seconds=1.0))  # not an action event: ignored
    runner.handle(Event.now(ALERT, model=evil, stream_seconds=3.0, peak_score=2.0, threshold=1.0, episode=1))
    runner.close(timeout=30)
    got = json.loads(out.read_text())
    assert got["env_model"] == evil and got["stdin"]["model"] == evil  # passed as data, never interpreted
    assert got["env_event"] == ALERT and got["stdin"]["peak_score"] == 2.0
    assert runner.runs == 1 and runner.failures == 0


def test_on_alert_failures_are_counted_not_raised():
    runner = CommandRunner(["/nonexistent/notify"])
    runner.handle(Event.now(SIGNAL_LOST, model="m", stream_seconds=0.0, reason="x"))
    runner.close(timeout=10)
    assert runner.failures == 1


def test_status_line_does_not_flood(detector):
    import io

    stream = io.StringIO()  # not a terminal: one line per interval
    run_monitor(detector, machine_sound(30.0, seed=9008), on_window=StatusLine(stream, interval=3600))
    assert stream.getvalue().count("\n") == 1
    assert "threshold" in stream.getvalue()


def test_file_replay_keeps_real_time_pace(detector, tmp_path):
    import time

    path = tmp_path / "clip.wav"
    sf.write(path, machine_sound(3.0, seed=9009), 48_000 // 3)  # 16 kHz file
    t0 = time.monotonic()
    mon = Monitor(detector, FileSource(path, speed=2.0), hop_seconds=0.25)
    summary = mon.run()
    assert 1.4 <= time.monotonic() - t0 < 4.0  # 3 s of audio at twice real time
    assert summary.stream_seconds == pytest.approx(3.0, abs=0.01)
    assert summary.windows == (3 * SR - mon.window) // mon.hop + 1


def test_file_source_resamples_and_downmixes_like_a_device(detector, tmp_path):
    y = machine_sound(6.0, seed=9010, sr=48_000)
    path = tmp_path / "stereo48k.wav"
    sf.write(path, np.stack([y, y], axis=1), 48_000)
    source = FileSource(path, speed=0)
    blocks = []
    source.start()
    while not source.finished:
        b = source.read(timeout=1.0)
        if b is not None:
            blocks.append(b)
    source.stop()
    out = np.concatenate(blocks)
    assert abs(out.size - 6 * SR) <= 2
    ref = soxr.resample(y, 48_000, SR, quality="HQ")  # what a whole-file resample gives
    np.testing.assert_allclose(out[SR:5 * SR], ref[SR:5 * SR], atol=1e-3)


def test_policy_and_window_are_validated(detector):
    from machine_monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="k <= n"):
        AlertPolicy(k=4, n=3)
    with pytest.raises(ConfigError, match="feature window"):
        Monitor(detector, ArraySource(np.zeros(10)), window_seconds=0.05)


# -- the CLI ----------------------------------------------------------------------------


def write_wav(path, y):
    sf.write(path, y, SR, subtype="PCM_16")
    return path


def test_cli_monitor_replays_a_file_and_exits_1_on_an_alert(demo_model, tmp_path, capsys, monkeypatch):
    from machine_monitor.cli import main

    monkeypatch.chdir(tmp_path)
    wav = write_wav(tmp_path / "faulty.wav", machine_sound(30.0, seed=9011, anomaly="squeal", onset=ONSET))
    code = main(["-q", "monitor", "--model", str(demo_model[0]), "--input", str(wav), "--speed", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert "ALERT #1" in out and "1 alert episode(s)" in out
    events = [json.loads(line)["event"] for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert events == [ALERT, ALERT_END]
    assert len(list((tmp_path / "evidence").glob("*.wav"))) == 1


def test_cli_monitor_exits_0_on_normal_audio(demo_model, tmp_path, capsys):
    from machine_monitor.cli import main

    wav = write_wav(tmp_path / "normal.wav", machine_sound(15.0, seed=9012))
    code = main(["-q", "monitor", "--model", str(demo_model[0]), "--input", str(wav), "--speed", "0",
                 "--alert-log", str(tmp_path / "a.jsonl"), "--evidence-dir", str(tmp_path / "ev")])
    assert code == 0
    assert "0 alert episode(s)" in capsys.readouterr().out
    assert not (tmp_path / "a.jsonl").exists()


def test_cli_monitor_replaying_the_machine_switched_off_is_a_state_not_an_error(demo_model, tmp_path, capsys):
    from machine_monitor.cli import main

    off = 0.003 * machine_sound(15.0, seed=9013)  # -50 dB: far quieter than anything in training
    wav = write_wav(tmp_path / "off.wav", off)
    log = tmp_path / "a.jsonl"
    code = main(["-q", "monitor", "--model", str(demo_model[0]), "--input", str(wav), "--speed", "0",
                 "--alert-log", str(log), "--evidence-dir", str(tmp_path / "ev")])
    out = capsys.readouterr().out
    assert code == 0  # not "no window could be scored": nothing was wrong with the file
    assert "0 windows scored" in out and "with the machine stopped" in out and "0 alert episode(s)" in out
    assert [json.loads(line)["event"] for line in log.read_text().splitlines()] == ["machine_stopped"]


def test_cli_monitor_sigint_stops_cleanly_with_a_summary_and_130(demo_model, tmp_path):
    import signal
    import subprocess
    import time

    wav = write_wav(tmp_path / "long.wav", machine_sound(60.0, seed=9013))
    proc = subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "monitor", "--model", str(demo_model[0]),
                             "--input", str(wav), "--alert-log", str(tmp_path / "a.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    line = ""
    while "monitoring" not in line and time.monotonic() < deadline:
        line = proc.stderr.readline()
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "(SIGINT)" in out and "windows scored" in out
    assert "Traceback" not in err


def test_without_portaudio_live_commands_say_how_to_install_and_others_work(demo_model, tmp_path, capsys,
                                                                             monkeypatch):
    from machine_monitor.cli import main

    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    for argv in (["devices"], ["record", str(tmp_path / "clips"), "--seconds", "1"],
                 ["monitor", "--model", str(demo_model[0])]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "apt-get install libportaudio2" in err and "Traceback" not in err
    wav = write_wav(tmp_path / "n.wav", machine_sound(5.0, seed=9014))
    assert main(["-q", "monitor", "--model", str(demo_model[0]), "--input", str(wav), "--speed", "0",
                 "--alert-log", str(tmp_path / "a.jsonl")]) == 0
    assert main(["-q", "scan", "--model", str(demo_model[0]), str(wav)]) in (0, 1)  # it ran


# -- recording clips ----------------------------------------------------------------------


def test_record_writes_numbered_clips_and_closes_the_partial_one(tmp_path):
    from machine_monitor.commands.record import ClipWriter, record_clips

    (tmp_path / "clip_0007.wav").write_bytes(b"")  # numbering continues after existing clips
    y = machine_sound(25.0, seed=9015, sr=48_000)
    source = ArraySource(y, 48_000, speed=0)
    writer = ClipWriter(tmp_path, clip_samples=10 * SR)
    source.start()
    try:
        seconds = record_clips(source, writer, seconds=23.5)
    finally:
        writer.close()
        source.stop()
    assert seconds == pytest.approx(23.5)
    assert [p.name for p in writer.paths] == ["clip_0008.wav", "clip_0009.wav", "clip_0010.wav"]
    durations = [sf.info(p).duration for p in writer.paths]
    assert durations == pytest.approx([10.0, 10.0, 3.5])
    assert all(sf.info(p).samplerate == SR and sf.info(p).channels == 1 for p in writer.paths)


def test_record_stop_mid_clip_keeps_a_valid_partial_clip(tmp_path):
    from machine_monitor.commands.record import ClipWriter, record_clips

    source = ArraySource(machine_sound(20.0, seed=9016), speed=0)
    writer = ClipWriter(tmp_path, clip_samples=10 * SR, prefix="pump")
    blocks = iter(range(10**6))
    source.start()
    try:
        record_clips(source, writer, seconds=20.0, should_stop=lambda: next(blocks) >= 130)  # after 13 s
    finally:
        writer.close()
        source.stop()
    assert [p.name for p in writer.paths] == ["pump_0000.wav", "pump_0001.wav"]
    y, sr = sf.read(writer.paths[1])
    assert sr == SR and y.size == 3 * SR


@pytest.mark.slow
def test_a_lossy_file_replay_is_judged_by_the_level_calibrated_on_lossily_coded_training_audio(detector, tmp_path):
    # Issue 14: the codec alone must not raise an alarm. A minute of normal running as OGG Vorbis
    # (the codec's default quality) raises none, though as plain live audio its windows would
    # alert; a bearing fault coded the same still alerts, after its onset.
    ogg = {"format": "OGG", "subtype": "VORBIS"}

    def replay(y, name, fmt=ogg):
        sf.write(tmp_path / name, y, SR, **fmt)
        sink = Collect()
        mon = Monitor(detector, FileSource(tmp_path / name, speed=0), sinks=[sink])
        mon.run()
        return mon, sink

    normal = machine_sound(60.0, seed=9001)
    wav, wav_sink = replay(normal, "normal.wav", {})
    assert wav_sink.kinds().count(ALERT) == 0
    mon, sink = replay(normal, "normal.ogg")
    assert sink.kinds().count(ALERT) == 0
    assert mon.level > wav.level and "lossy-coded input" in mon.level_source
    judged_as_live = run_monitor(detector, sf.read(tmp_path / "normal.ogg", dtype="float32")[0])[1]
    assert judged_as_live.alerts >= 1  # the same decoded samples, handed over as live audio
    mon, sink = replay(machine_sound(40.0, seed=9002, anomaly="bearing", onset=ONSET), "bearing.ogg")
    alerts = [e for e in sink.events if e.event == ALERT]
    assert len(alerts) == 1 and alerts[0].stream_seconds > ONSET
