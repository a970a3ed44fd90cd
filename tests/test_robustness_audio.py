"""Hostile audio inputs: refused with an AudioReadError before anything large is allocated or waited for."""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.audio.io import audio_info, iter_raw_blocks, load_audio, load_clip, read_blocks
from machine_monitor.audio.sources import ArraySource, FileSource
from machine_monitor.errors import AudioReadError, MachineMonitorError
from tests.conftest import hum


def wav_bytes(y, sr=16_000, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def with_wav_rate(data: bytes, rate: int) -> bytes:
    """The same WAV with its header's sample rate (and byte rate) replaced."""
    b = bytearray(data)
    channels, bits = struct.unpack_from("<H", b, 22)[0], struct.unpack_from("<H", b, 34)[0]
    struct.pack_into("<II", b, 24, rate, rate * channels * bits // 8)
    return bytes(b)


def test_wav_claiming_1_hz_is_refused_before_allocating(tmp_path):
    # 96 KB of samples at "1 Hz" would resample to 13 hours (3 GB) of 16 kHz audio.
    p = tmp_path / "one_hz.wav"
    p.write_bytes(with_wav_rate(wav_bytes(hum(3.0)), 1))
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(AudioReadError, match=r"one_hz\.wav: implausible sample rate 1 Hz"):
        load_audio(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t < 2 and peak < 20e6
    for reader in (lambda: list(read_blocks(p, block_seconds=1.0)), lambda: FileSource(p)):
        with pytest.raises(AudioReadError, match="implausible sample rate"):
            reader()


@pytest.mark.parametrize("rate", [999, 384_001, 2_000_000])
def test_sample_rates_outside_1k_to_384k_are_refused(tmp_path, rate):
    p = tmp_path / "odd.wav"
    p.write_bytes(with_wav_rate(wav_bytes(hum(0.5)), rate))
    with pytest.raises(AudioReadError, match=f"implausible sample rate {rate} Hz"):
        audio_info(p)


@pytest.mark.parametrize("rate", [1_000, 8_000, 384_000])
def test_plausible_rates_are_read(tmp_path, rate):
    p = tmp_path / "ok.wav"
    p.write_bytes(with_wav_rate(wav_bytes(hum(0.5)), rate))
    assert load_audio(p).size == pytest.approx(0.5 * 16_000 * 16_000 / rate, rel=0.01)


def flac_claiming(total_samples: int) -> bytes:
    """A real FLAC whose STREAMINFO claims ``total_samples`` samples (36-bit field)."""
    buf = io.BytesIO()
    sf.write(buf, hum(1.0), 16_000, format="FLAC", subtype="PCM_16")
    b = bytearray(buf.getvalue())
    assert b[:4] == b"fLaC"
    # STREAMINFO bytes 18..25: rate (20 bits), channels-1 (3), bits-1 (5), total samples (36).
    packed = int.from_bytes(b[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total_samples
    b[18:26] = packed.to_bytes(8, "big")
    return bytes(b)


def test_flac_header_claiming_billions_of_samples_is_refused(tmp_path):
    # The fuzzed FLAC that asked train for 109 GiB: the claim is checked against the file size.
    p = tmp_path / "huge.flac"
    p.write_bytes(flac_claiming((1 << 36) - 1))
    tracemalloc.start()
    with pytest.raises(AudioReadError, match=r"huge\.flac: header claims .* far more than .* bytes can hold"):
        load_audio(p)
    assert tracemalloc.get_traced_memory()[1] < 20e6
    tracemalloc.stop()


def test_a_header_claiming_a_little_more_than_the_data_reads_only_the_data(tmp_path):
    # soundfile's own blocks() repeats stale buffers up to the header's claim; we stop at the data.
    p = tmp_path / "short_claim.flac"
    p.write_bytes(flac_claiming(3 * 16_000))  # 1 s of data, header says 3 s
    decoded = 0
    try:
        for block, _ in iter_raw_blocks(p, block_seconds=0.25):
            decoded += len(block)
    except AudioReadError as exc:  # libsndfile notices the lie at the end of the data
        assert "short_claim.flac: audio data is corrupt" in str(exc)
    assert decoded <= 16_000


def test_decoding_stops_when_data_exceeds_what_the_file_size_allows(tmp_path, monkeypatch):
    import machine_monitor.audio.io as aio

    p = tmp_path / "a.wav"
    sf.write(p, hum(2.0), 16_000)
    monkeypatch.setattr(aio, "MAX_SAMPLES_PER_BYTE", 0)
    monkeypatch.setattr(aio, "MIN_SAMPLE_BUDGET", 16_000)  # the header (32,000) already exceeds it
    with pytest.raises(AudioReadError, match="far more than"):
        load_audio(p)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (POSIX)")
def test_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    t = time.perf_counter()
    for reader in (lambda: load_audio(fifo), lambda: audio_info(fifo), lambda: FileSource(fifo),
                   lambda: list(read_blocks(fifo, block_seconds=1.0))):
        with pytest.raises(AudioReadError, match=r"pipe\.wav: is a FIFO \(named pipe\), not an audio file"):
            reader()
    assert time.perf_counter() - t < 2


def test_devices_and_folders_are_refused(tmp_path):
    with pytest.raises(AudioReadError, match="is a device, not an audio file"):
        load_audio("/dev/zero")
    for reader in (load_audio, audio_info, FileSource):
        with pytest.raises(AudioReadError, match="is a directory, not an audio file"):
            reader(tmp_path)


def test_float_file_with_absurd_sample_values_is_refused(tmp_path):
    # Finite but 1e30: its power overflows float32 features and the score became NaN ("normal").
    y = hum(1.0)
    y[100] = 1e30
    p = tmp_path / "absurd.wav"
    sf.write(p, y, 16_000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match=r"absurd\.wav: implausible sample values"):
        load_audio(p)


def test_replay_thread_death_is_an_error_not_a_hang(tmp_path, monkeypatch):
    p = tmp_path / "a.wav"
    sf.write(p, hum(5.0), 16_000)
    src = FileSource(p, speed=0)

    def broken_blocks():
        yield np.zeros((1600, 1), dtype=np.float32)
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(src, "_blocks", broken_blocks)
    src.start()
    t = time.perf_counter()
    try:
        with pytest.raises(AudioReadError, match=r"a\.wav: replay failed \(RuntimeError: decoder crashed\)"):
            while time.perf_counter() - t < 5:
                src.read(timeout=0.05)
    finally:
        src.stop()
    assert time.perf_counter() - t < 2


def test_corrupt_data_mid_replay_surfaces_as_the_readers_error(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, hum(2.0), 16_000)
    src = FileSource(p, speed=0)
    p.write_bytes(with_wav_rate(p.read_bytes(), 1))  # the file changes under the replay
    src.start()
    try:
        with pytest.raises(AudioReadError, match="implausible sample rate"):
            deadline = time.monotonic() + 5
            while not src.finished and time.monotonic() < deadline:
                src.read(timeout=0.05)
    finally:
        src.stop()


def test_replay_thread_that_vanishes_without_a_word_is_an_error():
    src = ArraySource(hum(1.0), speed=0)
    src._produce = lambda: None  # ends without sending the end-of-input marker
    src.start()
    src._thread.join()
    with pytest.raises(AudioReadError, match="replay stopped before the end of the input"):
        src.read(timeout=0.01)
    src.stop()


def test_python_api_clips_of_the_wrong_shape_raise_project_errors(tmp_path):
    y = hum(1.0)
    with pytest.raises(AudioReadError, match="implausible sample rate 0 Hz"):
        load_clip((y, 0))
    with pytest.raises(AudioReadError, match="sample rate must be a number"):
        load_clip((y, "16k"))
    with pytest.raises(AudioReadError, match=r"\(signal, sample_rate\)"):
        load_clip((y, 16_000, 1))
    with pytest.raises(AudioReadError, match="expected a signal"):
        load_clip(None)
    with pytest.raises(MachineMonitorError):
        load_clip(np.array(["a", "b"]))
    p = tmp_path / "x.wav"
    sf.write(p, y, 16_000)
    assert load_clip(str(p)).shape == (16_000,)
    assert load_clip((y, 48_000)).shape == (16_000 // 3,)


def test_audio_is_read_without_threads_left_behind(tmp_path):
    p = tmp_path / "a.wav"
    sf.write(p, hum(1.0), 16_000)
    before = threading.active_count()
    src = FileSource(p, speed=0)
    src.start()
    while not src.finished:
        src.read(timeout=0.05)
    src.stop()
    assert threading.active_count() == before


def test_evidence_write_failure_says_why_and_where(tmp_path):
    # A disk that fills up made libsndfile say only "System error". A file-size limit gives the
    # same kind of failure (the kernel refuses the write) without filling a real disk.
    import subprocess
    import sys

    code = f"""
import resource, signal, numpy as np
from machine_monitor.live.sinks import EvidenceWriter, Event
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
ev = Event.now("alert", model="pump", episode=1, stream_seconds=12.0)
try:
    EvidenceWriter(r"{tmp_path / 'evidence'}").handle(ev, np.zeros(16000, np.float32) + 0.1)
except OSError as exc:
    print("ERROR", exc)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("ERROR [Errno 27] File too large: cannot write "), out
    assert str(tmp_path / "evidence" / "pump_alert001_") in out and "32,044 bytes" in out and "free there" in out
    assert not [p for p in (tmp_path / "evidence").iterdir()]  # no half-written file left
