"""Training in bounded memory (issue 14): a long clip's member views are built piece by piece
(:func:`machine_monitor.screening.rows_in_pieces`) with the rows the whole log-mel gives."""

from __future__ import annotations

import numpy as np
import pytest

from machine_monitor.detectors.multiview import FRAME_CONTEXT, FRAME_TRAIN_STEP, VIEWS, MultiViewDetector
from machine_monitor.features import FeatureConfig
from machine_monitor.screening import rows_in_pieces


@pytest.fixture(scope="module")
def det() -> MultiViewDetector:
    d = MultiViewDetector()
    d.feature_config_ = FeatureConfig.for_kind("peak").fitted_to(311)  # what fit sets for 10 s clips
    return d


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("n_frames", [311, 312, 2_000, 2_047, 5_003])
def test_view_rows_piece_by_piece_equal_the_whole_log_mel(det, view, n_frames):
    rng = np.random.default_rng(n_frames)
    # dB-like log-mel with slow drifts and clicks: every view has something to read.
    f = (-60 + 10 * np.sin(np.arange(n_frames) / 50)[:, None] + 3 * rng.standard_normal((n_frames, 128))
         + 20 * (rng.random((n_frames, 128)) > 0.99)).astype(np.float32)
    cfg = det.feature_config
    span, stride = (cfg.context, cfg.stride) if view != "frame" else (FRAME_CONTEXT, FRAME_TRAIN_STEP)

    def rows(g):
        return det.view_units(view, g, step=FRAME_TRAIN_STEP)

    whole = rows(f)
    # Pieces of 512 frames: a 5,003-frame log-mel in ~10 pieces, the last ending on the anchored span.
    parts = list(rows_in_pieces(rows, f, span=span, stride=stride, frames_per_piece=512))
    assert len(parts) == max(1, -(-((n_frames - span) // stride + 1) // (512 // stride)))
    got = np.concatenate(parts)
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, rtol=0, atol=2e-4)  # float rounding only (std: sums of pieces)
