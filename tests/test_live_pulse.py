"""The real PortAudio path: a private PulseAudio server with a null sink.

Audio is played into the sink with ``paplay`` and recorded from its
``.monitor`` source through sounddevice (ALSA device ``pulse``,
``PULSE_SOURCE=<sink>.monitor``), by the ``machine-monitor`` CLI in a
subprocess, exactly as on a factory PC. The server is started here (CI runs
as root without a session); the tests skip only when PulseAudio or PortAudio
is not installed.

The sink runs at 16 kHz and the monitor opens the device at 16 kHz, so no
resampler touches the audio. The demo detector learned synthetic audio with
energy right up to 8 kHz; every resampler's anti-alias filter removes 7.3-8 kHz,
and the absolute-dB log-mel reads that as a 6x anomaly. Real captures always
have that roll-off (clips made with `record`, any real recording), so this is
a property of the synthetic demo. Recording at the device's own rate (44.1 kHz
here) and resampling is exercised by the `record` test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.synth import machine_sound
from tests.conftest import SR
from tests.test_monitor import train_demo_detector

pytestmark = pytest.mark.live
SINK = "mm_sink"
SINK_ARGS = (f"sink_name={SINK}", "rate=16000", "channels=1")


def _pactl(env, *args, check=True) -> str:
    return subprocess.run(["pactl", *args], env=env, capture_output=True, text=True, check=check, timeout=10).stdout


@pytest.fixture(scope="session")
def pulse(tmp_path_factory):
    """Environment of a private PulseAudio server with a 16 kHz mono null sink ``mm_sink``."""
    missing = [b for b in ("pulseaudio", "pactl", "paplay") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"live-audio test: {', '.join(missing)} not installed (apt-get install pulseaudio "
                    "pulseaudio-utils)")
    probe = subprocess.run([sys.executable, "-c", "import sounddevice"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("live-audio test: PortAudio not installed (apt-get install libportaudio2)")
    d = tmp_path_factory.mktemp("pulse")
    socket = d / "native"
    config = d / "default.pa"
    # A private server: our own socket, no session bus, no hardware, never exits on idle.
    config.write_text(f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket}\n"
                      f"load-module module-null-sink {' '.join(SINK_ARGS)}\n")
    env = {**os.environ, "HOME": str(d), "XDG_RUNTIME_DIR": str(d), "PULSE_RUNTIME_PATH": str(d / "run"),
           "PULSE_STATE_PATH": str(d / "state"), "PULSE_SERVER": f"unix:{socket}",
           "PULSE_SOURCE": f"{SINK}.monitor"}
    server = subprocess.Popen(["pulseaudio", "-n", "-F", str(config), "--daemonize=no", "--exit-idle-time=-1",
                               "--use-pid-file=no", "--system=false", f"--log-target=file:{d / 'server.log'}"],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log = (d / "server.log").read_text() if (d / "server.log").exists() else ""
            pytest.fail(f"PulseAudio did not start (exit {server.poll()}): {log[-2000:]}")
        time.sleep(0.2)
    yield env
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="session")
def live_model(tmp_path_factory, recordings):
    """The tiny demo detector of tests/test_monitor.py (trained once per test run)."""
    path = tmp_path_factory.getbasetemp() / "demo-model"
    train_demo_detector(str(path))
    return path


def play(env, path) -> subprocess.Popen:
    return subprocess.Popen(["paplay", f"--device={SINK}", str(path)], env=env, stderr=subprocess.PIPE)


def start_monitor(env, model, tmp_path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "machine_monitor.cli", "-v", "monitor", "--model", str(model),
                             "--device", "pulse", "--samplerate", "16000",
                             "--alert-log", str(tmp_path / "alerts.jsonl"),
                             "--evidence-dir", str(tmp_path / "evidence"), *extra],
                            env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def events(tmp_path) -> list[dict]:
    log = tmp_path / "alerts.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def stop(proc) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=30)


def test_devices_lists_the_pulse_input(pulse):
    res = subprocess.run([sys.executable, "-m", "machine_monitor.cli", "devices"], env=pulse, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert any(line.split()[1:2] == ["pulse"] or " pulse " in line for line in res.stdout.splitlines()[1:])


def test_record_clips_from_the_sink_monitor(pulse, tmp_path):
    wav = tmp_path / "play.wav"
    sf.write(wav, machine_sound(12.0, seed=9100), SR, subtype="PCM_16")
    player = play(pulse, wav)
    try:
        res = subprocess.run([sys.executable, "-m", "machine_monitor.cli", "-v", "record",
                              str(tmp_path / "clips"), "--seconds", "3", "--clip", "1", "--device", "pulse"], env=pulse,
                             capture_output=True, text=True, timeout=60)
    finally:
        player.terminate()
    assert res.returncode == 0, res.stderr
    clips = sorted((tmp_path / "clips").glob("clip_*.wav"))
    assert [c.name for c in clips] == ["clip_0000.wav", "clip_0001.wav", "clip_0002.wav"]
    assert "at 44100 Hz" in res.stderr or "at 48000 Hz" in res.stderr  # the device's rate, resampled
    for c in clips:
        y, sr = sf.read(c)
        assert sr == SR and y.ndim == 1 and y.size == SR
    assert np.abs(sf.read(clips[-1])[0]).max() > 0.05  # the machine, not silence


def test_live_normal_then_anomaly_raises_exactly_one_alert_in_time(pulse, live_model, tmp_path):
    normal_s, total_s = 20.0, 34.0
    wav = tmp_path / "machine.wav"
    sf.write(wav, machine_sound(total_s, seed=9101, anomaly="bearing", onset=normal_s), SR, subtype="PCM_16")
    # Playing first means the monitor never hears the idle sink's silence.
    t_play = time.time()
    player = play(pulse, wav)
    mon = start_monitor(pulse, live_model, tmp_path)
    try:
        time.sleep(max(0.0, t_play + total_s - 2.0 - time.time()))  # stop before the playback ends
        assert mon.poll() is None, mon.communicate()
        out, err = stop(mon)
    finally:
        player.terminate()
    assert mon.returncode == 130, err  # stopped by SIGINT
    anomaly_at = t_play + normal_s
    got = events(tmp_path)
    assert [e["event"] for e in got] == ["alert", "alert_end"], (got, err)
    alert = got[0]
    # paplay needs a moment to start: allow it 0.5 s on top of the 3 s.
    assert anomaly_at <= alert["epoch"] <= anomaly_at + 3.0 + 0.5, (alert["epoch"] - anomaly_at, err)
    assert got[1]["reason"] == "monitor stopped"
    # It listened to enough of the normal part to have had a chance to raise a false alarm.
    listened = float(out.split("monitored ")[1].split(" s of audio")[0])
    assert listened - (total_s - 2.0 - normal_s) >= 5.0, out
    assert [p.name for p in (tmp_path / "evidence").iterdir()] == [Path(alert["evidence"]).name]
    assert "1 alert episode(s)" in out and "Traceback" not in err


def test_live_stream_killed_mid_run_is_reported_and_resumed(pulse, live_model, tmp_path):
    wav = tmp_path / "machine.wav"
    sf.write(wav, machine_sound(60.0, seed=9102), SR, subtype="PCM_16")
    player = play(pulse, wav)
    mon = start_monitor(pulse, live_model, tmp_path)
    player2 = None
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in mon.stderr.readline() and time.monotonic() < deadline:
            pass
        time.sleep(4.0)
        module = next(line.split()[0] for line in _pactl(pulse, "list", "short", "modules").splitlines()
                      if "module-null-sink" in line)
        _pactl(pulse, "unload-module", module)  # the input disappears mid-run
        player.terminate()
        time.sleep(3.0)
        assert mon.poll() is None, mon.communicate()  # it survived
        _pactl(pulse, "load-module", "module-null-sink", *SINK_ARGS)
        player2 = play(pulse, wav)
        deadline = time.monotonic() + 45
        while "signal_restored" not in [e["event"] for e in events(tmp_path)] and time.monotonic() < deadline:
            time.sleep(0.5)
        out, err = stop(mon)
    finally:
        player.terminate()
        if player2 is not None:
            player2.terminate()
        if mon.poll() is None:
            mon.kill()
        # Leave the sink in place for other tests whatever happened.
        if SINK not in _pactl(pulse, "list", "short", "sinks", check=False):
            _pactl(pulse, "load-module", "module-null-sink", *SINK_ARGS)
    assert mon.returncode == 130, err
    kinds = [e["event"] for e in events(tmp_path)]
    assert kinds[:1] == ["signal_lost"] and "signal_restored" in kinds, (kinds, err)
    assert "alert" not in kinds
    assert "input re-opened" in err and "1 re-opens" in out and "Traceback" not in err
