"""Turn an autoencoder's reconstruction into anomaly scores (higher = more anomalous).

A scorer looks at one clip's :class:`Reconstruction` (standardised windows ``x``,
their reconstruction ``x_hat`` and latent codes ``z``), gives every window a score,
and pools window scores into one clip score with a saved ``aggregate`` rule.

Scorers follow the estimator contract: ``fit(recons) -> self``, learned state in
attributes ending in ``_``, and ``get_state`` / ``from_state`` for the model
directory (numpy arrays go to safetensors, never pickle).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from machine_monitor.errors import ConfigError, NotFittedError
from machine_monitor.params import keyword_params


@dataclasses.dataclass
class Reconstruction:
    """What the autoencoder made of one clip's windows."""

    x: np.ndarray  # (n_windows, d) standardised input windows
    x_hat: np.ndarray  # (n_windows, d) reconstruction
    z: np.ndarray | None = None  # (n_windows, bottleneck) latent codes

    @property
    def residual(self) -> np.ndarray:
        return self.x - self.x_hat


_PCT = re.compile(r"^p(\d+(\.\d+)?)$")


def check_aggregate(method: str) -> str:
    """Validate a pooling rule: ``mean``, ``max``, ``median`` or ``pNN`` (a percentile)."""
    m = _PCT.match(method)
    if method in ("mean", "max", "median") or (m and 0 < float(m.group(1)) <= 100):
        return method
    raise ConfigError(f"aggregate must be mean, max, median or pNN (e.g. p95), not {method!r}")


def aggregate(window_scores: np.ndarray, method: str = "mean") -> float:
    """Pool per-window scores into one clip score.

    Parameters
    ----------
    window_scores : np.ndarray [shape=(n_windows,)]
    method : str
        ``mean`` (steady faults), ``max`` (one bad moment), ``median``, or ``pNN``
        (``p95``: the level exceeded by the worst 5 % of windows).
    """
    w = np.asarray(window_scores, dtype=np.float64)
    if w.size == 0:
        return float("nan")
    if method == "mean":
        return float(w.mean())
    if method == "max":
        return float(w.max())
    if method == "median":
        return float(np.median(w))
    return float(np.percentile(w, float(check_aggregate(method)[1:])))


class Scorer:
    """Base class: per-window scores pooled per clip."""

    name = "base"

    def __init__(self, *, aggregate: str = "mean"):
        self.aggregate = aggregate

    # True for scorers that learn from labelled anomalies too: ``fit(recons, y)``.
    supervised = False

    def fit(self, recons: list[Reconstruction], y=None) -> Scorer:
        """Learn from normal clips' reconstructions (``y``, 1 = anomaly: supervised scorers only)."""
        check_aggregate(self.aggregate)
        return self

    def window_scores(self, rec: Reconstruction) -> np.ndarray:
        raise NotImplementedError

    def score(self, recons: list[Reconstruction]) -> np.ndarray:
        """Clip scores ``(n_clips,)``, higher = more anomalous."""
        return np.array([aggregate(self.window_scores(r), self.aggregate) for r in recons])

    # -- persistence -------------------------------------------------------
    def get_params(self) -> dict:
        """``__init__``'s keyword parameters and their values (the one list of a scorer's parameters)."""
        return {k: getattr(self, k) for k in keyword_params(type(self))}

    def get_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass


class MSEScorer(Scorer):
    """Mean squared reconstruction error of each window (the DCASE baseline score)."""

    name = "mse"

    def window_scores(self, rec: Reconstruction) -> np.ndarray:
        return np.mean(np.square(rec.residual, dtype=np.float32), axis=1)


def ledoit_wolf(x: np.ndarray, *, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Location and Ledoit-Wolf shrunk precision of rows ``x`` ``(n, d)``, float64.

    ``sklearn.covariance.LedoitWolf().fit(x)``'s ``location_`` and ``precision_`` (up to
    float rounding), from sums accumulated chunk by chunk: memory of one chunk and two
    ``d x d`` matrices, where sklearn holds a float64 copy of ``x``, the centred copy and
    its square (50,000 x 320 rows: ~400 MB at once, the peak of training on hours of audio).
    """
    from scipy import linalg

    n, d = x.shape
    loc = np.zeros(d)
    for a in range(0, n, chunk):
        loc += x[a:a + chunk].sum(axis=0, dtype=np.float64)
    loc /= n
    s, s2 = np.zeros((d, d)), np.zeros((d, d))
    for a in range(0, n, chunk):
        c = x[a:a + chunk].astype(np.float64) - loc
        s += c.T @ c
        c *= c
        s2 += c.T @ c
    emp = s / n  # the empirical covariance
    trace = np.diag(emp)
    mu = trace.sum() / d
    # Ledoit & Wolf (2004), as sklearn.covariance.ledoit_wolf_shrinkage computes it.
    delta_ = (s**2).sum() / n**2
    beta_ = (s2.sum() / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace.sum() + d * mu**2) / d
    beta = min(beta_, delta)
    shrinkage = 0.0 if beta == 0 or d == 1 else beta / delta  # one feature: no shrinkage (as sklearn)
    cov = (1.0 - shrinkage) * emp
    cov.flat[:: d + 1] += shrinkage * mu
    return loc, linalg.pinvh(cov, check_finite=False)


class MahalanobisScorer(Scorer):
    """Mahalanobis distance of each window's residual from normal residuals.

    Learns the mean and a Ledoit-Wolf shrunk precision matrix of the residual on
    normal windows: dimensions the network always gets wrong count less than a
    rare error in a dimension it normally gets right.
    """

    name = "mahalanobis"

    def __init__(self, *, aggregate: str = "mean", max_windows: int = 50_000, seed: int = 0):
        super().__init__(aggregate=aggregate)
        self.max_windows = max_windows
        self.seed = seed

    def fit(self, recons: list[Reconstruction]) -> MahalanobisScorer:
        super().fit(recons)
        # An even sample of windows from every clip, drawn clip by clip: never all residuals at once.
        rng = np.random.default_rng(self.seed)
        per_clip = max(1, self.max_windows // max(1, len(recons)))
        parts = []
        for rec in recons:
            r = rec.residual
            parts.append(r[rng.choice(len(r), per_clip, replace=False)] if len(r) > per_clip else r)
        mean, precision = ledoit_wolf(np.concatenate(parts))
        self.mean_ = mean.astype(np.float32)
        self.precision_ = precision.astype(np.float32)
        return self

    def window_scores(self, rec: Reconstruction) -> np.ndarray:
        if not hasattr(self, "precision_"):
            raise NotFittedError("MahalanobisScorer is not fitted")
        d = rec.residual - self.mean_
        return np.einsum("ij,ij->i", d @ self.precision_, d)

    def get_arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean_, "precision": self.precision_}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.mean_, self.precision_ = arrays["mean"], arrays["precision"]
