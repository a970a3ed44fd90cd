"""Post-classifiers on the autoencoder's reconstruction difference ``x - x_hat``.

Instead of one number per window (the reconstruction error), a post-classifier
describes a whole clip's residuals by a fixed-length feature vector and puts a
scikit-learn estimator on top:

* ``hist-rf``: random forest on **difference histograms**: the residual, standardised
  per dimension with statistics of normal clips, binned with fixed edges over a
  fixed range, one normalised histogram per group of adjacent feature bands, over the
  clip's worst windows. Needs labelled anomalies.
* ``diff-rf``: random forest on the **difference vector**: mean and max over windows of
  ``|x - x_hat|`` per dimension. Needs labelled anomalies.
* ``iforest``: isolation forest on the same difference histograms, from normal clips
  only (unsupervised).

They are :class:`~machine_monitor.scorers.residual.Scorer` subclasses registered in
``scorers.registry.SCORERS``: the clip score is the estimator's output (forest: probability of the
anomaly class; isolation forest: ``-score_samples``), higher = more anomalous.
``window_scores`` is the standardised residual energy of each window (the ranking
that picks the clip's worst windows), for localisation within a clip.

:func:`fit_supervised` fits a supervised one and gives out-of-fold scores, so a
threshold can be set from normal clips no forest saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from machine_monitor.errors import ConfigError, NotFittedError
from machine_monitor.scorers.residual import Reconstruction, Scorer


def difference_histogram(z: np.ndarray, *, context: int, bins: int = 16, value_range: float = 10.0,
                         bands: int = 64) -> np.ndarray:
    """Normalised histograms of residual values, one per group of adjacent bands.

    Parameters
    ----------
    z : np.ndarray [shape=(n_windows, context * frame_dims)]
        Standardised residual windows (``context`` frames concatenated).
    context : int
        Frames per window; ``frame_dims = z.shape[1] // context``.
    bins : int
        Equal-width bins over ``[-value_range, value_range]``; values outside count in
        the outermost bins.
    bands : int
        Groups of adjacent frame dimensions (mel bands); each gets its own histogram.

    Returns
    -------
    np.ndarray [shape=(bands * bins,), dtype=float32]
        Each group's counts divided by its number of values (each group sums to 1).
    """
    n, d = z.shape
    if d % context:
        raise ConfigError(f"window of {d} dims is not {context} frames of equal size")
    frame_dims = d // context
    if not 1 <= bands <= frame_dims:
        raise ConfigError(f"bands must be in [1, {frame_dims}], not {bands!r}")
    f = z.reshape(n * context, frame_dims)
    idx = np.floor((f + value_range) * (bins / (2.0 * value_range))).astype(np.int64)
    np.clip(idx, 0, bins - 1, out=idx)
    band_of = np.repeat(np.arange(bands), [len(b) for b in np.array_split(np.arange(frame_dims), bands)])
    flat = (band_of[None, :] * bins + idx).ravel()
    counts = np.bincount(flat, minlength=bands * bins).reshape(bands, bins).astype(np.float64)
    return (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)).ravel().astype(np.float32)


def _positive_class_proba(forest, X: np.ndarray) -> np.ndarray:
    proba = forest.predict_proba(X)
    hit = np.flatnonzero(forest.classes_ == 1)
    return proba[:, hit[0]] if hit.size else np.zeros(len(X))


class ClipFeatureScorer(Scorer):
    """Base of post-classifiers: clip features from residuals, an estimator on top.

    Parameters
    ----------
    context : int
        Frames per window (set from the detector's feature configuration).
    n_estimators : int
        Trees of the forest.
    seed : int
        Seeds the forest.
    """

    name = "clip-features"
    supervised = False  # True: fit needs labels y (1 = anomaly)

    def __init__(self, *, aggregate: str = "mean", context: int = 5, n_estimators: int = 500, seed: int = 0):
        super().__init__(aggregate=aggregate)
        self.context = context
        self.n_estimators = n_estimators
        self.seed = seed

    # -- features ----------------------------------------------------------
    def _standardised(self, rec: Reconstruction) -> np.ndarray:
        return (rec.residual - self.residual_mean_) / self.residual_std_

    def window_scores(self, rec: Reconstruction) -> np.ndarray:
        """Standardised residual energy of each window ``(n_windows,)``."""
        self._check_fitted()
        return np.mean(np.square(self._standardised(rec)), axis=1)

    def clip_features(self, rec: Reconstruction) -> np.ndarray:
        raise NotImplementedError

    def features(self, recons: Sequence[Reconstruction]) -> np.ndarray:
        """Clip feature matrix ``(n_clips, n_features)`` (one pass over ``recons``)."""
        return np.stack([self.clip_features(r) for r in recons])

    # -- fitting -----------------------------------------------------------
    def _fit_standardisation(self, recons: Sequence[Reconstruction], normal: np.ndarray) -> None:
        # Per-dimension mean and std of the residual over normal windows (float64 sums).
        n, s, ss = 0, 0.0, 0.0
        for i in np.flatnonzero(normal):
            r = recons[i].residual.astype(np.float64)
            n, s, ss = n + len(r), s + r.sum(axis=0), ss + np.square(r).sum(axis=0)
        mean = s / n
        self.residual_mean_ = mean.astype(np.float32)
        self.residual_std_ = np.maximum(np.sqrt(np.maximum(ss / n - mean**2, 0.0)), 1e-6).astype(np.float32)

    def _labels(self, recons, y) -> np.ndarray:
        if y is None:
            if self.supervised:
                raise ConfigError(f"scorer {self.name!r} is supervised: it needs labelled anomalies "
                                  "(fit(recons, y) with labelled anomalies)")
            return np.zeros(len(recons), dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        if y.shape != (len(recons),) or not np.isin(y, (0, 1)).all():
            raise ConfigError(f"labels must be 0 (normal) or 1 (anomaly), one per clip ({len(recons)})")
        if self.supervised and len(np.unique(y)) < 2:
            raise ConfigError(f"scorer {self.name!r} needs both normal and anomalous clips to learn from")
        if not (y == 0).any():
            raise ConfigError("need at least one normal clip")
        return y

    def fit(self, recons: Sequence[Reconstruction], y=None) -> ClipFeatureScorer:
        """Learn residual statistics from normal clips, then the estimator on clip features.

        ``y``: 1 = anomaly, 0 = normal, one per clip; required by supervised scorers,
        optional otherwise (an unsupervised scorer then learns from the normal clips only).
        """
        super().fit(recons)
        y = self._labels(recons, y)
        self._fit_standardisation(recons, y == 0)
        X = self.features(recons)
        self.estimator_ = self._fit_estimator(X, y)
        return self

    def _fit_estimator(self, X: np.ndarray, y: np.ndarray):
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "residual_mean_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted")

    def score(self, recons: Sequence[Reconstruction]) -> np.ndarray:
        """Clip scores ``(n_clips,)`` from the estimator; higher = more anomalous."""
        self._check_fitted()
        if len(recons) == 0:
            return np.zeros(0)
        return self._estimator_score(self.features(recons)).astype(np.float64)

    def _estimator_score(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- persistence -------------------------------------------------------
    def get_arrays(self) -> dict[str, np.ndarray]:
        return {"residual_mean": self.residual_mean_, "residual_std": self.residual_std_}

    def set_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.residual_mean_, self.residual_std_ = arrays["residual_mean"], arrays["residual_std"]

    def get_estimators(self) -> dict:
        return {"estimator": self.estimator_}

    def set_estimators(self, estimators: dict) -> None:
        self.estimator_ = estimators["estimator"]


class _HistogramFeatures(ClipFeatureScorer):
    """Difference histograms over the worst ``top_fraction`` of a clip's windows."""

    def __init__(self, *, aggregate: str = "mean", context: int = 5, n_estimators: int = 500, seed: int = 0,
                 bins: int = 16, value_range: float = 10.0, bands: int = 64, top_fraction: float = 0.1):
        super().__init__(aggregate=aggregate, context=context, n_estimators=n_estimators, seed=seed)
        self.bins = bins
        self.value_range = value_range
        self.bands = bands
        self.top_fraction = top_fraction

    def fit(self, recons, y=None):
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"top_fraction must be in (0, 1], not {self.top_fraction!r}")
        return super().fit(recons, y)

    def clip_features(self, rec: Reconstruction) -> np.ndarray:
        # Faults of a valve or a bearing last a moment: most windows of a faulty clip
        # look normal, so the histogram is taken over the windows that fit worst.
        z = self._standardised(rec)
        k = max(1, int(np.ceil(self.top_fraction * len(z))))
        if k < len(z):
            energy = np.mean(np.square(z), axis=1)
            z = z[np.argpartition(-energy, k - 1)[:k]]
        return difference_histogram(z, context=self.context, bins=self.bins, value_range=self.value_range,
                                    bands=self.bands)


class _ForestMixin:
    supervised = True

    def _fit_estimator(self, X, y):
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.n_estimators, class_weight="balanced", n_jobs=1,
                                      random_state=self.seed).fit(X, y)

    def _estimator_score(self, X):
        return _positive_class_proba(self.estimator_, X)


class HistogramForestScorer(_ForestMixin, _HistogramFeatures):
    """Random forest on difference histograms (supervised); score = P(anomaly)."""

    name = "hist-rf"


class DifferenceForestScorer(_ForestMixin, ClipFeatureScorer):
    """Random forest on the difference vector: mean and max over windows of ``|x - x_hat|``."""

    name = "diff-rf"

    def clip_features(self, rec: Reconstruction) -> np.ndarray:
        a = np.abs(rec.residual)
        return np.concatenate([a.mean(axis=0), a.max(axis=0)]).astype(np.float32)


class HistogramIsolationForestScorer(_HistogramFeatures):
    """Isolation forest on difference histograms of normal clips (unsupervised).

    sklearn's ``score_samples`` is higher for normal points; the score is its
    negation, so higher = more anomalous as everywhere else.
    """

    name = "iforest"
    supervised = False

    def __init__(self, *, aggregate: str = "mean", context: int = 5, n_estimators: int = 500, seed: int = 0,
                 bins: int = 8, value_range: float = 10.0, bands: int = 16, top_fraction: float = 0.1):
        # Coarser than the forest's histograms: an isolation forest only splits within the
        # range it saw, so bins that normal clips leave empty would never count.
        super().__init__(aggregate=aggregate, context=context, n_estimators=n_estimators, seed=seed, bins=bins,
                         value_range=value_range, bands=bands, top_fraction=top_fraction)

    def _fit_estimator(self, X, y):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(X[y == 0])

    def _estimator_score(self, X):
        return -self.estimator_.score_samples(X)


POST_CLASSIFIERS = (HistogramForestScorer, DifferenceForestScorer, HistogramIsolationForestScorer)


def _take(recons: Sequence[Reconstruction], ids) -> Sequence[Reconstruction]:
    # A lazy sequence (the detector's) stays lazy: reconstructions are made when read.
    return recons.subset(ids) if hasattr(recons, "subset") else [recons[i] for i in ids]


def out_of_fold_scores(scorer: ClipFeatureScorer, recons: Sequence[Reconstruction], y, *, n_splits: int = 5,
                       seed: int = 0) -> np.ndarray:
    """Score every clip with a copy of ``scorer`` fitted on the other folds only.

    Stratified, shuffled ``n_splits``-fold split seeded by ``seed`` (fewer folds when
    a class has fewer clips). Each copy learns its own residual statistics too, so
    no held-out clip influences its own score.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, dtype=np.int64)
    k = min(n_splits, int(np.bincount(y, minlength=2).min()))
    if k < 2:
        raise ConfigError("need at least 2 clips of each class for out-of-fold scores")
    out = np.empty(len(y), dtype=np.float64)
    for fit_ids, held in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        part = type(scorer)(**scorer.get_params()).fit(_take(recons, fit_ids), y[fit_ids])
        out[held] = part.score(_take(recons, held))
    return out


def fit_supervised(scorer: ClipFeatureScorer, recons: Sequence[Reconstruction], y, *, n_splits: int = 5,
                   seed: int = 0) -> tuple[ClipFeatureScorer, np.ndarray]:
    """Fit ``scorer`` on labelled clips; also return every clip's out-of-fold score.

    Returns the scorer fitted on every clip, and ``(n_clips,)`` scores, each from a
    scorer fitted without that clip: a threshold set from the normal clips' scores is
    not fooled by the forest having memorised its own training clips.
    """
    oof = out_of_fold_scores(scorer, recons, y, n_splits=n_splits, seed=seed)
    return scorer.fit(recons, y), oof
