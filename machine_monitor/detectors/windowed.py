"""Detectors that score windows of stacked log-mel (or raw) frames with one model (``--detector``).

AEGMM / VAEGMM (``gmm.py``) and the OC-SVM / isolation-forest baselines
(``baselines.py``) give each window of ``context`` standardised frames a score through
``_fit_model(train, val) -> history`` and ``_window_scores(windows)``, and say which
arrays, torch weights and scikit-learn parts make up their model. The front-end, the
held-out clip split, thresholds, scoring and the model directory are
:class:`~machine_monitor.detectors.base.BaseDetector`'s, as for every kind.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from machine_monitor.detectors.base import BaseDetector, as_clip_list
from machine_monitor.errors import ConfigError, ModelError
from machine_monitor.features import FeatureConfig, gather_windows, stack_frames, window_index
from machine_monitor.scorers.residual import aggregate
from machine_monitor.threshold import DEFAULT_PERCENTILE, fit_threshold


class WindowSampler:
    """Windows of standardised frames of several clips, gathered by index (never all at once).

    Parameters
    ----------
    per_clip : list of np.ndarray [shape=(n_frames_i, frame_dims)]
    context : int
        Frames per window.
    """

    def __init__(self, per_clip: list[np.ndarray], context: int):
        self.frames = np.concatenate(per_clip) if per_clip else np.zeros((0, 0), np.float32)
        self.starts = window_index(np.array([len(f) for f in per_clip]), context=context)
        self.context = context

    def __len__(self) -> int:
        return len(self.starts)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        """Windows ``idx`` as ``(len(idx), context * frame_dims)`` float32."""
        return gather_windows(self.frames, self.starts[np.asarray(idx)], context=self.context)

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """At most ``n`` windows drawn without replacement (seeded), in order."""
        idx = np.arange(len(self))
        if len(idx) > n:
            idx = np.sort(np.random.default_rng(seed).choice(len(idx), n, replace=False))
        return self(idx)


class WindowedDetector(BaseDetector):
    """Shared front-end, split, threshold and model directory of window-model detectors."""

    kind = "windowed"
    NETWORK = False  # True when the model has torch weights (network.safetensors)

    def __init__(self, *, features: str = "logmel", context: int = 5, aggregate: str = "mean",
                 percentile: float = DEFAULT_PERCENTILE, threshold_method: str = "percentile",
                 val_fraction: float = 0.2, seed: int = 0, device: str | None = None, channel: int | None = None,
                 progress: bool = False):
        self.features = features
        self.context = context
        self.aggregate = aggregate
        self.percentile = percentile
        self.threshold_method = threshold_method
        self.val_fraction = val_fraction
        self.seed = seed
        self.device = device
        self.channel = channel
        self.progress = progress

    def _feature_kind_config(self) -> FeatureConfig:
        return FeatureConfig.for_kind(self.features, context=self.context)

    # -- the model (subclasses) ----------------------------------------------
    def _fit_model(self, train: WindowSampler, val: WindowSampler) -> list[dict]:
        raise NotImplementedError

    def _window_scores(self, windows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _window_model_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_model_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    def _model_config(self) -> dict:
        return {}

    def _build_network(self, config: dict):
        raise NotImplementedError

    def _set_estimators(self, estimators: dict) -> None:
        pass

    # -- fitting ---------------------------------------------------------------
    def fit(self, clips, y=None) -> WindowedDetector:
        """Learn "normal" from normal clips; threshold from the held-out ``val_fraction``."""

        clips = as_clip_list(clips)
        self._check_params(len(clips))
        if self.features not in ("logmel", "raw"):
            raise ConfigError(f"a {self.kind} detector works on logmel or raw frames, not {self.features!r}")
        t0 = time.perf_counter()
        # The same loading, seeded whole-clip split and standardisation as Detector.fit.
        per_clip, train_ids = self._prepare(clips, FeatureConfig.for_kind(self.features, context=int(self.context)))
        cfg = self.feature_config_
        self.history_ = self._fit_model(WindowSampler([per_clip[i] for i in train_ids], cfg.context),
                                        WindowSampler([per_clip[i] for i in self.val_clips_], cfg.context))
        scores = np.array([aggregate(self._window_scores(stack_frames(f, context=cfg.context)), self.aggregate)
                           for f in per_clip])
        self.train_scores_ = scores[train_ids]
        self.val_scores_ = scores[self.val_clips_]
        self.threshold_ = fit_threshold(self.val_scores_, method=self.threshold_method, percentile=self.percentile)
        self.fit_seconds_ = time.perf_counter() - t0
        self.n_clips_ = len(clips)
        return self

    # -- scoring ---------------------------------------------------------------
    def window_scores(self, y: np.ndarray) -> np.ndarray:
        """Per-window scores ``(n_windows,)`` of a validated 16 kHz signal."""
        self._check_fitted()
        return self._window_scores(stack_frames(self._frames(y), context=self.feature_config.context))

    # -- the model directory (hooks of BaseDetector.save / load) --------------------
    def _manifest_parts(self) -> dict:
        return {"model": {**self._model_config(), "estimators": sorted(self._estimators())}}

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return {f"model.{k}": v for k, v in self._window_model_arrays().items()}

    def _model_tensors(self) -> dict:
        return dict(self.network_.state_dict()) if self.NETWORK else {}

    def _restore(self, m: dict, arrays: dict, tensors: dict | None, estimators: dict | None, *,
                 root: Path, device: str | None) -> None:
        import torch

        from machine_monitor.training import default_device

        model = m["model"]
        self._set_model_arrays({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("model.")})
        if self.NETWORK:
            if tensors is None:
                raise ModelError(f"{root / 'model.json'}: lists no network.safetensors")
            net = self._build_network(model)
            net.load_state_dict(tensors)
            self.network_ = net.to(torch.device(device) if device else default_device()).eval()
        if model.get("estimators"):
            if estimators is None:
                raise ModelError(f"{root / 'model.json'}: lists no scorer.skops")
            self._set_estimators(estimators)
