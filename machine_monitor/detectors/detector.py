"""The fitted chain: features -> autoencoder -> scorer -> threshold.

:class:`Detector` is the one object the CLI, ``scan`` and ``monitor`` talk to.
It follows the scikit-learn / PyOD shape: parameters in ``__init__`` (no logic),
``fit(clips) -> self``, learned state in attributes ending in ``_``,
``score(clips)`` (higher = more anomalous), ``predict(clips)`` (0/1).

Clips are file paths, 16 kHz mono float arrays, or ``(array, sample_rate)`` tuples.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from machine_monitor.audio.io import check_signal, load_audio, to_mono
from machine_monitor.errors import ConfigError, NotFittedError
from machine_monitor.features import FeatureConfig, frames, gather_windows, stack_frames, window_index
from machine_monitor.scoring import Reconstruction, Scorer, aggregate, check_aggregate, make_scorer
from machine_monitor.threshold import DEFAULT_PERCENTILE, fit_threshold

log = logging.getLogger(__name__)

Clip = "str | os.PathLike | np.ndarray | tuple[np.ndarray, int]"


def clip_name(clip, i: int) -> str:
    """How a clip is named in messages: its path, or ``array[i]``."""
    return str(clip) if isinstance(clip, (str, os.PathLike)) else f"array[{i}]"


def score_stats(scores: np.ndarray) -> dict:
    """Summary statistics of a score sample, as stored in ``model.json``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return {"n": 0}
    q = np.percentile(s, [5, 50, 95])
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "max": float(s.max())}


class _LazyReconstructions(Sequence):
    """A read-only sequence of clip reconstructions computed when indexed."""

    def __init__(self, reconstruct, frames_per_clip, ids=None):
        self._reconstruct, self._frames = reconstruct, frames_per_clip
        self._ids = list(range(len(frames_per_clip))) if ids is None else [int(i) for i in ids]

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(self._ids[i])
        return self._reconstruct(self._frames[self._ids[i]])

    def subset(self, ids) -> _LazyReconstructions:
        return _LazyReconstructions(self._reconstruct, self._frames, [self._ids[i] for i in ids])


class Detector:
    """Acoustic anomaly detector trained on normal sound only.

    Parameters
    ----------
    features : {"peak", "logmel", "raw"}
        ``peak`` (default): per-band maximum of the log-mel over 10 s spans (or the
        shortest training clip), one 128-dim vector per span; ``logmel``: 5 stacked
        log-mel frames (640 dims, the DCASE baseline); ``raw``: raw-waveform frames.
    scorer : str
        How a reconstruction becomes a window score (see ``scoring.SCORERS``), or a
        post-classifier on the reconstruction difference (``hist-rf``, ``diff-rf``,
        ``iforest``; see ``postclassifiers``).
    scorer_params : dict or None
        Extra parameters of the scorer (e.g. ``{"n_estimators": 100}``).
    aggregate : str
        How window scores pool into a clip score: ``mean``, ``max``, ``median``, ``pNN``.
    percentile : float
        Threshold = this percentile of held-out normal clip scores.
    threshold_method : {"gamma", "percentile"}
        ``gamma`` (default): the ``percentile`` of a gamma distribution fitted to the
        held-out normal scores; with the ~10 held-out clips a user has, a plain 99th
        percentile is just their maximum, which fresh normal sound exceeds often.
    val_fraction : float
        Share of training clips held out (whole clips) for early stopping and threshold.
    epochs, batch_size, lr, patience, hidden, bottleneck : network training settings.
        ``epochs``/``patience`` ``None``: 1000/50 for ``peak`` (one vector per clip, so an
        epoch is one or two optimiser steps), 100/10 for frame features.
    seed : int
        Seeds the clip split, initialisation and batch order (deterministic on CPU).
    device : str or None
        Torch device for training and scoring; ``None`` = a GPU if present, else CPU.
    channel : int or None
        Channel of multichannel files to use (0-based); ``None`` = mean of channels.
    progress : bool
        Show progress bars on stderr.
    folds : int or None
        Cross-fitted ensemble of this many networks, each trained without one fold of the
        clips; the scorer and the threshold then learn from every clip's *out-of-fold*
        residual and score, and new audio gets the networks' mean score. ``None``: 5 for
        ``peak`` features (a network trains in about a second), 1 otherwise (one network,
        ``val_fraction`` of the clips held out for early stopping and the threshold).
    """

    def __init__(self, *, features: str = "peak", scorer: str = "mahalanobis", aggregate: str = "mean",
                 percentile: float = DEFAULT_PERCENTILE, threshold_method: str = "gamma",
                 val_fraction: float = 0.2, epochs: int | None = None, batch_size: int = 256, lr: float = 1e-3,
                 patience: int | None = None, hidden: Sequence[int] = (128, 128, 128, 128), bottleneck: int = 8,
                 seed: int = 0, device: str | None = None, channel: int | None = None,
                 progress: bool = False, scorer_params: dict | None = None, folds: int | None = None):
        self.features = features
        self.scorer = scorer
        self.aggregate = aggregate
        self.percentile = percentile
        self.threshold_method = threshold_method
        self.val_fraction = val_fraction
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.seed = seed
        self.device = device
        self.channel = channel
        self.progress = progress
        self.scorer_params = scorer_params
        self.folds = folds

    # -- audio and features ------------------------------------------------
    @property
    def feature_config(self) -> FeatureConfig:
        return getattr(self, "feature_config_", None) or FeatureConfig.for_kind(self.features)

    def load_signal(self, clip, i: int = 0) -> np.ndarray:
        """One clip as a validated 16 kHz mono float32 signal."""
        cfg = self.feature_config
        name = clip_name(clip, i)
        if isinstance(clip, (str, os.PathLike)):
            return load_audio(clip, sr=cfg.sr, channel=self.channel, min_samples=cfg.min_samples)
        if isinstance(clip, tuple):
            y, sr = clip
            y = to_mono(np.asarray(y, dtype=np.float32), channel=self.channel, source=name)
            check_signal(y, sr=sr, source=name)  # NaNs must not reach the resampler
            if sr != cfg.sr:
                import soxr

                y = soxr.resample(y, sr, cfg.sr, quality="HQ").astype(np.float32)
        else:
            y = to_mono(np.asarray(clip, dtype=np.float32), channel=self.channel, source=name)
        return check_signal(y, sr=cfg.sr, min_samples=cfg.min_samples, source=name)

    def _frames(self, y: np.ndarray) -> np.ndarray:
        """Standardised units ``(n_units, frame_dims)`` of a signal: frames, or peak spans."""
        cfg = self.feature_config
        f = cfg.units(frames(y, cfg))
        f -= self.feature_mean_
        f /= self.feature_std_
        return f

    # -- fitting -----------------------------------------------------------
    def _check_params(self, n_clips: int) -> None:
        check_aggregate(self.aggregate)
        if n_clips < 2:
            raise ConfigError(f"need at least 2 normal clips to train (one is held out), got {n_clips}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), not {self.val_fraction!r}")
        if self.threshold_method not in ("percentile", "gamma"):
            raise ConfigError(f"threshold_method must be percentile or gamma, not {self.threshold_method!r}")

    def _prepare(self, clips: list, config: FeatureConfig) -> tuple[list[np.ndarray], np.ndarray]:
        """Load clips, fit ``config`` to them, hold out whole clips, standardise.

        Sets ``feature_config_``, ``clip_seconds_``, ``val_clips_``, ``feature_mean_`` and
        ``feature_std_``; returns every clip's standardised units and the training clip ids.
        """
        from tqdm.auto import tqdm

        # Load with the shortest span a peak model can have; the span is fitted to the clips below.
        self.feature_config_ = cfg = config.fitted_to(1)
        per_clip, seconds = [], []
        for i, clip in enumerate(tqdm(clips, desc="features", unit="clip", disable=not self.progress, leave=False)):
            y_ = self.load_signal(clip, i)
            seconds.append(y_.size / cfg.sr)
            per_clip.append(frames(y_, cfg))
        self.clip_seconds_ = float(np.median(seconds))
        # A peak span fits the typical clip: a stray short one (the partial last clip of a
        # recording) is left out rather than shrinking every window of the model.
        lengths = np.array([len(f) for f in per_clip])
        self.feature_config_ = cfg = config.fitted_to(int(np.median(lengths)))
        keep = lengths >= (cfg.context if cfg.kind == "peak" else 1)
        self.skipped_clips_ = [clip_name(c, i) for i, c in enumerate(clips) if not keep[i]]
        for name in self.skipped_clips_:
            log.warning("%s: shorter than the other clips' %.2f s span: not used for training",
                        name, cfg.min_samples / cfg.sr)
        per_clip = [cfg.units(f) for f, k in zip(per_clip, keep) if k]
        if len(per_clip) < 2:
            raise ConfigError(f"need at least 2 clips as long as the {cfg.min_samples / cfg.sr:.2f} s span, "
                              f"got {len(per_clip)}")

        order = np.random.default_rng(self.seed).permutation(len(per_clip))
        n_val = min(len(per_clip) - 1, max(1, int(round(self.val_fraction * len(per_clip)))))
        self.val_clips_ = np.sort(order[:n_val])
        train_ids = np.sort(order[n_val:])

        # Standardisation from training units; float64 sums, float32 data.
        train_f = np.concatenate([per_clip[i] for i in train_ids])
        self.feature_mean_ = train_f.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.feature_std_ = np.maximum(train_f.std(axis=0, dtype=np.float64), 1e-3).astype(np.float32)
        del train_f
        for f in per_clip:
            f -= self.feature_mean_
            f /= self.feature_std_
        return per_clip, train_ids

    def fit(self, clips: Iterable, y=None, *, anomalies: Iterable | None = None) -> Detector:
        """Learn "normal" from clips of normal machine sound.

        Holds out ``val_fraction`` of the clips (whole clips, seeded) for early
        stopping and for the threshold, so the threshold reflects clips the
        network never trained on.

        ``anomalies``: labelled fault clips, for a supervised scorer (``hist-rf``,
        ``diff-rf``, see ``postclassifiers``). The network still learns from normal
        clips only; the forest learns from every clip's reconstruction, and the
        threshold comes from held-out normal clips scored out-of-fold (5 folds).
        """
        import torch

        from machine_monitor.autoencoder import NetworkConfig, TrainConfig, default_device

        clips = list(clips)
        anomalies = list(anomalies or [])
        self._check_params(len(clips))
        supervised = make_scorer(self.scorer, **(self.scorer_params or {})).supervised
        if supervised and not anomalies:
            raise ConfigError(f"scorer {self.scorer!r} learns from labelled anomalies: pass some (--anomalies DIR)")
        if anomalies and not supervised:
            raise ConfigError(f"scorer {self.scorer!r} learns from normal clips only; to use labelled anomalies "
                              "choose scorer hist-rf or diff-rf")
        t0 = time.perf_counter()
        per_clip, train_ids = self._prepare(clips, FeatureConfig.for_kind(self.features))
        cfg = self.feature_config_
        self._device = torch.device(self.device) if self.device else default_device()
        self.network_config_ = NetworkConfig(cfg.window_dims, tuple(int(h) for h in self.hidden), int(self.bottleneck))
        epochs, patience = (1000, 50) if cfg.kind == "peak" else (100, 10)
        self.train_config_ = TrainConfig(epochs=self.epochs or epochs, batch_size=self.batch_size, lr=self.lr,
                                         patience=self.patience or patience, seed=self.seed)
        scorer = make_scorer(self.scorer, aggregate=self.aggregate, **(self.scorer_params or {}))
        if hasattr(scorer, "context"):
            scorer.context = cfg.stack  # post-classifiers read a window as context x frame_dims
        self.n_anomalies_ = len(anomalies)
        folds = self._n_folds(len(per_clip), scorer)
        if folds > 1:
            self._fit_folds(per_clip, folds, scorer)
        else:
            self.network_, self.history_ = self._train_network(per_clip, train_ids, self.val_clips_, self.seed)
            self.networks_ = [self.network_]
            # Reconstructions are made on access: holding them all would cost ~10x the frames.
            recons = _LazyReconstructions(self._reconstruct, per_clip)
            if supervised:
                from machine_monitor.postclassifiers import fit_supervised

                labelled = _LazyReconstructions(self._reconstruct, per_clip + [
                    self._frames(self.load_signal(c, i)) for i, c in enumerate(anomalies)])
                y_ = np.r_[np.zeros(len(per_clip), np.int64), np.ones(len(anomalies), np.int64)]
                # Normal clips' scores are out-of-fold: each from a forest that never saw the clip.
                self.scorer_, scores = fit_supervised(scorer, labelled, y_, seed=self.seed)
                scores = scores[: len(per_clip)]
            else:
                self.scorer_ = scorer.fit(recons.subset(train_ids))
                scores = self.scorer_.score(recons)
            self.train_scores_ = scores[train_ids]
            self.val_scores_ = scores[self.val_clips_]
        self.threshold_ = fit_threshold(self.val_scores_, method=self.threshold_method, percentile=self.percentile)
        self.fit_seconds_ = time.perf_counter() - t0
        self.n_clips_ = len(per_clip)
        return self

    def _n_folds(self, n_clips: int, scorer) -> int:
        """Networks in the ensemble: ``folds``, or by default 5 for peak features (cheap to train)."""
        folds = self.folds if self.folds is not None else (5 if self.feature_config_.kind == "peak" else 1)
        # Each fold network needs 2+ clips (one held out for early stopping); forests that
        # override clip scoring (post-classifiers) work on one network.
        if folds <= 1 or n_clips < 3 or type(scorer).score is not Scorer.score:
            return 1
        return min(int(folds), n_clips)

    def _train_network(self, per_clip, train_ids, val_ids, seed: int):
        """A network trained on clips ``train_ids``, early-stopped on clips ``val_ids``."""
        import torch

        from machine_monitor.autoencoder import DenseAutoencoder, train_autoencoder

        ctx = self.feature_config_.stack
        train_frames = np.concatenate([per_clip[i] for i in train_ids])
        val_frames = np.concatenate([per_clip[i] for i in val_ids])
        train_starts = window_index(np.array([len(per_clip[i]) for i in train_ids]), context=ctx)
        val_starts = window_index(np.array([len(per_clip[i]) for i in val_ids]), context=ctx)
        torch.manual_seed(seed)
        net = DenseAutoencoder(self.network_config_)
        history = train_autoencoder(
            net,
            lambda idx: gather_windows(train_frames, train_starts[idx], context=ctx), len(train_starts),
            lambda idx: gather_windows(val_frames, val_starts[idx], context=ctx), len(val_starts),
            dataclasses.replace(self.train_config_, seed=seed), device=self._device, progress=self.progress)
        return net, history

    def _fit_folds(self, per_clip: list[np.ndarray], folds: int, scorer) -> None:
        """Cross-fitted ensemble: one network per fold, each blind to its fold's clips.

        Every clip gets an out-of-fold reconstruction, from the network that never saw it.
        The scorer learns from all of them (the residuals of *unseen* sound, which is what
        it will score), and the threshold comes from every clip's out-of-fold score under a
        scorer refitted without that clip's fold: scores of sound new to both parts, as
        the deployed detector will meet it, from all clips rather than a held-out fifth.
        New audio is scored by the mean of the networks' window scores.
        """
        n = len(per_clip)
        rng = np.random.default_rng(self.seed)
        fold_of = np.empty(n, dtype=np.int64)
        for k, ids in enumerate(np.array_split(rng.permutation(n), folds)):
            fold_of[ids] = k
        self.networks_, self.history_ = [], []
        for k in range(folds):
            ids = rng.permutation(np.flatnonzero(fold_of != k))
            n_val = min(len(ids) - 1, max(1, int(round(self.val_fraction * len(ids)))))
            net, hist = self._train_network(per_clip, np.sort(ids[n_val:]), np.sort(ids[:n_val]), self.seed + k)
            self.networks_.append(net)
            self.history_ += [{"fold": k, **h} for h in hist]
        self.network_ = self.networks_[0]

        def oof(i: int) -> Reconstruction:
            return self._reconstruct(per_clip[i], self.networks_[fold_of[i]])

        recons = _LazyReconstructions(lambda i: oof(int(i)), list(range(n)))
        self.scorer_ = copy.deepcopy(scorer).fit(recons)
        scores = np.empty(n)
        for k in range(folds):
            inside, outside = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
            scores[inside] = copy.deepcopy(scorer).fit(recons.subset(outside)).score(recons.subset(inside))
        self.fold_of_ = fold_of
        self.val_clips_ = np.arange(n)
        self.val_scores_ = scores
        self.train_scores_ = scores

    # -- scoring -----------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError("this Detector is not fitted yet: call fit(clips) or Detector.load(dir)")

    def _reconstruct(self, f: np.ndarray, net=None) -> Reconstruction:
        import torch

        from machine_monitor.autoencoder import numpy_inference

        net = self.network_ if net is None else net
        x = stack_frames(f, context=self.feature_config.stack)
        fast = numpy_inference(net)
        if fast is not None:
            x_hat, z = fast(x)
            return Reconstruction(x=x, x_hat=x_hat, z=z)
        with torch.no_grad():
            net.eval()
            device = next(net.parameters()).device
            xt = torch.from_numpy(x).to(device)
            z = net.encoder(xt)
            x_hat = net.decoder(z)
        return Reconstruction(x=x, x_hat=x_hat.cpu().numpy(), z=z.cpu().numpy())

    @property
    def ensemble_size(self) -> int:
        """Networks that score new audio (``folds`` of a cross-fitted detector, else 1)."""
        return len(getattr(self, "networks_", None) or [None])

    def reconstruct_signal(self, y: np.ndarray) -> Reconstruction:
        """The (first) network's reconstruction of every window of a validated signal."""
        self._check_fitted()
        return self._reconstruct(self._frames(y))

    def window_scores(self, y: np.ndarray) -> np.ndarray:
        """Per-window scores ``(n_windows,)`` of a validated 16 kHz signal (mean over the ensemble)."""
        self._check_fitted()
        if self.ensemble_size == 1:
            return self.scorer_.window_scores(self.reconstruct_signal(y))
        f = self._frames(y)
        return np.mean([self.scorer_.window_scores(self._reconstruct(f, net)) for net in self.networks_], axis=0)

    def score_signal(self, y: np.ndarray) -> float:
        """Clip score of one validated 16 kHz mono signal."""
        if self.ensemble_size == 1:
            return float(self.scorer_.score([self.reconstruct_signal(y)])[0])
        return aggregate(self.window_scores(y), self.scorer_.aggregate)

    def window_seconds(self) -> float:
        """Duration one window of features covers."""
        cfg = self.feature_config
        return cfg.min_samples / cfg.sr

    def score(self, clips: Iterable) -> np.ndarray:
        """Anomaly score of each clip, ``(n_clips,)``; higher = more anomalous.

        Raises ``AudioReadError`` naming the first clip that cannot be used.
        """
        self._check_fitted()
        return np.array([self.score_signal(self.load_signal(c, i)) for i, c in enumerate(clips)], dtype=np.float64)

    def decision_function(self, clips: Iterable) -> np.ndarray:
        """Alias of :meth:`score` (PyOD name)."""
        return self.score(clips)

    @property
    def threshold_value_(self) -> float:
        self._check_fitted()
        return float(self.threshold_["value"])

    def predict(self, clips: Iterable) -> np.ndarray:
        """1 for clips scoring above the threshold, else 0."""
        return (self.score(clips) > self.threshold_value_).astype(np.int64)

    def set_threshold(self, clips: Iterable | None = None, *, scores=None, method: str = "contamination",
                      percentile: float | None = None, contamination: float | None = None) -> Detector:
        """Re-set the alarm threshold from new clips (or their scores).

        ``method="contamination"`` with a folder known to hold that fraction of
        anomalies (alibi-detect style); ``percentile``/``gamma`` with normal clips.
        """
        self._check_fitted()
        if scores is None:
            scores = self.score(clips)
        self.threshold_ = fit_threshold(scores, method=method, percentile=percentile or self.percentile,
                                        contamination=contamination)
        return self

    # -- persistence -------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a self-describing model directory (atomically); returns its path."""
        from machine_monitor.persistence import save_detector

        self._check_fitted()
        return save_detector(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> Detector:
        """Load a model directory; refuses tampered or inconsistent models (``ModelError``)."""
        from machine_monitor.persistence import load_detector

        return load_detector(path, device=device)

    def __repr__(self) -> str:
        state = f", threshold={self.threshold_value_:.4g}" if hasattr(self, "threshold_") else ""
        return f"Detector(features={self.features!r}, scorer={self.scorer!r}, aggregate={self.aggregate!r}{state})"
