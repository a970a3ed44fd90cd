"""Feature functions: shapes, the absolute log reference, and frame stacking."""

from __future__ import annotations

import numpy as np
import pytest

from machine_monitor.errors import ConfigError
from machine_monitor.features import (
    FeatureConfig,
    frames,
    gather_windows,
    logmel_frames,
    peak_windows,
    raw_frames,
    span_starts,
    stack_frames,
    window_index,
)
from tests.conftest import hum


def test_logmel_matches_librosa_uncentred_power_mel():
    librosa = pytest.importorskip("librosa")
    y = hum(2.0)
    ours = logmel_frames(y)
    ref = librosa.feature.melspectrogram(y=y, sr=16_000, n_fft=1024, hop_length=512, n_mels=128, center=False)
    assert ours.shape == (1 + (32_000 - 1024) // 512, 128) == ref.T.shape
    assert np.allclose(ours, 10 * np.log10(ref.T + 1e-10), atol=1e-3)


def test_logmel_uses_an_absolute_reference_so_louder_looks_different():
    y = hum(1.0)
    quiet, loud = logmel_frames(y), logmel_frames(10 * y)  # +20 dB
    assert np.allclose(loud - quiet, 20.0, atol=0.05)


def test_logmel_of_too_short_signal_has_no_frames():
    assert logmel_frames(np.zeros(1000, dtype=np.float32)).shape == (0, 128)


def test_raw_frames_are_consecutive_blocks():
    y = np.arange(1000, dtype=np.float32)
    f = raw_frames(y, hop_length=256)
    assert f.shape == (3, 256) and f[1, 0] == 256


def test_stack_frames_concatenates_consecutive_frames():
    f = np.arange(12, dtype=np.float32).reshape(6, 2)
    w = stack_frames(f, context=3)
    assert w.shape == (4, 6)
    assert w[1].tolist() == [2, 3, 4, 5, 6, 7]
    assert stack_frames(f[:2], context=3).shape == (0, 6)


def test_gathered_windows_never_cross_clip_boundaries():
    a, b = np.zeros((4, 2), np.float32), np.ones((3, 2), np.float32)
    starts = window_index(np.array([4, 3]), context=3)
    assert starts.tolist() == [0, 1, 4]
    w = gather_windows(np.concatenate([a, b]), starts, context=3)
    assert np.array_equal(w, np.concatenate([stack_frames(a, context=3), stack_frames(b, context=3)]))


def test_default_configs_match_the_dcase_front_end_and_the_raw_frames():
    logmel, raw = FeatureConfig.for_kind("logmel"), FeatureConfig.for_kind("raw")
    dcase = (logmel.n_fft, logmel.hop_length, logmel.n_mels, logmel.context, logmel.window_dims)
    assert dcase == (1024, 512, 128, 5, 640)
    assert logmel.min_samples == 1024 + 4 * 512
    assert raw.window_dims == 1024 and raw.min_samples == 1024
    y = hum(1.0)
    assert frames(y, raw).shape == (16_000 // 256, 256)
    assert frames(y, logmel).shape[1] == 128


def test_bad_feature_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="'mfcc'"):
        FeatureConfig(kind="mfcc")


@pytest.mark.parametrize("kind, seconds", [("peak", 10.0), ("peak", 30.0), ("logmel", 2.0), ("raw", 1.0)])
def test_window_starts_give_one_start_per_network_window(kind, seconds):
    cfg = FeatureConfig.for_kind(kind)
    y = hum(seconds)
    n_windows = stack_frames(cfg.units(frames(y, cfg)), context=cfg.stack).shape[0]
    starts = cfg.window_starts(y.size)
    assert starts.shape == (n_windows,) and starts[0] == 0
    # The last window ends inside the signal, one window length after its start.
    assert starts[-1] + cfg.min_samples <= y.size


def test_peak_spans_take_each_bands_maximum_and_end_at_the_last_frame():
    f = np.arange(20, dtype=np.float32)[:, None] * np.array([[1.0, -1.0]], np.float32)
    w = peak_windows(f, context=8, stride=5)
    assert span_starts(20, context=8, stride=5).tolist() == [0, 5, 10, 12]
    assert w.tolist() == [[7, 0], [12, -5], [17, -10], [19, -12]]


# -- the default's peak view: a soft maximum ---------------------------------------------------
def test_soft_peak_is_rank_pooling_of_the_loudest_frames_and_the_maximum_at_decay_zero():
    from numpy.lib.stride_tricks import sliding_window_view

    from machine_monitor.features import rank_pooled_windows, rank_weights, soft_peak_windows

    f = np.random.default_rng(0).normal(size=(700, 16)).astype(np.float32)
    spans = sliding_window_view(f, 311, axis=0)[span_starts(700, context=311, stride=16)]  # (n, d, 311)
    by_rank = -np.sort(-spans, axis=2) @ rank_weights(311, decay=0.3)  # TWFR: every frame by its rank
    everything = soft_peak_windows(f, context=311, stride=16, decay=0.3, top=311)
    np.testing.assert_allclose(everything, by_rank, atol=1e-5)
    np.testing.assert_allclose(rank_pooled_windows(f, context=311, stride=16, decay=0.3), by_rank, atol=1e-5)
    # Eight frames carry all but 0.3 ** 8 of the weight; chunks of spans change nothing.
    np.testing.assert_allclose(soft_peak_windows(f, context=311, stride=16), everything, atol=1e-3)
    np.testing.assert_array_equal(soft_peak_windows(f, context=311, stride=16, chunk=3),
                                  soft_peak_windows(f, context=311, stride=16))
    np.testing.assert_array_equal(soft_peak_windows(f, context=311, stride=16, decay=0.0),
                                  peak_windows(f, context=311, stride=16))
    assert soft_peak_windows(f[:100], context=311).shape == (0, 16)
    np.testing.assert_array_equal(f, np.random.default_rng(0).normal(size=(700, 16)).astype(np.float32))  # untouched


def test_soft_peak_moves_less_than_the_maximum_for_one_loud_frame_and_sees_several_clicks():
    from machine_monitor.features import soft_peak_windows

    base = np.zeros((311, 1), dtype=np.float32)
    one = base.copy()
    one[100] = 8.0  # one frame's noise
    five = base.copy()
    five[[20, 80, 140, 200, 260]] = 6.0  # five clicks, weaker
    s_one, s_five = (soft_peak_windows(x, context=311)[0, 0] for x in (one, five))
    m_one, m_five = (peak_windows(x, context=311)[0, 0] for x in (one, five))
    assert m_one > m_five and s_five > s_one  # the maximum ranks the single frame first, the soft one the clicks
