"""Training in bounded memory (issue 14): the calibration streams long recordings and scores a
long clip unit piece by piece, with the scores it would give the whole unit at once.

``benchmarks/bench_fit_memory.py --long-hours 3`` measures the memory; these tests check that
the bounded-memory paths compute the same numbers, on short synthetic audio with small pieces.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.detectors import calibration
from machine_monitor.detectors.calibration import (
    _Held,
    _Reread,
    _score_in_pieces,
    _Signals,
    _stream_scores,
    _Streamed,
    _unit_scores,
)
from machine_monitor.detectors.multiview import MultiViewDetector
from machine_monitor.errors import AudioReadError
from machine_monitor.synth import mechanism_sound
from machine_monitor.threshold import block_levels_db

pytestmark = pytest.mark.slow  # one small multiview fit (~7 s) shared by the module

# Equality is checked, not accuracy: a few epochs.
FAST = {"folds": 2, "epochs": 3, "patience": 1, "frame_epochs": 1, "frame_patience": 1, "seed": 0}


@pytest.fixture(scope="module")
def det() -> MultiViewDetector:
    clips = [mechanism_sound(3.0, kind="valve", seed=10 + i) for i in range(4)]
    d = MultiViewDetector(**FAST)
    d.calibrate_on_fit = False  # the parts blind to each fold are what is checked here
    return d.fit(clips)


@pytest.fixture(scope="module")
def long_signal() -> np.ndarray:
    # 75 s: a long recording (over the minute held in memory) of varied sound.
    return np.concatenate([mechanism_sound(15.0, kind="valve", seed=s, mechanism=m)
                           for s, m in enumerate([None, "knocks", None, "squeal", None])]).astype(np.float32)


@pytest.fixture(scope="module")
def long_file(tmp_path_factory, long_signal):
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, long_signal, 16_000, subtype="FLOAT")
    return path


@pytest.mark.parametrize("fold", [None, 0, 1])
def test_a_long_unit_scored_piece_by_piece_equals_the_whole_unit(det, long_signal, monkeypatch, fold):
    # Pieces of ~5 s: a 75 s unit in 15 pieces; the last piece holds the window anchored to the end.
    monkeypatch.setattr(calibration, "PIECE_SAMPLES", 5 * 16_000)
    windows = det.window_scores if fold is None else functools.partial(det.window_scores, fold=fold)
    whole = det.score_signal(long_signal, fold=fold)
    for a, b in [(0, long_signal.size), (8_192 * 3, long_signal.size - 5_000)]:
        got = _score_in_pieces(det, windows, _Held(long_signal), a, b)
        want = whole if (a, b) == (0, long_signal.size) else det.score_signal(long_signal[a:b], fold=fold)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_unit_scores_use_pieces_only_for_the_detectors_own_pooled_scorer(det, long_signal, monkeypatch):
    monkeypatch.setattr(calibration, "PIECE_SAMPLES", 5 * 16_000)
    calls = []

    def opaque(y):  # any other scorer sees each unit whole
        calls.append(y.size)
        return float(np.mean(y ** 2))

    rec = _Held(long_signal)
    assert _unit_scores(opaque, rec, long_signal.size) == [pytest.approx(float(np.mean(long_signal ** 2)))]
    assert calls == [long_signal.size]
    scorer = functools.partial(det.score_signal, fold=1)
    assert _unit_scores(scorer, rec, long_signal.size) == [pytest.approx(scorer(long_signal), rel=1e-5, abs=1e-5)]


def test_a_long_file_is_streamed_with_the_samples_and_levels_of_the_whole(det, long_file, long_signal):
    rec = _Streamed(det, long_file, str(long_file))
    assert rec.size == long_signal.size
    np.testing.assert_array_equal(rec.levels(16_000), block_levels_db(long_signal, sr=16_000))
    # Forward reads of any length, skips, and a read that goes back (the last, end-aligned unit).
    for a, b in [(0, 1000), (500, 400_000), (900_000, 1_100_000), (1_150_000, 1_200_000), (1_190_000, 1_300_000),
                 (10, 20), (long_signal.size - 100, long_signal.size + 50)]:
        np.testing.assert_array_equal(rec.get(a, b), long_signal[a:b])
    # Only files longer than a minute are streamed; shorter ones are held.
    signals = _Signals(det)
    signals.add(long_file, 0)
    signals.add(long_signal[:16_000 * 5], 1)
    assert isinstance(signals[0], _Streamed) and isinstance(signals[1], _Held)


def test_a_long_file_that_cannot_be_used_is_refused_when_added(det, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16_000 * 70, dtype=np.float32), 16_000, subtype="FLOAT")
    bad = tmp_path / "nan.wav"
    y = np.full(16_000 * 70, 0.1, dtype=np.float32)
    y[123_456] = np.nan
    sf.write(bad, y, 16_000, subtype="FLOAT")
    for path, why in [(silent, "silent"), (bad, "non-finite")]:
        with pytest.raises(AudioReadError, match=why):
            _Signals(det).add(path, 0)


def test_a_recording_not_held_is_loaded_once_for_all_its_live_windows(det, long_signal, monkeypatch):
    signals = _Signals(det)
    signals.add(long_signal, 0)  # an array over a minute: not held, loaded when used
    signals.add(long_signal[:5 * 16_000], 1)  # a short one: held
    assert isinstance(signals[0], _Reread) and isinstance(signals[1], _Held)
    loads, load = [], det.load_signal
    monkeypatch.setattr(det, "load_signal", lambda clip, i=0: loads.append(i) or load(clip, i))
    scores = _stream_scores(lambda y: float(np.abs(y).mean()), signals[0], 10 * 16_000, 8_000)
    assert scores.size == (long_signal.size - 10 * 16_000) // 8_000 + 1
    np.testing.assert_allclose(scores[3], np.abs(long_signal[24_000:184_000]).mean(), rtol=1e-6)
    assert loads == [0]  # 131 windows, one load
    signals[1].get(0, 10)
    signals[0].levels(16_000)
    assert loads == [0]  # still the recording in use
