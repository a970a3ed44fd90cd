"""The autoencoder detector (kind ``ae``): features -> autoencoder(s) -> scorer -> threshold.

Its public shape is :class:`~machine_monitor.detectors.base.BaseDetector`'s; this module
holds what is particular to it: the dense autoencoder (one, or a cross-fitted ensemble),
the scorer on its reconstructions, and their parts of the model directory.
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

from machine_monitor.detectors.base import REFIT_BELOW_RECORDINGS, BaseDetector, as_clip_list, clip_name
from machine_monitor.errors import ConfigError, ModelError
from machine_monitor.features import FeatureConfig, gather_windows, stack_frames, window_index
from machine_monitor.scorers.registry import make_scorer
from machine_monitor.scorers.residual import Reconstruction, Scorer, aggregate
from machine_monitor.threshold import DEFAULT_PERCENTILE, fit_threshold, group_folds, groups_from_paths

log = logging.getLogger(__name__)


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


class Detector(BaseDetector):
    """Acoustic anomaly detector trained on normal sound only.

    Parameters
    ----------
    features : {"peak", "logmel", "raw"}
        ``peak`` (default): per-band maximum of the log-mel over 10 s spans (or the
        shortest training clip), one 128-dim vector per span; ``logmel``: 5 stacked
        log-mel frames (640 dims, the DCASE baseline); ``raw``: raw-waveform frames.
    scorer : str
        How a reconstruction becomes a window score (see ``scorers.registry.SCORERS``), or a
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

    kind = "ae"

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

    def fit(self, clips: Iterable, y=None, *, anomalies: Iterable | None = None, groups=None) -> Detector:
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

        from machine_monitor.autoencoder import NetworkConfig
        from machine_monitor.training import TrainConfig, default_device

        clips = as_clip_list(clips)
        anomalies = as_clip_list(anomalies) if anomalies is not None else []
        self._check_params(len(clips))
        supervised = make_scorer(self.scorer, **(self.scorer_params or {})).supervised
        if supervised and not anomalies:
            raise ConfigError(f"scorer {self.scorer!r} learns from labelled anomalies: pass some to fit(anomalies=...)")
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
            # Folds keep a group (a recording, or a session given by groups) on one side.
            skipped = set(self.skipped_clips_)
            if groups is None:
                groups = groups_from_paths([str(c) if isinstance(c, (str, os.PathLike)) else None for c in clips])
            groups = [g for i, (c, g) in enumerate(zip(clips, groups)) if clip_name(c, i) not in skipped]
            self._fit_folds(per_clip, folds, scorer, groups=groups)
        else:
            self.network_, self.history_ = self._train_network(per_clip, train_ids, self.val_clips_, self.seed)
            self.networks_ = [self.network_]
            # Reconstructions are made on access: holding them all would cost ~10x the frames.
            recons = _LazyReconstructions(self._reconstruct, per_clip)
            if supervised:
                from machine_monitor.scorers.postclassifiers import fit_supervised

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

    def _train_network(self, per_clip, train_ids, val_ids, seed: int, *, centre: np.ndarray | None = None,
                       epochs: int | None = None):
        """A network trained on clips ``train_ids``, early-stopped on clips ``val_ids``
        (their frames minus ``centre``, when given); no ``val_ids``: ``epochs`` epochs."""
        import torch

        from machine_monitor.autoencoder import DenseAutoencoder
        from machine_monitor.training import train_network

        ctx = self.feature_config_.stack
        train_frames = np.concatenate([per_clip[i] for i in train_ids])
        val_frames = np.concatenate([per_clip[i] for i in val_ids]) if len(val_ids) else None
        if centre is not None:  # the concatenations are copies already: centred in place
            train_frames -= centre
            if val_frames is not None:
                val_frames -= centre
        train_starts = window_index(np.array([len(per_clip[i]) for i in train_ids]), context=ctx)
        val_starts = window_index(np.array([len(per_clip[i]) for i in val_ids]), context=ctx) if len(val_ids) else []
        torch.manual_seed(seed)
        net = DenseAutoencoder(self.network_config_)
        cfg = dataclasses.replace(self.train_config_, seed=seed, **({"epochs": int(epochs)} if epochs else {}))
        history = train_network(
            net,
            lambda idx: gather_windows(train_frames, train_starts[idx], context=ctx), len(train_starts),
            None if val_frames is None else (lambda idx: gather_windows(val_frames, val_starts[idx], context=ctx)),
            len(val_starts), cfg, device=self._device, progress=self.progress)
        return net, history

    def _fit_folds(self, per_clip: list[np.ndarray], folds: int, scorer, *, groups=None) -> None:
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
        if groups is None or len(set(groups)) < 2:
            groups = [f"#{i:06d}" for i in range(n)]
        fold_of = group_folds(groups, n_folds=folds)
        folds = int(fold_of.max()) + 1
        self.networks_, self.history_ = [], []
        # Network k learns on rows centred on the clips outside fold k, then takes the shared
        # units (fold_centring): the standardisation's centre includes every clip, and a clip
        # inside it scored more normal out of fold than new audio does.
        from machine_monitor.autoencoder import fold_centring, fold_means

        centres = fold_means(per_clip, fold_of)
        for k in range(folds):
            ids = rng.permutation(np.flatnonzero(fold_of != k))
            n_val = min(len(ids) - 1, max(1, int(round(self.val_fraction * len(ids)))))
            net, hist = self._train_network(per_clip, np.sort(ids[n_val:]), np.sort(ids[:n_val]), self.seed + k,
                                            centre=centres[k])
            if len({groups[i] for i in ids}) < REFIT_BELOW_RECORDINGS:
                # Few recordings: early stopping chose the epochs; learn them from every clip
                # outside the fold (base.REFIT_BELOW_RECORDINGS says why).
                from machine_monitor.training import best_epoch

                net, hist = self._train_network(per_clip, np.sort(ids), [], self.seed + k, centre=centres[k],
                                                epochs=best_epoch(hist))
                hist = [{**h, "refit": True} for h in hist]
            self.networks_.append(fold_centring(net.eval(), np.tile(centres[k], self.feature_config_.stack)))
            self.history_ += [{"fold": k, **h} for h in hist]
        self.network_ = self.networks_[0]

        def oof(i: int) -> Reconstruction:
            return self._reconstruct(per_clip[i], self.networks_[fold_of[i]])

        recons = _LazyReconstructions(lambda i: oof(int(i)), list(range(n)))
        self.scorer_ = copy.deepcopy(scorer).fit(recons)
        scores = np.empty(n)
        # Scorer k never saw fold k: with network k it scores any audio of fold k out of fold.
        self.fold_scorers_ = []
        for k in range(folds):
            inside, outside = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
            self.fold_scorers_.append(copy.deepcopy(scorer).fit(recons.subset(outside)))
            scores[inside] = self.fold_scorers_[k].score(recons.subset(inside))
        self.fold_of_ = fold_of
        self.val_clips_ = np.arange(n)
        self.val_scores_ = scores
        self.train_scores_ = scores

    # -- scoring -----------------------------------------------------------
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

    def window_scores(self, y: np.ndarray, *, fold: int | None = None) -> np.ndarray:
        """Per-window scores ``(n_windows,)`` of a validated 16 kHz signal (mean over the ensemble).

        ``fold=k`` (right after ``fit`` of a cross-fitted ensemble): scored only by the
        parts blind to training fold ``k`` (network ``k``, scorer ``k``), an out-of-fold
        score for training audio of that fold (see ``fold_of_``).
        """
        self._check_fitted()
        if fold is not None:
            parts = getattr(self, "fold_scorers_", None)
            if not parts or not 0 <= int(fold) < len(parts):
                raise ConfigError(f"no out-of-fold parts for fold {fold!r} (only right after fitting an ensemble)")
            return parts[int(fold)].window_scores(self._reconstruct(self._frames(y), self.networks_[int(fold)]))
        if self.ensemble_size == 1:
            return self.scorer_.window_scores(self.reconstruct_signal(y))
        f = self._frames(y)
        return np.mean([self.scorer_.window_scores(self._reconstruct(f, net)) for net in self.networks_], axis=0)

    def score_signal(self, y: np.ndarray, *, fold: int | None = None) -> float:
        """Clip score of one validated 16 kHz mono signal; ``fold`` as :meth:`window_scores`."""
        if fold is not None:
            return aggregate(self.window_scores(y, fold=fold), self.scorer_.aggregate)
        if self.ensemble_size == 1:
            return float(self.scorer_.score([self.reconstruct_signal(y)])[0])
        return aggregate(self.window_scores(y), self.scorer_.aggregate)

    def _pools_windows(self) -> bool:
        # Post-classifiers score a clip from its whole reconstruction, not from window scores.
        return type(self.scorer_).score is Scorer.score

    # -- the model directory (hooks of BaseDetector.save / load) --------------------
    def _manifest_parts(self) -> dict:
        estimators = self._estimators()
        return {"network": {**self.network_config_.to_dict(), "ensemble": self.ensemble_size},
                "scorer": {"name": self.scorer_.name, "params": self.scorer_.get_params(),
                           "estimators": sorted(estimators)}}

    def _fit_record(self) -> dict:
        return {**vars(self.train_config_), "epochs_run": len(self.history_),
                "best_val_loss": min((h.get("val_loss", np.inf) for h in self.history_), default=None),
                "n_anomalies": getattr(self, "n_anomalies_", 0), **super()._fit_record()}

    def _model_arrays(self) -> dict[str, np.ndarray]:
        return {f"scorer.{k}": v for k, v in self.scorer_.get_arrays().items()}

    def _model_tensors(self) -> dict:
        # One network: its state dict as is; an ensemble: network k's tensors under "k.".
        nets = self.networks_
        return {(f"{k}.{name}" if len(nets) > 1 else name): v
                for k, net in enumerate(nets) for name, v in net.state_dict().items()}

    def _estimators(self) -> dict:
        return getattr(self.scorer_, "get_estimators", lambda: {})()

    def _check_manifest(self, m: dict, root: Path) -> None:
        from machine_monitor.autoencoder import NetworkConfig

        cfg, net_cfg = self.feature_config_, NetworkConfig.from_dict(m["network"])
        if net_cfg.input_dim != cfg.window_dims:
            raise ModelError(f"{root / 'model.json'}: network input {net_cfg.input_dim} does not match the features "
                             f"({cfg.kind}: {cfg.context} x {cfg.frame_dims} = {cfg.window_dims} dims)")

    def _restore(self, m: dict, arrays: dict, tensors: dict | None, estimators: dict | None, *,
                 root: Path, device: str | None) -> None:
        import torch

        from machine_monitor.autoencoder import DenseAutoencoder, NetworkConfig
        from machine_monitor.training import TrainConfig, default_device

        if tensors is None:
            raise ModelError(f"{root / 'model.json'}: lists no network.safetensors")
        self.network_config_ = net_cfg = NetworkConfig.from_dict(m["network"])
        train = m["training"]
        self.train_config_ = TrainConfig(**{k: train[k] for k in TrainConfig.__dataclass_fields__})
        scorer = make_scorer(m["scorer"]["name"], **m["scorer"]["params"])
        n_nets = int(m["network"].get("ensemble", 1))
        nets = []
        for k in range(n_nets):
            prefix = f"{k}." if n_nets > 1 else ""
            net = DenseAutoencoder(net_cfg)
            try:
                net.load_state_dict({name[len(prefix):]: v for name, v in tensors.items() if name.startswith(prefix)})
            except RuntimeError as exc:
                raise ModelError(f"{root / 'network.safetensors'}: weights do not fit the network in model.json "
                                 f"({exc})") from None
            nets.append(net.to(torch.device(device) if device else default_device()).eval())
        self.networks_, self.network_ = nets, nets[0]
        scorer.set_arrays({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("scorer.")})
        if m["scorer"].get("estimators"):
            if estimators is None:
                raise ModelError(f"{root / 'model.json'}: lists no scorer.skops")
            scorer.set_estimators(estimators)
        self.scorer_ = scorer
        self.n_anomalies_ = train.get("n_anomalies", 0)

    def __repr__(self) -> str:
        state = f", threshold={self.threshold_value_:.4g}" if hasattr(self, "threshold_") else ""
        return f"Detector(features={self.features!r}, scorer={self.scorer!r}, aggregate={self.aggregate!r}{state})"
