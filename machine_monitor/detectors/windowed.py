"""Base of the detectors that are not the reconstruction autoencoder (``--detector``).

AEGMM / VAEGMM (``gmm.py``) and the OC-SVM / isolation-forest baselines
(``baselines.py``) share everything with :class:`~machine_monitor.detector.Detector`
except the model: the audio front-end (``load_signal``), standardised log-mel frames,
the held-out clip split, percentile / gamma thresholds on held-out normal clips,
``score`` / ``predict`` / ``set_threshold``. They subclass it to reuse that code, and
replace fitting, window scores and the model directory.

A subclass gives each window of ``context`` standardised frames a score through
``_fit_model(windows) -> history`` and ``_window_scores(windows)``, and says which
arrays, torch weights and scikit-learn parts make up its model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from machine_monitor.detector import Detector, score_stats
from machine_monitor.errors import ConfigError, ModelError
from machine_monitor.features import FeatureConfig, gather_windows, stack_frames, window_index
from machine_monitor.scoring import aggregate
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


class WindowedDetector(Detector):
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

    # Parameters saved with the model; subclasses add theirs.
    PARAMS = ("features", "context", "aggregate", "percentile", "threshold_method", "val_fraction", "seed", "channel")

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in self.PARAMS}

    @property
    def feature_config(self) -> FeatureConfig:
        return getattr(self, "feature_config_", None) or FeatureConfig.for_kind(self.features, context=self.context)

    # -- the model (subclasses) ----------------------------------------------
    def _fit_model(self, train: WindowSampler, val: WindowSampler) -> list[dict]:
        raise NotImplementedError

    def _window_scores(self, windows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _set_model_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        pass

    def _model_config(self) -> dict:
        return {}

    def _estimators(self) -> dict:
        return {}

    def _build_network(self, config: dict):
        raise NotImplementedError

    def _set_estimators(self, estimators: dict) -> None:
        pass

    # -- fitting ---------------------------------------------------------------
    def fit(self, clips, y=None) -> WindowedDetector:
        """Learn "normal" from normal clips; threshold from the held-out ``val_fraction``."""

        clips = list(clips)
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

    def score_signal(self, y: np.ndarray) -> float:
        """Clip score of one validated signal: its window scores pooled by ``aggregate``."""
        return aggregate(self.window_scores(y), self.aggregate)

    def reconstruct_signal(self, y):
        raise NotImplementedError(f"a {self.kind} detector has no reconstruction")

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a self-describing model directory (atomically); returns its path."""
        from safetensors.numpy import save_file as save_np

        from machine_monitor.persistence import (
            ARRAYS_FILE,
            NETWORK_FILE,
            SKOPS_FILE,
            save_estimators,
            write_model_dir,
        )

        self._check_fitted()
        estimators = self._estimators()

        def write(tmp: Path) -> None:
            arrays = {"feature_mean": self.feature_mean_, "feature_std": self.feature_std_}
            arrays.update({f"model.{k}": np.ascontiguousarray(v) for k, v in self._model_arrays().items()})
            save_np(arrays, tmp / ARRAYS_FILE)
            if self.NETWORK:
                from safetensors.torch import save_file as save_torch

                state = {k: v.detach().cpu().contiguous() for k, v in self.network_.state_dict().items()}
                save_torch(state, tmp / NETWORK_FILE)
            if estimators:
                save_estimators(tmp / SKOPS_FILE, estimators)

        manifest = {
            "detector": self.kind,
            "sample_rate": self.feature_config_.sr,
            "params": self.get_params(),
            "features": self.feature_config_.to_dict(),
            "model": {**self._model_config(), "estimators": sorted(estimators)},
            "training": {"history": self.history_, "fit_seconds": self.fit_seconds_, "n_clips": self.n_clips_,
                         "val_clips": self.val_clips_, "clip_seconds": self.clip_seconds_},
            "threshold": self.threshold_,
            "scores": {"train": score_stats(self.train_scores_), "validation": score_stats(self.val_scores_),
                       "train_values": self.train_scores_, "validation_values": self.val_scores_},
        }
        return write_model_dir(path, manifest, write)

    @classmethod
    def _from_model_dir(cls, root: Path, m: dict, *, device: str | None = None) -> WindowedDetector:
        """Rebuild from a model directory whose hashes ``load_detector`` already checked."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file as load_np

        from machine_monitor.persistence import (
            ARRAYS_FILE,
            MANIFEST,
            NETWORK_FILE,
            SKOPS_FILE,
            load_estimators,
            restore_fit_record,
            set_standardisation,
        )

        files = m.get("files") or {}
        try:
            det = cls(**m["params"], device=device)
            det.feature_config_ = cfg = FeatureConfig(**m["features"])
            model = m["model"]
            needed = [ARRAYS_FILE, *([NETWORK_FILE] if cls.NETWORK else []),
                      *([SKOPS_FILE] if model.get("estimators") else [])]
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelError(f"{root / MANIFEST}: incomplete or invalid model description ({exc})") from None
        for name in needed:
            if name not in files:
                raise ModelError(f"{root / MANIFEST}: lists no {name}")
        if m.get("sample_rate") != cfg.sr:
            raise ModelError(f"{root / MANIFEST}: sample_rate {m.get('sample_rate')} disagrees with features.sr")
        try:
            arrays = load_np(str(root / ARRAYS_FILE))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{root}: cannot read arrays ({exc})") from None
        set_standardisation(det, arrays, root)
        try:
            det._set_model_arrays({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("model.")})
            if cls.NETWORK:
                det._load_network(root / NETWORK_FILE, model, device)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{root}: model parts do not match model.json ({exc})") from None
        if model.get("estimators"):
            det._set_estimators(load_estimators(root / SKOPS_FILE))
        return restore_fit_record(det, m, root)

    def _load_network(self, path: Path, model: dict, device: str | None) -> None:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file as load_torch

        from machine_monitor.autoencoder import default_device

        try:
            state = load_torch(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{path}: cannot read weights ({exc})") from None
        net = self._build_network(model)
        net.load_state_dict(state)
        self.network_ = net.to(torch.device(device) if device else default_device()).eval()

    def __repr__(self) -> str:
        state = f", threshold={self.threshold_value_:.4g}" if hasattr(self, "threshold_") else ""
        return f"{type(self).__name__}(features={self.features!r}, aggregate={self.aggregate!r}{state})"
