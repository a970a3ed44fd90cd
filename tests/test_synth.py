"""Specification of the synthetic machine sound (``machine_monitor.synth``).

The demo recordings and the live-monitoring tests stand on this generator, so it
must be reproducible to the sample, sound like one machine at a sane level, and
put each anomaly where it is asked for and nowhere else. The spectra here are
computed with plain numpy/scipy, independently of the product's features.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal, stats

from machine_monitor import synth
from machine_monitor.synth import ANOMALY_KINDS, MachineParams, machine_sound, write_demo_recordings

SR = 16000
RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"


def band_log_power(y: np.ndarray, *, n_bands: int = 64) -> np.ndarray:
    """Mean power of ``n_bands`` equal-width frequency bands in dB, shape (n_bands,)."""
    power = np.abs(np.fft.rfft(y.astype(np.float64))) ** 2
    edges = np.linspace(0, power.size, n_bands + 1).astype(int)
    return np.array([10 * np.log10(power[a:b].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)])


def bandpass(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    sos = signal.butter(4, [lo, hi], btype="bandpass", output="sos", fs=SR)
    return signal.sosfiltfilt(sos, y.astype(np.float64))


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


@pytest.fixture(scope="module")
def normal_reference() -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std (dB) of 12 normal 2 s clips, each shape (64,)."""
    bands = np.array([band_log_power(machine_sound(2.0, seed=seed)) for seed in range(100, 112)])
    return bands.mean(axis=0), bands.std(axis=0, ddof=1)


# ------------------------------------------------------------ determinism


@pytest.mark.parametrize("anomaly", [None, *ANOMALY_KINDS])
def test_same_seed_gives_the_same_samples(anomaly):
    a = machine_sound(1.0, seed=5, anomaly=anomaly, onset=0.3)
    b = machine_sound(1.0, seed=5, anomaly=anomaly, onset=0.3)
    np.testing.assert_array_equal(a, b)


def test_different_seeds_differ_but_sound_like_the_same_machine():
    a, b = machine_sound(2.0, seed=1), machine_sound(2.0, seed=2)
    assert rms(a - b) > 0.5 * rms(a)  # different phases and noise, not a small perturbation
    # ... yet the same spectral envelope, band by band.
    np.testing.assert_allclose(band_log_power(a), band_log_power(b), atol=2.0)


def test_machine_params_identify_the_machine():
    same = MachineParams(**dataclasses.asdict(MachineParams()))
    np.testing.assert_array_equal(machine_sound(0.5, machine=same), machine_sound(0.5))
    with pytest.raises(dataclasses.FrozenInstanceError):
        same.rotation_hz = 60.0  # type: ignore[misc]
    # A faster, noisier machine sounds different in its spectrum.
    other = dataclasses.replace(MachineParams(), rotation_hz=29.5, noise_level=2.0)
    diff = band_log_power(machine_sound(2.0, machine=other)) - band_log_power(machine_sound(2.0))
    assert np.abs(diff).max() > 3.0


# ------------------------------------------------------------ signal basics


@pytest.mark.parametrize(("seconds", "sr"), [(1.5, 16000), (0.25, 22050), (1.0, 8000)])
def test_output_is_mono_float32_in_range(seconds, sr):
    y = machine_sound(seconds, sr=sr, seed=3)
    assert y.dtype == np.float32
    assert y.shape == (round(seconds * sr),)
    assert np.all(np.isfinite(y))
    assert np.abs(y).max() <= 1.0


@pytest.mark.parametrize("anomaly", [None, *ANOMALY_KINDS])
def test_level_is_well_inside_full_scale(anomaly):
    y = machine_sound(3.0, seed=4, anomaly=anomaly)
    assert 0.25 < np.abs(y).max() < 0.8  # peak ~0.5: headroom, no clipping
    assert 0.05 < rms(y) < 0.2


def test_never_digitally_silent():
    y = machine_sound(3.0, seed=6)
    blocks = y[: y.size // 160 * 160].reshape(-1, 160)  # 10 ms blocks, the first one included
    assert np.sqrt(np.mean(blocks.astype(np.float64) ** 2, axis=1)).min() > 0.02
    assert np.count_nonzero(np.round(y * 32767)) > 0.99 * y.size  # survives 16-bit PCM


@pytest.mark.parametrize(
    "kwargs",
    [
        {"anomaly": "fire"},
        {"anomaly": "bearing", "onset": 2.0},
        {"anomaly": "squeal", "onset": -0.1},
        {"seconds": 0.0},
        {"seed": -1},
        {"sr": 4000},
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    kwargs = {"seconds": 1.0, **kwargs}
    with pytest.raises(ValueError):
        machine_sound(kwargs.pop("seconds"), **kwargs)


# ------------------------------------------------------------ anomalies

# Where each fault shows: bearing rings its resonance, imbalance raises the 1x
# order (rotation ~49 Hz), squeal sings around 3.15 kHz.
FAULT_BAND = {"bearing": (3400.0, 4400.0), "imbalance": (40.0, 60.0), "squeal": (2900.0, 3400.0)}


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_anomaly_leaves_the_clip_untouched_before_onset(kind):
    onset = 1.2
    normal = machine_sound(2.0, seed=8)
    faulty = machine_sound(2.0, seed=8, anomaly=kind, onset=onset)
    cut = int(onset * SR)
    np.testing.assert_array_equal(faulty[:cut], normal[:cut])
    assert not np.allclose(faulty[cut + SR // 10 :], normal[cut + SR // 10 :])


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_anomaly_band_energy_jumps_after_onset(kind, seed):
    def jump_db(y):
        band = bandpass(y, *FAULT_BAND[kind])
        before, after = band[int(0.2 * SR) : int(1.4 * SR)], band[int(1.6 * SR) : int(2.8 * SR)]
        return 10 * np.log10(rms(after) ** 2 / rms(before) ** 2)

    assert abs(jump_db(machine_sound(3.0, seed=seed))) < 1.5  # normal: steady
    assert jump_db(machine_sound(3.0, seed=seed, anomaly=kind, onset=1.5)) > 4.0


def test_bearing_fault_is_impulsive_after_onset():
    y = bandpass(machine_sound(3.0, seed=2, anomaly="bearing", onset=1.5), *FAULT_BAND["bearing"])
    before, after = y[int(0.2 * SR) : int(1.4 * SR)], y[int(1.6 * SR) : int(2.8 * SR)]
    assert abs(stats.kurtosis(before)) < 0.5  # Gaussian-like noise
    assert stats.kurtosis(after) > 0.8  # sharp, repeated impacts


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_each_anomaly_changes_the_log_power_spectrum(kind, normal_reference):
    mean, std = normal_reference
    held_out = [np.abs((band_log_power(machine_sound(2.0, seed=s)) - mean) / std).max() for s in (200, 201)]
    for seed in (300, 301):
        y = machine_sound(2.0, seed=seed, anomaly=kind)
        shift = band_log_power(y) - mean
        assert shift.max() > 3.0  # a few dB up in the fault's bands ...
        assert (shift / std).max() > 2 * max(held_out)  # ... far outside normal variation
        assert rms(y) < 1.6 * rms(machine_sound(2.0, seed=seed))  # ... but not absurdly loud


# ------------------------------------------------------------ demo recordings

SMALL = {"n_normal": 2, "n_test_normal": 1, "n_test_anomalous": 4, "seconds": 0.5}


def test_demo_recordings_layout_and_format(tmp_path):
    paths = write_demo_recordings(tmp_path, **SMALL)
    names = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert names == [
        "normal/normal_000.wav",
        "normal/normal_001.wav",
        "test/normal_000.wav",
        "test/anomaly_bearing_000.wav",
        "test/anomaly_imbalance_001.wav",
        "test/anomaly_squeal_002.wav",
        "test/anomaly_bearing_003.wav",
    ]
    for path in paths:
        info = sf.info(path)
        assert (info.format, info.subtype) == ("WAV", "PCM_16")
        assert (info.samplerate, info.channels, info.frames) == (SR, 1, SR // 2)
    # Test clips use seeds of their own: no clip repeats another.
    clips = [sf.read(p, dtype="int16")[0] for p in paths]
    assert len({c.tobytes() for c in clips}) == len(clips)


def test_demo_recordings_are_byte_identical_for_a_seed(tmp_path):
    first = write_demo_recordings(tmp_path / "a", **SMALL)
    again = write_demo_recordings(tmp_path / "b", **SMALL)
    other = write_demo_recordings(tmp_path / "c", **SMALL, seed=1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert all(p.read_bytes() != q.read_bytes() for p, q in zip(first, other, strict=True))


@pytest.mark.skipif(not RECORDINGS.is_dir(), reason="recordings/ not generated")
def test_committed_recordings_match_the_generator(tmp_path):
    # Fewer clips give a prefix of the default set, so a few files suffice.
    paths = write_demo_recordings(tmp_path, n_normal=1, n_test_normal=1, n_test_anomalous=3)
    for path in paths:
        committed = RECORDINGS / path.relative_to(tmp_path)
        assert sf.info(committed).subtype == "PCM_16"
        # Same machine: byte-identical; elsewhere libm's sin() may differ in the
        # last bit, which can flip a rare sample by one 16-bit step.
        diff = sf.read(committed, dtype="int16")[0].astype(int) - sf.read(path, dtype="int16")[0]
        assert np.abs(diff).max() <= 1, committed


def test_command_line_writes_the_set_and_reports_it(tmp_path, capsys, monkeypatch):
    small = functools.partial(synth.write_demo_recordings, n_normal=1, n_test_normal=1, n_test_anomalous=1, seconds=0.2)
    monkeypatch.setattr(synth, "write_demo_recordings", lambda root, *, seed: small(root, seed=seed))
    assert synth.main([str(tmp_path / "out"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "normal_000.wav" in out and "anomaly_bearing_000.wav" in out and "seed 3" in out
    assert len(list((tmp_path / "out").rglob("*.wav"))) == 3
