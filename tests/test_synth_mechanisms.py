"""Specification of the SYNTHETIC fault-mechanism generator (``synth.mechanism_sound``).

The generalisation benchmark stands on it: four machine kinds, six fault mechanisms, each
doing what its name says and nothing else. Checked with plain numpy/scipy, independently of
the product's features.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from scipy import signal, stats

from machine_monitor.synth import (
    _KINDS,
    MACHINE_KINDS,
    MECHANISMS,
    mechanism_pairs,
    mechanism_sound,
    write_mechanism_set,
)

SR = 16000


def band_db(y: np.ndarray, lo: float, hi: float) -> float:
    """Mean power (dB) of ``y`` between ``lo`` and ``hi`` Hz (Welch)."""
    f, p = signal.welch(y.astype(np.float64), fs=SR, nperseg=4096)
    return float(10 * np.log10(p[(f >= lo) & (f <= hi)].mean()))


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def test_pairs_are_every_kind_times_every_mechanism_clicks_only_where_there_are_clicks():
    pairs = mechanism_pairs()
    assert len(pairs) == len(set(pairs)) == 4 * 5 + 2
    assert {k for k, _ in pairs} == set(MACHINE_KINDS) and {m for _, m in pairs} == set(MECHANISMS)
    assert {k for k, m in pairs if m == "weak_clicks"} == {"valve", "texture"}


@pytest.mark.parametrize("kind", MACHINE_KINDS)
def test_each_kind_is_a_sane_deterministic_machine(kind):
    a = mechanism_sound(4.0, kind=kind, seed=3)
    np.testing.assert_array_equal(a, mechanism_sound(4.0, kind=kind, seed=3))
    assert a.dtype == np.float32 and a.shape == (4 * SR,)
    assert 0.005 < rms(a) < 0.2 and np.abs(a).max() < 0.9
    b = mechanism_sound(4.0, kind=kind, seed=4)
    assert rms(a - b) > 0.3 * rms(a)  # another clip of the machine, not a copy ...
    for lo, hi in ((100, 400), (500, 2000), (2000, 6000)):  # ... with the same long-term spectrum
        assert abs(band_db(a, lo, hi) - band_db(b, lo, hi)) < 4.0


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "pump"}, {"kind": "hum", "mechanism": "weak_clicks"}, {"kind": "fan", "mechanism": "fire"},
     {"kind": "hum", "severity": 0.0}, {"kind": "hum", "seed": -1}, {"kind": "hum", "sr": 8000}],
)
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        mechanism_sound(1.0, **kwargs)


def pair(kind: str, mechanism: str, seconds: float = 3.0, seed: int = 11, severity: float = 1.0):
    return (mechanism_sound(seconds, kind=kind, seed=seed),
            mechanism_sound(seconds, kind=kind, mechanism=mechanism, seed=seed, severity=severity))


@pytest.mark.parametrize("kind", MACHINE_KINDS)
def test_level_raises_one_band_by_a_few_db_and_leaves_the_others(kind):
    centre, q = _KINDS[kind].level_band
    normal, faulty = pair(kind, "level")
    inside = band_db(faulty, centre * 0.97, centre * 1.03) - band_db(normal, centre * 0.97, centre * 1.03)
    assert 1.5 < inside < 4.0
    far = (centre * 3, centre * 4) if centre < 1500 else (centre / 6, centre / 4)
    assert abs(band_db(faulty, *far) - band_db(normal, *far)) < 0.5


@pytest.mark.parametrize("kind", MACHINE_KINDS)
def test_knocks_are_a_few_short_impacts_at_the_knock_resonance(kind):
    normal, faulty = pair(kind, "knocks")
    added = faulty.astype(np.float64) - normal
    assert stats.kurtosis(added) > 20  # impulsive: a few ringing impacts, silence between
    f, p = signal.welch(added, fs=SR, nperseg=2048)
    assert abs(f[np.argmax(p)] - _KINDS[kind].knock_hz) < 0.1 * _KINDS[kind].knock_hz
    assert np.mean(np.abs(added) > 0.05 * np.abs(added).max()) < 0.1


@pytest.mark.parametrize("kind", ["valve", "texture"])
def test_weak_clicks_lower_the_click_peaks(kind):
    normal, faulty = pair(kind, "weak_clicks", seconds=6.0)
    # In the clicks' band the loudest moments are the clicks: they drop, the background does not.
    lo, hi = {"valve": (1500.0, 2100.0), "texture": (200.0, 450.0)}[kind]
    sos = signal.butter(4, [lo, hi], btype="bandpass", output="sos", fs=SR)
    env = lambda y: np.abs(signal.hilbert(signal.sosfiltfilt(sos, y.astype(np.float64))))  # noqa: E731
    assert np.percentile(env(faulty), 99.9) < 0.85 * np.percentile(env(normal), 99.9)  # -4 dB, some missing
    assert abs(np.median(env(faulty)) / np.median(env(normal)) - 1) < 0.1


@pytest.mark.parametrize("kind", MACHINE_KINDS)
def test_modulation_adds_a_slow_envelope_fluctuation(kind):
    normal, faulty = pair(kind, "modulation", seconds=4.0)
    ratio = faulty.astype(np.float64) / np.where(np.abs(normal) > 1e-4, normal, np.nan)
    gain = ratio[np.isfinite(ratio)]
    assert 0.1 < np.std(gain) < 0.3 and abs(np.mean(gain) - 1) < 0.05  # depth ~0.2 around unity
    assert abs(rms(faulty) / rms(normal) - 1) < 0.05  # the mean level barely moves


@pytest.mark.parametrize("kind", MACHINE_KINDS)
def test_squeal_adds_a_narrow_tone_at_the_squeal_pitch(kind):
    normal, faulty = pair(kind, "squeal")
    hz = _KINDS[kind].squeal_hz

    def peak_psd_db(y):
        f, p = signal.welch(y.astype(np.float64), fs=SR, nperseg=8192)
        return 10 * np.log10(p[(f > hz * 0.96) & (f < hz * 1.04)].max())

    assert peak_psd_db(faulty) - peak_psd_db(normal) > 6.0  # a tone stands out of the noise
    assert abs(band_db(faulty, hz * 1.3, hz * 1.6) - band_db(normal, hz * 1.3, hz * 1.6)) < 0.5


@pytest.mark.parametrize("kind", MACHINE_KINDS)
def test_drift_moves_one_harmonic_up_late_in_the_clip(kind):
    spec = _KINDS[kind]
    normal, faulty = pair(kind, "drift", seconds=6.0)
    f_h = spec.drift_order * spec.harmonic_hz

    def peak_hz(y):
        f, p = signal.welch(y.astype(np.float64), fs=SR, nperseg=8192)
        band = (f > f_h * 0.9) & (f < f_h * 1.4)
        return f[band][np.argmax(p[band])]

    head = slice(0, SR)
    tail = slice(-2 * SR, None)  # the glide holds over the last third
    assert abs(peak_hz(faulty[head]) - peak_hz(normal[head])) < 0.02 * f_h + 4
    assert peak_hz(faulty[tail]) - peak_hz(normal[tail]) > 0.6 * spec.drift * 0.03 * f_h


def test_severity_scales_the_fault():
    normal, mild = pair("hum", "squeal", severity=0.5)
    _, strong = pair("hum", "squeal", severity=2.0)
    assert rms(strong - normal) == pytest.approx(4 * rms(mild - normal), rel=1e-3)


def test_write_mechanism_set_writes_a_labelled_synthetic_split(tmp_path):
    split = write_mechanism_set(tmp_path, kind="valve", n_train=2, n_test_normal=1, n_test_anomalous=1, seconds=0.5)
    assert split["synthetic"] is True and split["name"] == "synthetic-valve"
    assert len(split["train"]) == 2
    mechs = [m for _, _, m in split["test"]]
    assert mechs == ["normal", *[m for k, m in mechanism_pairs() if k == "valve"]]
    assert [lab for _, lab, _ in split["test"]] == [0] + [1] * (len(mechs) - 1)
    for path in split["train"] + [p for p, _, _ in split["test"]]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, SR // 2, "PCM_16")
    json.dumps(split)  # serialisable as a split file
