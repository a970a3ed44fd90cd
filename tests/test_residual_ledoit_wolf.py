"""The Mahalanobis scorer's Ledoit-Wolf from chunked sums equals sklearn's, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from machine_monitor.scorers.residual import ledoit_wolf


@pytest.mark.parametrize("n, d", [(20_000, 320), (300, 128), (5, 3), (100, 1)])
def test_chunked_ledoit_wolf_equals_sklearn(n, d):
    rng = np.random.default_rng(n + d)
    x = (rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + 1).astype(np.float32)
    ref = LedoitWolf().fit(x.astype(np.float64))
    mean, precision = ledoit_wolf(x, chunk=1000)  # several chunks
    np.testing.assert_allclose(mean, ref.location_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(precision, ref.precision_, rtol=0, atol=1e-10 * np.abs(ref.precision_).max())
