"""Baselines without a network: one-class SVM and isolation forest on segment statistics.

Each window here is a *segment* of ``context`` log-mel frames (32 frames = 1.06 s by
default) described by the time-mean and time-std of every standardised mel band
(``2 * n_mels`` values). The model learns normal segments from the training clips;
a clip's score pools its segment scores with ``aggregate``. Both wrap sklearn's
``score_samples`` (higher = more normal) as ``-score_samples``: higher = more anomalous.
"""

from __future__ import annotations

import numpy as np

from machine_monitor.detectors.windowed import WindowedDetector, WindowSampler


def segment_stats(windows: np.ndarray, *, context: int) -> np.ndarray:
    """Time-mean and time-std of each band over a window's frames.

    Parameters
    ----------
    windows : np.ndarray [shape=(n, context * frame_dims)]

    Returns
    -------
    np.ndarray [shape=(n, 2 * frame_dims), dtype=float32]
    """
    w = windows.reshape(len(windows), context, -1)
    return np.concatenate([w.mean(axis=1), w.std(axis=1)], axis=1).astype(np.float32)


class _SegmentModelDetector(WindowedDetector):
    """A scikit-learn novelty detector on segment statistics."""

    def __init__(self, *, context: int = 32, max_segments: int = 5000, **kwargs):
        super().__init__(context=context, **kwargs)
        self.max_segments = max_segments

    def _make_estimator(self):
        raise NotImplementedError

    def _fit_model(self, train: WindowSampler, val: WindowSampler) -> list[dict]:
        # Overlapping segments are near copies: a seeded sample of them is enough.
        X = segment_stats(train.sample(int(self.max_segments), seed=self.seed), context=self.feature_config_.context)
        self.estimator_ = self._make_estimator().fit(X)
        return [{"n_segments": len(X)}]

    def _window_scores(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros(0)
        X = segment_stats(windows, context=self.feature_config_.context)
        return -self.estimator_.score_samples(X).astype(np.float64)

    def _estimators(self) -> dict:
        return {"estimator": self.estimator_}

    def _set_estimators(self, estimators: dict) -> None:
        self.estimator_ = estimators["estimator"]


class OCSVMDetector(_SegmentModelDetector):
    """One-class SVM (RBF, ``nu``) on standardised segment statistics."""

    kind = "ocsvm"
    def __init__(self, *, nu: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.nu = nu

    def _make_estimator(self):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import OneClassSVM

        return make_pipeline(StandardScaler(), OneClassSVM(nu=self.nu, gamma="scale"))


class IForestDetector(_SegmentModelDetector):
    """Isolation forest on segment statistics."""

    kind = "iforest"
    def __init__(self, *, n_estimators: int = 200, **kwargs):
        super().__init__(**kwargs)
        self.n_estimators = n_estimators

    def _make_estimator(self):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=self.n_estimators, random_state=self.seed)
