"""The audio front-end: every input becomes validated 16 kHz mono float32, or a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.audio.io import find_audio_files, load_audio, read_blocks, split_recording, to_mono
from machine_monitor.errors import AudioReadError, SilentAudioError
from tests.conftest import hum


def write(path, y, sr=16_000, subtype="PCM_16"):
    sf.write(path, y, sr, subtype=subtype)
    return path


def test_reads_16k_pcm_as_float32_mono(tmp_path):
    y = hum(1.0)
    out = load_audio(write(tmp_path / "a.wav", y))
    assert out.dtype == np.float32 and out.shape == (16_000,)
    assert np.allclose(out, y, atol=1e-4)


@pytest.mark.parametrize("sr", [8_000, 22_050, 44_100, 48_000])
def test_resamples_any_rate_to_16k(tmp_path, sr):
    t = np.arange(sr) / sr
    out = load_audio(write(tmp_path / "a.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sr=sr))
    assert out.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins: the tone stays at 440 Hz


def test_multichannel_is_mean_of_channels_or_chosen_channel(tmp_path):
    left, right = hum(1.0, seed=1), hum(1.0, seed=2, f0=200)
    path = write(tmp_path / "st.wav", np.stack([left, right], axis=1), subtype="FLOAT")
    assert np.allclose(load_audio(path), (left + right) / 2, atol=1e-6)
    assert np.allclose(load_audio(path, channel=1), right, atol=1e-6)
    with pytest.raises(AudioReadError, match=r"st\.wav: has 2 channels, cannot use channel 2"):
        load_audio(path, channel=2)


@pytest.mark.parametrize("subtype", ["PCM_24", "FLOAT", "PCM_U8"])
def test_common_sample_formats(tmp_path, subtype):
    ext = "wav"
    assert load_audio(write(tmp_path / f"a.{ext}", hum(0.5), subtype=subtype)).shape == (8_000,)


def test_flac_is_read(tmp_path):
    assert load_audio(write(tmp_path / "a.flac", hum(0.5))).shape == (8_000,)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(AudioReadError, match=r"nope\.wav: no such file"):
        load_audio(tmp_path / "nope.wav")


def test_garbage_file_is_not_readable_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioReadError, match=r"notes\.wav: not a readable audio file"):
        load_audio(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(AudioReadError, match=r"empty\.wav"):
        load_audio(p)


def test_header_only_wav(tmp_path):
    p = write(tmp_path / "header.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioReadError, match=r"header\.wav: contains no audio samples"):
        load_audio(p)


def test_shorter_than_one_feature_window(tmp_path):
    p = write(tmp_path / "short.wav", hum(0.05))
    with pytest.raises(AudioReadError, match=r"short\.wav: is 0\.050 s long, shorter than one feature window"):
        load_audio(p, min_samples=3072)


def test_non_finite_samples(tmp_path):
    y = hum(0.5)
    y[100] = np.nan
    p = write(tmp_path / "nan.wav", y, subtype="FLOAT")
    with pytest.raises(AudioReadError, match=r"nan\.wav: contains 1 non-finite samples"):
        load_audio(p)


def test_digital_silence_is_reported_not_scored(tmp_path):
    p = write(tmp_path / "silent.wav", np.zeros(16_000, dtype=np.float32))
    with pytest.raises(SilentAudioError, match=r"silent\.wav: is digitally silent"):
        load_audio(p)


def test_read_blocks_streams_a_long_file_in_bounded_blocks(tmp_path):
    y = hum(15.0)  # 240,000 samples written at 48 kHz: 5 s of stereo audio
    path = write(tmp_path / "long.wav", np.repeat(y[:, None], 2, axis=1), sr=48_000)
    blocks = list(read_blocks(path, block_seconds=1.0))
    assert all(b.size <= 1.05 * 16_000 for b in blocks)  # resampler latency shifts edges a little
    # 5 s at 48 kHz is 5 * 16000 samples at 16 kHz, whatever the block edges.
    assert abs(sum(b.size for b in blocks) - 5 * 16_000) <= 1


def test_to_mono_rejects_odd_shapes():
    with pytest.raises(AudioReadError, match="expected"):
        to_mono(np.zeros((2, 2, 2)))


def test_find_audio_files_takes_audio_from_folders_and_every_named_file(tmp_path):
    write(tmp_path / "b.wav", hum(0.2))
    write(tmp_path / "a.flac", hum(0.2))
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.wav", hum(0.2))
    assert [p.name for p in find_audio_files([tmp_path])] == ["a.flac", "b.wav"]
    assert [p.name for p in find_audio_files([tmp_path], recursive=True)] == ["a.flac", "b.wav", "c.wav"]
    assert [p.name for p in find_audio_files([tmp_path / "readme.txt"])] == ["readme.txt"]


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_a_recording_is_cut_into_equal_consecutive_parts_with_its_samples_exact(tmp_path, subtype):
    y = np.random.default_rng(0).uniform(-0.5, 0.5, (48_000 * 7 + 13, 2)).astype(np.float32)
    sf.write(tmp_path / "take.wav", y, 48_000, subtype=subtype)
    parts = split_recording(tmp_path / "take.wav", tmp_path, parts=3)
    assert [p.name for p in parts] == ["take_part1of3.wav", "take_part2of3.wav", "take_part3of3.wav"]
    assert [sf.info(p).frames for p in parts] == [112_004, 112_005, 112_004]
    assert {(sf.info(p).samplerate, sf.info(p).channels, sf.info(p).subtype) for p in parts} == {(48_000, 2, subtype)}
    whole, _ = sf.read(tmp_path / "take.wav", dtype="float64")
    assert np.array_equal(np.concatenate([sf.read(p, dtype="float64")[0] for p in parts]), whole)
    with pytest.raises(AudioReadError, match="cannot cut"):
        split_recording(tmp_path / "take.wav", tmp_path, parts=1)
