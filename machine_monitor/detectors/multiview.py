"""The default detector: a small bank of complementary views of one log-mel, fused without labels.

Which view of a spectrogram shows a fault depends on the machine and the fault (TWFR-GMM,
DCASE 2022/2023): a weaker valve click lowers a band's *peak*, a clogged fan shifts a band's
*mean* level, a loose part makes a band *fluctuate*, a rubbing part changes the short-time
*frame* pattern. A user has no anomalies to pick the view with, so the detector carries
several and combines them by a rule fixed in advance.

Every member reads the same log-mel, computed once per signal, and is the same kind of
model: a cross-fitted ensemble of dense autoencoders reconstructing its view, scored by the
Mahalanobis distance of the residual from out-of-fold normal residuals (as the ``ae`` kind).

===========  =================================================================  ==========
member       view of the log-mel ``(n_frames, n_mels)``                          one row per
===========  =================================================================  ==========
``peak``     per-band soft maximum over a span (10 s, or the typical training    span
             clip): the 8 loudest frames weighted ``0.3 ** rank``
``mean``     per-band mean over the span (the steady spectrum)                   span
``std``      per-band standard deviation over the span (temporal variability)    span
``frame``    5 stacked frames of every mel: the DCASE autoencoder's view         8th frame
===========  =================================================================  ==========

Spans sit ``stride`` frames apart (0.5 s), as the ``peak`` features of the ``ae`` kind; a
span's ``frame`` score is the mean of the frame windows inside it. A window of the detector
is one span, so long files, ``scan`` and ``monitor`` see one fused score per span.

**Out of fold.** Training recordings are split into ``folds`` groups (a recording and all its
spans on one side; ``groups`` can join recordings of one session). Member network ``k`` and
scorer ``k`` never saw fold ``k``. Every training span gets an out-of-fold score from the
members blind to its fold, which is what the standardisation, the fused out-of-fold scores
and the threshold rest on; :meth:`window_scores` with ``fold=k`` scores any signal with only
the parts blind to fold ``k`` (for streaming training audio out of fold). New audio gets the
mean of the ``folds`` networks' scores.

**Standardisation and fusion.** A member's span score ``s`` becomes
``z = (log s - median) / (IQR / 1.349)`` of its out-of-fold training span scores (log: the
distances are skewed; median / IQR: robust to the few odd training spans). The views are
complementary, so a fault is often seen by one of them only (weaker valve clicks: the peak
view alone), and any averaging dilutes it: the fused score is a maximum. But on real
recordings the members' z share a common part: a recording that differs from training in
any way (another day, another gain, other background) raises every view together (out of
fold on the DCASE 2023 valve set the members' z correlate at 0.67-0.79; on the project's
synthetic machines at 0.0-0.45). A plain maximum counts that shared part up to four times.
The default (``fusion="whitened-max"``) first decorrelates the member z with the inverse
square root of their out-of-fold correlation (Ledoit-Wolf, symmetric "ZCA" whitening, which
keeps each component nearest its own member), then takes the maximum
(:func:`decorrelation`): each view's evidence counts once, and a fault one view sees alone
stands out from normal sound that every view finds a little unusual. The shared direction
is deliberately not a component of its own: a fault every view sees only a little is what
a new session looks like (the usual cause of false alarms), and a fault every view sees
strongly stands out in every component anyway. The threshold is fitted to the fused
out-of-fold scores (their decorrelation estimated without the scored fold). ``max`` (no
decorrelation), ``top2`` (mean of the two largest) and ``mean`` are the alternatives;
``benchmarks/bench_generalisation.py`` compares them (``benchmarks/README.md`` says how the
default was chosen).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from machine_monitor.detectors.base import REFIT_BELOW_RECORDINGS, BaseDetector, StreamScorer, as_clip_list, clip_name
from machine_monitor.errors import ConfigError, ModelError
from machine_monitor.features import (
    SOFT_PEAK_DECAY,
    SOFT_PEAK_TOP,
    FeatureConfig,
    gather_windows,
    mean_windows,
    pool_bands,
    soft_peak_windows,
    span_starts,
    std_windows,
)
from machine_monitor.scorers.residual import aggregate
from machine_monitor.threshold import DEFAULT_PERCENTILE, fit_threshold, group_folds, groups_from_paths

log = logging.getLogger(__name__)

#: Every view a member can take, in the default's order.
VIEWS = ("peak", "mean", "std", "frame")
FUSIONS = ("whitened-max", "max", "top2", "mean")
DEFAULT_FUSION = "whitened-max"
#: The frame view: 5 frames of every mel stacked; scored on a window every 8th frame (5 of
#: every 8 frames seen: cheap, and span views see every frame), trained on every 4th. Every
#: mel, not pairs averaged: with 128 ms frames the low mels resolve a harmonic's few-percent
#: drift, and pairs averaged it away (benchmarks/README.md, measured before the per-fold
#: centring: SYNTHETIC valve drift 0.54 -> 0.95 for this member alone, sensiml-fan threshold
#: spread 29 % -> 5 %).
FRAME_BANDS = 1
#: Models saved before the frame view's bands were recorded averaged mels in pairs.
_OLD_FRAME_BANDS = 2
FRAME_CONTEXT = 5
FRAME_STEP = 8
FRAME_TRAIN_STEP = 4
_LOG_FLOOR = 1e-9
#: A fold's standardisation scale is at least this share of the scale from every fold.
FOLD_SCALE_FLOOR = 0.5
#: Spans a span view (one row per span) needs outside every fold. With fewer, its fold
#: networks learn from one or two vectors and its scorer's covariance from as few: on
#: DCASE 2020 ToyConveyor (3 clips of 10 s, one span each) the span members' out-of-fold log
#: scores moved by up to 9 between seeds, and the clip threshold by 28-33 %, while the
#: frame view's (hundreds of rows a clip) moved by 0.01. The bank then leaves the span
#: views out, with a warning; a bank without the frame view, or a view alone, keeps them.
MIN_SPAN_ROWS = 5
#: The ``peak`` view of a model saved before the soft maximum was recorded: the plain maximum.
_MAX_POOLING = {"decay": 0.0, "top": 1}
#: ``--features`` names of the single views (the frame member is the DCASE ``logmel`` front-end).
_FEATURE_VIEWS = {"peak": "peak", "mean": "mean", "std": "std", "logmel": "frame", "frame": "frame"}


def members_for_features(features: str | None) -> tuple[str, ...]:
    """The members for a feature name: ``None`` = every view (the default), else that view alone."""
    if features is None:
        return VIEWS
    try:
        return (_FEATURE_VIEWS[features],)
    except KeyError:
        raise ConfigError(f"the multiview detector has no {features!r} view (views: peak, mean, std, "
                          f"logmel)") from None


def fuse(z: np.ndarray, rule: str = "max", *, whitening: np.ndarray | None = None) -> np.ndarray:
    """Fuse standardised member scores ``z`` of shape ``(n_members, n)`` into ``(n,)``.

    ``max``; ``whitened-max``: the maximum of ``whitening @ z`` (``whitening`` from
    :func:`decorrelation`); ``top2``: mean of the two largest; ``mean``. One member: its own score.
    """
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    if z.shape[0] == 1:
        return z[0]
    if rule == "whitened-max":
        if whitening is None or np.shape(whitening) != (z.shape[0], z.shape[0]):
            raise ConfigError(f"whitened-max fusion needs a {z.shape[0]} x {z.shape[0]} whitening matrix")
        with np.errstate(invalid="ignore"):  # inf - inf below: such a span is infinitely far anyway
            w = (np.asarray(whitening, dtype=np.float64) @ z).max(axis=0)
        return np.where(np.isposinf(z).any(axis=0), np.inf, w)
    if rule == "max":
        return z.max(axis=0)
    if rule == "mean":
        return z.mean(axis=0)
    if rule == "top2":
        return np.sort(z, axis=0)[-2:].mean(axis=0)
    raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, not {rule!r}")


def decorrelation(z: np.ndarray, n_recordings: int | None = None) -> np.ndarray:
    """The whitening matrix ``whitened-max`` fusion multiplies standardised member scores by.

    Parameters
    ----------
    z : np.ndarray [shape=(n_members, n)]
        Out-of-fold standardised member scores of normal spans.
    n_recordings : int or None
        How many recordings (groups) the spans come from; default: one per span.

    Returns
    -------
    np.ndarray [shape=(n_members, n_members)]
        ``R^{-1/2}``, the symmetric ("ZCA") whitening of the members' correlation ``R``: each
        row has unit variance on normal sound, the rows are uncorrelated, and each stays
        nearest its own member. ``R``: the Ledoit-Wolf correlation of the spans (each
        member's own scale kept: ``z`` is already standardised), shrunk toward the identity
        with the weight of as many recordings as there are members: spans of one recording
        are not independent evidence, and with a handful of recordings a near-zero
        eigenvalue would multiply noise several-fold (sensiml-fan, 5 recordings: out-of-fold
        fused scores of 12 where no member's z passed 5.3). The identity for one member or
        fewer than 3 spans.
    """
    from sklearn.covariance import LedoitWolf

    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    m, n = z.shape
    if m == 1 or n < 3:
        return np.eye(m)
    c = LedoitWolf().fit(z.T).covariance_
    d = np.sqrt(np.maximum(np.diag(c), 1e-12))
    g = n if n_recordings is None else max(int(n_recordings), 1)
    r = (g * (c / np.outer(d, d)) + m * np.eye(m)) / (g + m)
    w, v = np.linalg.eigh(r)
    return (v * w ** -0.5) @ v.T


def robust_location_scale(scores: np.ndarray) -> tuple[float, float]:
    """``(median, IQR / 1.349)`` of ``log`` scores: the standardisation of a member's scores."""
    s = np.log(np.maximum(np.asarray(scores, dtype=np.float64), _LOG_FLOOR))
    q25, q50, q75 = np.percentile(s, [25, 50, 75])
    # A floor: a member whose normal scores barely vary must not turn noise into huge z.
    return float(q50), float(max((q75 - q25) / 1.349, 0.05, 0.02 * abs(q50)))


def standardise(scores, loc: float, scale: float) -> np.ndarray:
    """``(log s - loc) / scale``."""
    return (np.log(np.maximum(np.asarray(scores, dtype=np.float64), _LOG_FLOOR)) - loc) / scale


class MultiViewDetector(BaseDetector):
    """Bank of autoencoder members on views of one log-mel, fused on standardised scores.

    Parameters
    ----------
    members : sequence of {"peak", "mean", "std", "frame"}
        The views, each one member. One member alone is that view's detector.
    fusion : {"whitened-max", "max", "top2", "mean"}
        How standardised member scores combine (see the module docstring).
    folds : int
        Cross-fitted networks per member (fewer when there are fewer recordings).
    aggregate : str
        How span scores pool into a clip score (``mean``, ``max``, ``median``, ``pNN``).
    percentile, threshold_method : threshold on the out-of-fold fused clip scores.
    val_fraction : float
        Share of each fold network's clips held out for early stopping.
    hidden, bottleneck : span members' network (128-dim input).
    frame_hidden : frame member's hidden layers (640-dim input; its bottleneck is ``bottleneck``).
    epochs, patience : span members' training (one vector per span: an epoch is a step or two).
    frame_epochs, frame_patience : the frame member's training.
    batch_size, lr : Adam settings of every member.
    seed, device, channel, progress : as every kind.
    """

    kind = "multiview"
    #: Fused scores are standardised (z-like, unbounded below): the calibration's tail model
    #: for that scale (:func:`machine_monitor.threshold.tail_model`).
    score_scale = "z"

    @property
    def score_components(self) -> int:
        """How many standardised parts the fused score is the largest of (the live calibration's
        tail law where every training recording is one window long); 1: not a maximum."""
        n = len(self.members_) if getattr(self, "members_", None) else len(self._check_members())
        return n if self.fusion in ("whitened-max", "max") else 1

    def __init__(self, *, members: Sequence[str] = VIEWS, fusion: str = DEFAULT_FUSION, folds: int = 5,
                 aggregate: str = "mean", percentile: float = DEFAULT_PERCENTILE, threshold_method: str = "gamma",
                 val_fraction: float = 0.2, hidden: Sequence[int] = (128, 128, 128, 128), bottleneck: int = 8,
                 frame_hidden: Sequence[int] = (64, 64), epochs: int = 1000, patience: int = 20,
                 frame_epochs: int = 20, frame_patience: int = 3, batch_size: int = 256, lr: float = 1e-3,
                 seed: int = 0, device: str | None = None, channel: int | None = None, progress: bool = False):
        self.members = members
        self.fusion = fusion
        self.folds = folds
        self.aggregate = aggregate
        self.percentile = percentile
        self.threshold_method = threshold_method
        self.val_fraction = val_fraction
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.frame_hidden = frame_hidden
        self.epochs = epochs
        self.patience = patience
        self.frame_epochs = frame_epochs
        self.frame_patience = frame_patience
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.channel = channel
        self.progress = progress

    # -- features ------------------------------------------------------------------
    features = "peak"  # the span front-end every view is placed on (read-only, not a parameter)

    def _feature_kind_config(self) -> FeatureConfig:
        return FeatureConfig.for_kind("peak")

    def _check_members(self) -> list[str]:
        members = [self.members] if isinstance(self.members, str) else list(self.members)
        bad = [m for m in members if m not in VIEWS]
        if not members or bad or len(set(members)) != len(members):
            raise ConfigError(f"members must be distinct views among {', '.join(VIEWS)}, not {self.members!r}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}, not {self.fusion!r}")
        if int(self.folds) < 2:
            raise ConfigError(f"folds must be >= 2 (members are cross-fitted), not {self.folds!r}")
        return members

    def logmel(self, y: np.ndarray) -> np.ndarray:
        """The shared log-mel ``(n_frames, n_mels)`` in dB of a validated signal, computed once."""
        from machine_monitor.screening import frames_in_blocks

        return frames_in_blocks(y, self.feature_config)  # block by block: bounded memory for long signals

    def view_units(self, member: str, f: np.ndarray, *, step: int = FRAME_STEP) -> np.ndarray:
        """Unstandardised rows of ``member``'s view of log-mel frames ``f``.

        Span views: one row per span ``(n_spans, n_mels)``; ``frame``: one row per
        ``step``-th frame window ``(n_windows, 5 * n_mels / frame_bands)``.
        """
        cfg = self.feature_config
        if member == "peak":
            pool = self.peak_pooling
            return soft_peak_windows(f, context=cfg.context, stride=cfg.stride, decay=pool["decay"], top=pool["top"])
        if member == "mean":
            return mean_windows(f, context=cfg.context, stride=cfg.stride)
        if member == "std":
            return std_windows(f, context=cfg.context, stride=cfg.stride)
        g = pool_bands(f, factor=self.frame_bands)
        starts = np.arange(0, max(0, g.shape[0] - FRAME_CONTEXT + 1), step)
        return gather_windows(g, starts, context=FRAME_CONTEXT)  # = stack_frames(g)[::step], built directly

    @property
    def frame_bands(self) -> int:
        """Mels averaged into one band of the ``frame`` view: the fitted model's, else the default."""
        return getattr(self, "frame_bands_", None) or FRAME_BANDS

    @property
    def peak_pooling(self) -> dict:
        """The ``peak`` view's soft maximum (``decay``, ``top``): the fitted model's, else the default's.

        Recorded in ``model.json``: a model saved before the soft maximum (none recorded)
        reads the plain maximum, as it was fitted.
        """
        return getattr(self, "peak_pooling_", None) or {"decay": SOFT_PEAK_DECAY, "top": SOFT_PEAK_TOP}

    def _span_of_frame_windows(self, n_frames: int) -> list[slice]:
        """Which frame-view rows lie inside each span: a slice per span."""
        cfg = self.feature_config
        starts = span_starts(n_frames, context=cfg.context, stride=cfg.stride)
        last = cfg.context - FRAME_CONTEXT  # last frame-window start inside a span, relative
        return [slice(-(-int(s) // FRAME_STEP), (int(s) + last) // FRAME_STEP + 1) for s in starts]

    # -- fitting -------------------------------------------------------------------
    def fit(self, clips: Iterable, y=None, *, groups: Sequence | None = None) -> MultiViewDetector:
        """Learn "normal" from clips of normal machine sound.

        Parameters
        ----------
        clips : iterable of clips
        y : ignored (scikit-learn convention)
        groups : sequence or None
            A label per clip: clips of one group (a recording cut into clips, a session)
            are always in the same fold. Default: every clip its own group.
        """
        members = self._check_members()
        clips = as_clip_list(clips)
        self._check_params(len(clips))
        self._merged = None  # networks batched for scoring: a refit (out-of-fold screening) makes new ones
        self.peak_pooling_ = {"decay": SOFT_PEAK_DECAY, "top": SOFT_PEAK_TOP}
        self.frame_bands_ = FRAME_BANDS
        if groups is not None and len(groups) != len(clips):
            raise ConfigError(f"groups must give one label per clip: {len(groups)} labels for {len(clips)} clips")
        t0 = time.perf_counter()
        if groups is None:  # the calibration's default: every recording its own group
            groups = groups_from_paths([str(c) if isinstance(c, (str, os.PathLike)) else None for c in clips])
        groups = [str(g) for g in groups]
        logmels, keep = self._load(clips)
        groups = [g for g, k in zip(groups, keep) if k]
        sessions = groups  # as given: what the decorrelation counts as independent recordings
        if len(set(groups)) < 2:
            log.warning("all training recordings form one group: the members' folds split them clip by clip")
            groups = [f"#{i}" for i in range(len(groups))]
        self.groups_ = groups
        # The folds the calibration makes from the same groups (threshold.group_folds): its
        # out-of-fold scores then come from these members' parts blind to each fold.
        self.member_folds_ = self.fold_of_ = fold_of = group_folds(groups, n_folds=int(self.folds))
        self.n_folds_ = int(fold_of.max()) + 1
        members = self._enough_spans(members, logmels, fold_of)
        mean, std = _band_mean_std(logmels)  # no concatenated copy of hours of log-mel
        self.reference_logmel_ = mean.astype(np.float32)
        self.feature_mean_ = self.reference_logmel_.copy()
        self.feature_std_ = np.maximum(std, 1e-3).astype(np.float32)
        self.members_, self.member_fit_seconds_ = {}, {}
        for name in members:
            t1 = time.perf_counter()
            # Seeded by view, not position: a member alone is the same model as inside the bank.
            self.members_[name] = _Member(name, self).fit(logmels, fold_of, self.seed + 1000 * VIEWS.index(name))
            self.member_fit_seconds_[name] = time.perf_counter() - t1
        # Out-of-fold span scores -> standardisation (all folds, and without each fold) -> fusion.
        self.history_ = [{"member": n, **h} for n, m in self.members_.items() for h in m.history_]
        for m in self.members_.values():
            m.set_standardisation(fold_of)
        oof_z = np.stack([m.oof_z() for m in self.members_.values()])  # (members, spans)
        span_counts = [len(s) for s in next(iter(self.members_.values())).oof_scores_]
        span_fold = np.repeat(fold_of, span_counts)
        # The decorrelation from every span, and without each fold (for that fold's scores).
        # A fold leaving too few spans for a correlation: the plain maximum everywhere, so the
        # threshold is fitted to what new audio gets.
        outside = [span_fold != k for k in range(self.n_folds_)]
        if min(int(o.sum()) for o in outside) < 3:
            self.whitening_ = np.eye(len(members))
            self.fold_whitening_ = [np.eye(len(members)) for _ in outside]
        else:
            n_sessions = [len({g for g, k in zip(sessions, fold_of) if k != j}) for j in range(self.n_folds_)]
            self.whitening_ = decorrelation(oof_z, len(set(sessions)))
            self.fold_whitening_ = [decorrelation(oof_z[:, o], n) for o, n in zip(outside, n_sessions)]
        per_span = np.empty(oof_z.shape[1])
        for k in range(self.n_folds_):
            per_span[span_fold == k] = self.fuse(oof_z[:, span_fold == k], fold=k)
        bounds = np.cumsum([0] + span_counts)
        self.oof_window_scores_ = [per_span[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        scores = np.array([aggregate(s, self.aggregate) for s in self.oof_window_scores_])
        self.train_scores_ = self.val_scores_ = scores
        self.val_clips_ = np.arange(len(scores))
        self.threshold_ = fit_threshold(scores, method=self.threshold_method, percentile=self.percentile)
        self.n_clips_ = len(logmels)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _enough_spans(self, members: list[str], logmels: list[np.ndarray], fold_of: np.ndarray) -> list[str]:
        """``members`` without the span views when some fold leaves fewer than ``MIN_SPAN_ROWS``
        spans outside it (only in a bank that keeps the frame view)."""
        cfg = self.feature_config
        spans = np.array([len(span_starts(f.shape[0], context=cfg.context, stride=cfg.stride)) for f in logmels])
        fewest = min(int(spans[fold_of != k].sum()) for k in range(int(fold_of.max()) + 1))
        thin = [m for m in members if m != "frame"]
        if fewest >= MIN_SPAN_ROWS or "frame" not in members or not thin:
            return members
        log.warning("the %s view%s left out: %d span%s of %.0f s outside a fold, fewer than the %d a view "
                    "needs to learn from; the model uses the frame view alone. Give more (or longer) "
                    "recordings.", ", ".join(thin), "s are" if len(thin) > 1 else " is", fewest,
                    "" if fewest == 1 else "s", cfg.min_samples / cfg.sr, MIN_SPAN_ROWS)
        return [m for m in members if m not in thin]

    def _load(self, clips: list) -> tuple[list[np.ndarray], np.ndarray]:
        """Every clip's log-mel (computed once); fits the span to the typical clip."""
        from tqdm.auto import tqdm

        base = self._feature_kind_config()
        self.feature_config_ = base.fitted_to(1)
        logmels, seconds = [], []
        from machine_monitor.screening import read_training_clip

        for i, clip in enumerate(tqdm(clips, desc="features", unit="clip", disable=not self.progress, leave=False)):
            # Frames block by block: a long file costs its frames, not its signal and STFT (issue 14).
            f_, stats_ = read_training_clip(clip, self.feature_config_, channel=self.channel, name=clip_name(clip, i))
            seconds.append(stats_.n / base.sr)
            logmels.append(f_)
        self.clip_seconds_ = float(np.median(seconds))
        lengths = np.array([len(f) for f in logmels])
        self.feature_config_ = cfg = base.fitted_to(int(np.median(lengths)))
        keep = lengths >= cfg.context
        self.skipped_clips_ = [clip_name(c, i) for i, c in enumerate(clips) if not keep[i]]
        for name in self.skipped_clips_:
            log.warning("%s: shorter than the other clips' %.2f s span: not used for training",
                        name, cfg.min_samples / cfg.sr)
        logmels = [f for f, k in zip(logmels, keep) if k]
        if len(logmels) < 2:
            raise ConfigError(f"need at least 2 clips as long as the {cfg.min_samples / cfg.sr:.2f} s span, "
                              f"got {len(logmels)}")
        return logmels, keep

    # -- scoring -------------------------------------------------------------------
    def member_window_scores(self, f: np.ndarray | list[np.ndarray], *,
                             fold: int | None = None) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """Each member's raw span scores ``(n_spans,)`` of log-mel frames ``f``.

        ``f`` a list of log-mels: a list of such dicts, each network run once on the rows of
        all of them (its weights read once, not once per clip: what a scan of many short
        files spends most on), the same numbers to float32 rounding.
        """
        many = isinstance(f, (list, tuple))
        fs = list(f) if many else [f]
        span = [n for n, m in self.members_.items() if m.span]
        if fold is not None:
            out = [{name: m.span_scores(g, fold=fold) for name, m in self.members_.items()} for g in fs]
        else:
            merged = self._span_scores_merged(fs, span) if len(span) >= 2 else [{} for _ in fs]
            rest = {name: m.span_scores(fs) for name, m in self.members_.items() if name not in merged[0]}
            out = [{name: merged[i][name] if name in merged[i] else rest[name][i] for name in self.members_}
                   for i in range(len(fs))]
        return out if many else out[0]

    def _span_scores_merged(self, f: np.ndarray | list[np.ndarray],
                            names: list[str]) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """The span members' scores with every network of every span member in one batched
        chain (same architecture, one row per span each): the same numbers as
        ``span_scores``, a third of the calls. A list of log-mels: a list of dicts, the
        rows of all of them in one pass."""
        if getattr(self, "_merged", None) is None or self._merged[0] != names:
            members = [self.members_[n] for n in names]
            stack = _Stack([net for m in members for net in m.nets_])
            mean = np.stack([m.scorer_.mean_ for m in members])[:, None, None, :]
            precision = np.stack([m.scorer_.precision_ for m in members])[:, None]
            self._merged = (names, stack, mean, precision)
        _, stack, mean, precision = self._merged
        k = self.n_folds_
        many = isinstance(f, (list, tuple))
        fs = list(f) if many else [f]
        parts = [np.stack([self.members_[n].units(g) for n in names]) for g in fs]  # (members, spans, dims) each
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        h = stack(np.repeat(x, k, axis=0))  # (members * k, spans, dims)
        r = x[:, None] - h.reshape(len(names), k, *x.shape[1:])
        d = r - mean
        w = np.einsum("mksj,mksj->mks", d @ precision, d).mean(axis=1)
        bounds = np.cumsum([0] + [p.shape[1] for p in parts])
        out = [dict(zip(names, w[:, a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        return out if many else out[0]

    def member_z(self, f: np.ndarray, *, fold: int | None = None) -> dict[str, np.ndarray]:
        """Each member's standardised span scores ``(n_spans,)`` of log-mel frames ``f``."""
        raw = self.member_window_scores(f, fold=fold)
        return {name: m.standardise(raw[name], fold=fold) for name, m in self.members_.items()}

    def fuse(self, z: np.ndarray | dict[str, np.ndarray], *, fold: int | None = None) -> np.ndarray:
        """The fused span scores ``(n_spans,)`` of the members' standardised span scores
        (:meth:`member_z`: a dict, or their stack ``(n_members, n_spans)``); ``fold=k``: with
        the decorrelation estimated without fold ``k``."""
        if isinstance(z, dict):
            z = np.stack([z[n] for n in self.members_])
        whitening = None
        if self.fusion == "whitened-max":
            whitening = self.whitening_ if fold is None else self.fold_whitening_[fold]
        return fuse(z, self.fusion, whitening=whitening)

    def decorrelated_z(self, z: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The member z the fusion takes the maximum of: decorrelated under ``whitened-max``
        (each view's own evidence), else as standardised."""
        if self.fusion != "whitened-max" or len(z) == 1:
            return z
        w = self.whitening_ @ np.stack([z[n] for n in self.members_])
        return dict(zip(self.members_, w))

    def _check_fold(self, fold: int | None) -> None:
        if fold is not None and not 0 <= int(fold) < self.n_folds_:
            raise ConfigError(f"fold must be in [0, {self.n_folds_}), not {fold!r}")

    def window_scores(self, y: np.ndarray, *, fold: int | None = None) -> np.ndarray:
        """Fused score of each span ``(n_spans,)`` of a validated 16 kHz mono signal.

        ``fold=k``: scored only by the members' parts blind to fold ``k`` (network ``k``,
        scorer ``k``, standardisation without fold ``k``): an out-of-fold score for
        training audio of fold ``k`` (see :attr:`member_folds_`).
        """
        self._check_fitted()
        self._check_fold(fold)
        return self.fuse(self.member_z(self.logmel(y), fold=fold), fold=fold)

    def score_signal(self, y: np.ndarray, *, fold: int | None = None) -> float:
        """Clip score (``aggregate`` of the span scores); ``fold`` as :meth:`window_scores`."""
        return aggregate(self.window_scores(y, fold=fold), self.aggregate)

    def score_logmel(self, f: np.ndarray) -> float:
        """Clip score of log-mel frames ``f`` ``(n_frames, n_mels)`` (what :meth:`score_signal` computes)."""
        return aggregate(self.fuse(self.member_z(f)), self.aggregate)

    def streaming(self) -> MultiViewStream:
        """A stream scorer that computes each log-mel frame of the stream once (see :class:`MultiViewStream`)."""
        self._check_fitted()
        # Build the numpy copies of the networks now, not inside the first hop's time budget.
        probe = np.zeros((self.feature_config.context, self.feature_config.n_mels), dtype=np.float32)
        self.member_window_scores(probe)
        for m in self.members_.values():
            m.stack()
        return MultiViewStream(self)

    def score_members(self, y: np.ndarray) -> tuple[float, dict[str, float]]:
        """The clip score of a validated signal and each member's standardised clip score
        (``aggregate`` of its span ``z``), from one pass: what ``scan`` rows and
        ``evaluate --json`` report as "which view found it"."""
        self._check_fitted()
        return self.clip_and_members(self.member_z(self.logmel(y)))

    def clip_and_members(self, z: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
        """The clip score and each member's clip z (:meth:`decorrelated_z`, pooled over spans)
        from the members' standardised span scores ``z``."""
        own = self.decorrelated_z(z)
        return (aggregate(self.fuse(z), self.aggregate),
                {n: round(aggregate(v, self.aggregate), 4) for n, v in own.items()})

    def explain(self, y) -> dict:
        """Which view found it: every member's standardised score for a clip, and where.

        Parameters
        ----------
        y : a clip (path, 16 kHz array, or ``(array, sample_rate)``)

        Returns
        -------
        dict
            ``score`` (fused clip score), ``threshold``, ``fusion``, ``members`` (name ->
            the member's clip ``z`` as the fusion sees it: decorrelated under
            ``whitened-max``, pooled over spans like the clip score), ``member_z`` (name ->
            standardised clip ``z`` before decorrelation), ``member_scores`` (name -> raw
            clip score), ``top_member`` (largest of ``members``),
            ``worst_span`` (``{"index", "start_s", "end_s"}``: the span with the highest fused
            score), ``bands`` (``(n_mels,)``: the top member's per-band share of its Mahalanobis
            distance in the worst span, absolute values summing to 1), ``member_bands`` (the
            same for every member) and ``band_delta_db`` (``(n_mels,)``: that span's mean
            log-mel minus :attr:`reference_logmel_`).
        """
        self._check_fitted()
        sig = self.load_signal(y)
        f = self.logmel(sig)
        raw = self.member_window_scores(f)
        z = {n: self.members_[n].standardise(s) for n, s in raw.items()}
        fused = self.fuse(z)
        worst = int(np.argmax(fused))
        cfg = self.feature_config
        start = int(span_starts(f.shape[0], context=cfg.context, stride=cfg.stride)[worst])
        members = {n: aggregate(v, self.aggregate) for n, v in self.decorrelated_z(z).items()}
        bands = {n: m.band_contributions(f, worst).tolist() for n, m in self.members_.items()}
        top = max(members, key=members.get)
        return {
            "score": aggregate(fused, self.aggregate),
            "threshold": self.threshold_value_,
            "fusion": self.fusion,
            "members": members,
            "member_z": {n: aggregate(v, self.aggregate) for n, v in z.items()},
            "member_scores": {n: aggregate(v, self.aggregate) for n, v in raw.items()},
            "top_member": top,
            "worst_span": {"index": worst, "start_s": start * cfg.hop_length / cfg.sr,
                           "end_s": (start * cfg.hop_length + cfg.min_samples) / cfg.sr},
            "bands": bands[top],
            "member_bands": bands,
            "band_delta_db": (f[start:start + cfg.context].mean(axis=0) - self.reference_logmel_).tolist(),
        }

    # -- the model directory ---------------------------------------------------------
    def _manifest_parts(self) -> dict:
        return {"multiview": {
            "members": [m.describe() for m in self.members_.values()],
            "fusion": self.fusion,
            **({"whitening": self.whitening_.tolist(), "fold_whitening": [w.tolist() for w in self.fold_whitening_]}
               if self.fusion == "whitened-max" else {}),
            "peak_pooling": self.peak_pooling,
            "frame_bands": self.frame_bands,
            "standardisation": "z = (log(score) - median) / (IQR / 1.349) of out-of-fold training span scores",
            "folds": self.n_folds_,
            "fold_of": self.member_folds_.tolist(),
            "groups": list(self.groups_),
        }}

    def _fit_record(self) -> dict:
        return {**super()._fit_record(), "oof_window_scores": [s.tolist() for s in self.oof_window_scores_]}

    def _model_arrays(self) -> dict[str, np.ndarray]:
        out = {"reference_logmel": self.reference_logmel_}
        for m in self.members_.values():
            out.update(m.arrays())
        return out

    def _model_tensors(self) -> dict:
        return {f"{name}.{k}.{p}": v for name, m in self.members_.items()
                for k, net in enumerate(m.nets_) for p, v in net.state_dict().items()}

    def _check_manifest(self, m: dict, root: Path) -> None:
        mv = m["multiview"]
        names = [d["name"] for d in mv["members"]]
        if not names or any(n not in VIEWS for n in names) or mv["fusion"] not in FUSIONS:
            raise ModelError(f"{root / 'model.json'}: unknown members {names} or fusion {mv['fusion']!r}")
        if int(mv["folds"]) < 2 or int(mv["folds"]) > 64:
            raise ModelError(f"{root / 'model.json'}: implausible folds {mv['folds']!r}")
        if m.get("params", {}).get("fusion", mv["fusion"]) != mv["fusion"]:
            raise ModelError(f"{root / 'model.json'}: the parameters' fusion {m['params']['fusion']!r} is not the "
                             f"fitted fusion {mv['fusion']!r}")
        if mv["fusion"] == "whitened-max":
            n, k = len(names), int(mv["folds"])
            try:
                mats = np.asarray([mv["whitening"], *mv["fold_whitening"]], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                mats = None
            if mats is None or mats.shape != (k + 1, n, n) or not np.isfinite(mats).all():
                raise ModelError(f"{root / 'model.json'}: whitened-max fusion without {k + 1} finite "
                                 f"{n} x {n} whitening matrices")
        pool = mv.get("peak_pooling", _MAX_POOLING)
        decay, top = (pool.get("decay"), pool.get("top")) if isinstance(pool, dict) else (None, None)
        if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0 and isinstance(top, int) and 1 <= top <= 4096):
            raise ModelError(f"{root / 'model.json'}: implausible peak_pooling {pool!r}")
        bands = mv.get("frame_bands", _OLD_FRAME_BANDS)
        if not (isinstance(bands, int) and 1 <= bands <= 64):
            raise ModelError(f"{root / 'model.json'}: implausible frame_bands {bands!r}")

    def _restore(self, m: dict, arrays: dict, tensors: dict | None, estimators: dict | None, *,
                 root: Path, device: str | None) -> None:
        if tensors is None:
            raise ModelError(f"{root / 'model.json'}: lists no network.safetensors")
        mv = m["multiview"]
        self.n_folds_ = int(mv["folds"])
        self.member_folds_ = self.fold_of_ = np.asarray(mv["fold_of"], dtype=np.int64)
        self.groups_ = list(mv["groups"])
        if self.fusion == "whitened-max":  # checked by _check_manifest
            self.whitening_ = np.asarray(mv["whitening"], dtype=np.float64)
            self.fold_whitening_ = [np.asarray(w, dtype=np.float64) for w in mv["fold_whitening"]]
        pool = mv.get("peak_pooling", _MAX_POOLING)  # checked by _check_manifest
        self.peak_pooling_ = {"decay": float(pool["decay"]), "top": int(pool["top"])}
        self.frame_bands_ = int(mv.get("frame_bands", _OLD_FRAME_BANDS))
        self.reference_logmel_ = arrays["reference_logmel"]
        if self.reference_logmel_.shape != (self.feature_config_.n_mels,):
            raise ModelError(f"{root / 'arrays.safetensors'}: reference_logmel does not match the mel bands")
        self.members_ = {}
        for d in mv["members"]:
            self.members_[d["name"]] = _Member.restore(d, self, arrays, tensors, self.n_folds_, root=root)
        self.oof_window_scores_ = [np.asarray(s, dtype=np.float64)
                                   for s in m.get("training", {}).get("oof_window_scores", [])]

    def __repr__(self) -> str:
        state = f", threshold={self.threshold_value_:.4g}" if hasattr(self, "threshold_") else ""
        return f"MultiViewDetector(members={list(self._check_members())!r}, fusion={self.fusion!r}{state})"


def _band_mean_std(parts: Sequence[np.ndarray], *, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation (float64) of the rows of all ``parts`` together,
    merged chunk by chunk (Chan et al.): memory of one chunk, not of every row at once.

    Parameters
    ----------
    parts : sequence of np.ndarray [shape=(n_i, n_bands)]

    Returns
    -------
    mean, std : np.ndarray [shape=(n_bands,), dtype=float64]
    """
    n, mean, m2 = 0, None, None
    for part in parts:
        for a in range(0, len(part), chunk):
            x = np.asarray(part[a:a + chunk], dtype=np.float64)
            k, mu = len(x), x.mean(axis=0)
            ss = ((x - mu) ** 2).sum(axis=0)
            if mean is None:
                n, mean, m2 = k, mu, ss
                continue
            delta, total = mu - mean, n + k
            mean = mean + delta * (k / total)
            m2 = m2 + ss + delta**2 * (n * k / total)
            n = total
    if mean is None:
        raise ConfigError("no log-mel frames to standardise")
    return mean, np.sqrt(m2 / n)


class MultiViewStream(StreamScorer):
    """Sliding windows of one stream scored as :meth:`MultiViewDetector.score_signal` scores
    them, with the shared log-mel computed once per frame of the stream: each hop computes
    the new frames only (a 10 s window every 0.512 s: 16 frames instead of 311), then the
    views and members of the window. Windows must start on the frame grid from ``origin``
    (as the monitor places them); one that does not is scored whole.
    """

    def __init__(self, detector: MultiViewDetector):
        super().__init__(detector, incremental=False)

    def reset(self, origin: int) -> None:
        super().reset(origin)
        cfg = self.detector.feature_config
        self._f = np.zeros((0, cfg.n_mels), dtype=np.float32)
        self._first = 0  # stream frame index (from origin) of self._f[0]

    def skip_to(self, position: int) -> None:
        first = -(-(position - self.origin) // self.hop)
        if first > self._first:  # frames before it are needed by no later window
            self._f = self._f[min(first - self._first, len(self._f)):]
            self._first = first

    def score(self, ring, start: int, stop: int) -> float:
        det = self.detector
        n_fft = det.feature_config.n_fft
        if (start - self.origin) % self.hop or stop - start < n_fft:
            return det.score_signal(ring.get(start, stop))
        first = (start - self.origin) // self.hop
        last = (stop - n_fft - self.origin) // self.hop  # the last whole frame inside the window
        if first < self._first or first > self._first + len(self._f):
            self._f, self._first = self._f[:0], first  # a gap: start afresh at this window
        self._f = self._f[first - self._first:]
        self._first = first
        have = self._first + len(self._f)  # next frame to compute
        if last >= have:
            a = self.origin + have * self.hop
            new = det.logmel(ring.get(a, self.origin + last * self.hop + n_fft))
            self._f = np.concatenate([self._f, new]) if len(self._f) else new
        return det.score_logmel(self._f[: last - first + 1])


class _Stack:
    """``K`` same-shape trained autoencoders run as one chain of batched matrix products.

    Scoring feeds each network a few rows (one per span): there the per-call overhead of
    ``K`` separate numpy copies (or of torch) is most of the cost.
    """

    def __init__(self, nets):
        from machine_monitor.autoencoder import NumpyAutoencoder

        copies = [NumpyAutoencoder(net) for net in nets]
        self.layers = []
        for part in ("encoder", "decoder"):
            for i, (_, _, relu) in enumerate(getattr(copies[0], part)):
                w = np.stack([getattr(c, part)[i][0] for c in copies]).astype(np.float32)
                b = np.stack([getattr(c, part)[i][1] for c in copies])[:, None, :].astype(np.float32)
                self.layers.append((w, b, relu))
        # Every network's first layer side by side, (d, K * hidden): rows shared by all K
        # networks go through one matrix product instead of K (a third less time for them).
        w0 = self.layers[0][0]
        self._first = np.ascontiguousarray(w0.transpose(1, 0, 2).reshape(w0.shape[1], -1))

    def __call__(self, x: np.ndarray, which: int | None = None, *, layers: list | None = None) -> np.ndarray:
        """Reconstructions ``(K, n, d)`` of rows ``x`` ``(n, d)`` by every network (or ``(1, n, d)``: one)."""
        h = np.asarray(x, dtype=np.float32)
        layers = self.layers if layers is None else layers
        for w, b, relu in layers:
            if which is not None:
                w, b = w[which : which + 1], b[which : which + 1]
            if h.ndim == 2 and which is None and w is self.layers[0][0]:
                h = np.ascontiguousarray((h @ self._first).reshape(len(h), w.shape[0], -1).transpose(1, 0, 2))
            else:
                h = h @ w
            h += b
            if relu:
                np.maximum(h, 0, out=h)
        return h

    def mean_distance(self, x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
        """Mean over the networks of each row's squared Mahalanobis residual distance ``(n,)``.

        The number ``_mahalanobis(x - self(x), mean, precision).mean(axis=0)`` gives (to
        float32 rounding), with the last layer folded into the Cholesky factor ``L`` of
        ``precision``: ``|(x - mean) L - g W L - b L|^2`` for the last hidden layer's ``g``,
        a product with ``L`` once and ``g (W L)`` per network instead of the last layer and
        a ``d x d`` product per network (a third of the work for the frame member).
        """
        folded = getattr(self, "_folded", None)
        if folded is None or folded[0] is not mean or folded[1] is not precision:
            folded = self._folded = (mean, precision, _fold_distance(self.layers[-1], mean, precision))
        if folded[2] is None:
            return _mahalanobis(np.asarray(x, dtype=np.float32)[None] - self(x), mean, precision).mean(axis=0)
        chol, mean_chol, w_chol, b_chol = folded[2]
        x = np.asarray(x, dtype=np.float32)
        e = self(x, layers=self.layers[:-1]) @ w_chol  # (K, n, d)
        e += b_chol
        e -= x @ chol - mean_chol
        return np.einsum("kij,kij->ki", e, e).mean(axis=0)


def _fold_distance(last, mean: np.ndarray, precision: np.ndarray):
    """``(L, mean L, W L, b L)`` (float32, from float64) for :meth:`_Stack.mean_distance`, or
    ``None`` (a ReLU on the output, or a precision matrix that is not positive definite)."""
    w, b, relu = last
    if relu:
        return None
    p = np.asarray(precision, dtype=np.float64)
    try:
        chol = np.linalg.cholesky((p + p.T) / 2)  # x P x = x sym(P) x for every x
    except np.linalg.LinAlgError:
        return None
    return (chol.astype(np.float32), (np.asarray(mean, dtype=np.float64) @ chol).astype(np.float32),
            (w.astype(np.float64) @ chol).astype(np.float32), (b.astype(np.float64) @ chol).astype(np.float32))


def _mahalanobis(r: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of residual rows ``r`` ``(..., d)``: ``(...)``."""
    d = r - mean
    # One matrix product for every network's rows (a (K, n, d) @ (d, d) product loops over K).
    q = (d.reshape(-1, d.shape[-1]) @ precision).reshape(d.shape)
    return np.einsum("...j,...j->...", q, d)


class _Member:
    """One view: standardisation, a cross-fitted autoencoder per fold, Mahalanobis scorers."""

    def __init__(self, name: str, det: MultiViewDetector):
        self.name, self.det = name, det

    @property
    def span(self) -> bool:
        return self.name != "frame"

    def _network_config(self, dims: int):
        from machine_monitor.autoencoder import NetworkConfig

        hidden = self.det.hidden if self.span else self.det.frame_hidden
        return NetworkConfig(int(dims), tuple(int(h) for h in hidden), int(self.det.bottleneck))

    def _train_config(self, seed: int):
        from machine_monitor.training import TrainConfig

        d = self.det
        epochs, patience = (d.epochs, d.patience) if self.span else (d.frame_epochs, d.frame_patience)
        return TrainConfig(epochs=int(epochs), batch_size=int(d.batch_size), lr=float(d.lr), patience=int(patience),
                           seed=int(seed))

    def units(self, f: np.ndarray) -> np.ndarray:
        u = self.det.view_units(self.name, f)
        u -= self.mean_
        u /= self.std_
        return u

    def fit(self, logmels: list[np.ndarray], fold_of: np.ndarray, seed: int) -> _Member:
        import torch

        from machine_monitor.autoencoder import DenseAutoencoder, fold_centring, fold_means
        from machine_monitor.scorers.residual import MahalanobisScorer
        from machine_monitor.screening import rows_in_pieces
        from machine_monitor.training import best_epoch, default_device, train_network

        det = self.det
        fcfg = det.feature_config
        width, stride = (fcfg.context, fcfg.stride) if self.span else (FRAME_CONTEXT, FRAME_TRAIN_STEP)

        def raw_rows():  # (clip, part of its raw view rows): a long clip's view piece by piece (issue 14)
            for i, f in enumerate(logmels):
                for rows in rows_in_pieces(lambda g: det.view_units(self.name, g, step=FRAME_TRAIN_STEP), f,
                                           span=width, stride=stride):
                    yield i, rows

        # Two passes over the views (band statistics, then standardised rows into one array)
        # rather than every clip's raw view and its standardised copy held at once.
        n_rows = np.zeros(len(logmels), dtype=np.int64)

        def counted():
            for i, rows in raw_rows():
                n_rows[i] += len(rows)
                yield rows

        mean, std = _band_mean_std(counted())
        self.mean_, self.std_ = mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)
        bounds = np.concatenate([[0], np.cumsum(n_rows)])
        units = np.empty((int(bounds[-1]), self.mean_.size), dtype=np.float32)
        at = bounds[:-1].copy()
        for i, rows in raw_rows():
            units[at[i]:at[i] + len(rows)] = (rows - self.mean_) / self.std_
            at[i] += len(rows)
        per_clip = [units[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        # Each fold network is centred on the mean row of the clips outside its fold, not of
        # every clip (folded into its first and last layers once trained: it then reads and
        # writes the shared units). A centre that includes a clip pulls the clip toward the
        # middle: out of fold, the demo machine's clips scored lower than new audio (z 0.3-0.4
        # lower), and the clip thresholds flagged 3-3.5 % of new normal clips for the 1 %
        # promised; centred per fold, 1.0 % (benchmarks/README.md). The scale stays the shared
        # one: per fold it moved no threshold there and only added noise with few recordings.
        centres = fold_means(per_clip, fold_of)
        self.network_config_ = self._network_config(units.shape[1])
        device = torch.device(det.device) if det.device else default_device()
        rng = np.random.default_rng(seed)
        self.nets_, self.history_ = [], []
        n_folds = int(fold_of.max()) + 1
        for k in range(n_folds):
            ids = rng.permutation(np.flatnonzero(fold_of != k))
            n_val = min(len(ids) - 1, max(1, int(round(det.val_fraction * len(ids)))))
            cfg = self._train_config(seed + k)
            if sum(len(per_clip[i]) for i in ids[n_val:]) < 2:
                # Too few rows to hold clips out for early stopping: train on them all, a fixed budget.
                n_val, cfg = 0, dataclasses.replace(cfg, epochs=min(cfg.epochs, 200))
            # Rows of `units` by index, not concatenated copies: row j of the fold's training set
            # is units[train[j]], the same rows in the same order as concatenating its clips.
            train = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in ids[n_val:]])
            if len(train) < 2:
                raise ConfigError(f"the {self.name} member needs at least 2 training rows outside each fold, got "
                                  f"{len(train)}: give more (or longer) clips")
            val = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in ids[:n_val]]) if n_val else None
            torch.manual_seed(seed + k)
            net = DenseAutoencoder(self.network_config_)
            c = centres[k]
            hist = train_network(net, lambda idx, r=train, c=c: units[r[idx]] - c, len(train),
                                 None if val is None else (lambda idx, r=val, c=c: units[r[idx]] - c),
                                 0 if val is None else len(val), cfg, device=device, progress=det.progress)
            if val is not None and len({det.groups_[i] for i in ids}) < REFIT_BELOW_RECORDINGS:
                # Few recordings (base.REFIT_BELOW_RECORDINGS): early stopping has chosen the
                # epochs; the network then learns them from every clip outside the fold.
                every = np.concatenate([train, val])
                torch.manual_seed(seed + k)
                net = DenseAutoencoder(self.network_config_)
                hist = [{**h, "refit": True} for h in train_network(
                    net, lambda idx, r=every, c=c: units[r[idx]] - c, len(every), None, 0,
                    dataclasses.replace(cfg, epochs=best_epoch(hist)), device=device, progress=det.progress)]
            self.nets_.append(fold_centring(net.eval(), c))
            self.history_ += [{"fold": k, **h} for h in hist]
        self.train_config_ = self._train_config(seed)
        # Out-of-fold residuals (of the rows scoring uses) -> the deployed scorer (all of them)
        # and one scorer per fold (without it).
        if not self.span and FRAME_STEP != FRAME_TRAIN_STEP:
            del per_clip, units  # the training rows go before the scoring rows are made
            per_clip = [self.units(f) for f in logmels]
        recons = [self._reconstruct(u, self.nets_[fold_of[i]]) for i, u in enumerate(per_clip)]
        self.scorer_ = MahalanobisScorer(seed=seed).fit(recons)
        self.fold_scorers_ = []
        oof = [None] * len(per_clip)
        for k in range(n_folds):
            inside, outside = np.flatnonzero(fold_of == k), np.flatnonzero(fold_of != k)
            scorer = MahalanobisScorer(seed=seed).fit([recons[i] for i in outside])
            self.fold_scorers_.append(scorer)
            for i in inside:
                oof[i] = self._pool_to_spans(scorer.window_scores(recons[i]), logmels[i].shape[0])
        self.oof_scores_ = oof  # per clip: out-of-fold raw span scores
        return self

    def _reconstruct(self, x: np.ndarray, net):
        from machine_monitor.autoencoder import numpy_inference
        from machine_monitor.scorers.residual import Reconstruction

        fast = numpy_inference(net)
        if fast is None:
            import torch

            with torch.no_grad():
                xt = torch.from_numpy(x).to(next(net.parameters()).device)
                return Reconstruction(x=x, x_hat=net(xt).cpu().numpy())
        x_hat, z = fast(x)
        return Reconstruction(x=x, x_hat=x_hat, z=z)

    def _pool_to_spans(self, window_scores: np.ndarray, n_frames: int) -> np.ndarray:
        if self.span:
            return window_scores
        return np.array([window_scores[s].mean() for s in self.det._span_of_frame_windows(n_frames)])

    def span_scores(self, f: np.ndarray | list[np.ndarray], *, fold: int | None = None) -> np.ndarray | list:
        """Raw span scores ``(n_spans,)``: mean over the fold networks, or fold ``fold``'s parts only.

        A list of log-mels (``fold=None``): a list of such arrays, the rows of all of them
        through the networks at once.
        """
        if isinstance(f, (list, tuple)):
            if fold is not None:
                return [self.span_scores(g, fold=fold) for g in f]
            parts = [self.units(g) for g in f]
            w = self.stack().mean_distance(np.concatenate(parts) if len(parts) > 1 else parts[0],
                                           self.scorer_.mean_, self.scorer_.precision_)
            bounds = np.cumsum([0] + [len(p) for p in parts])
            return [self._pool_to_spans(w[a:b], g.shape[0]) for g, a, b in zip(f, bounds[:-1], bounds[1:])]
        x = self.units(f)
        stack = self.stack()
        if fold is not None:
            sc = self.fold_scorers_[fold]
            w = _mahalanobis(x - stack(x, which=fold)[0], sc.mean_, sc.precision_)
        else:
            w = stack.mean_distance(x, self.scorer_.mean_, self.scorer_.precision_)
        return self._pool_to_spans(w, f.shape[0])

    def stack(self) -> _Stack:
        """The fold networks as one batched numpy chain (built once)."""
        if getattr(self, "_stack", None) is None:
            self._stack = _Stack(self.nets_)
        return self._stack

    def band_contributions(self, f: np.ndarray, span: int) -> np.ndarray:
        """Per-mel share ``(n_mels,)`` of the Mahalanobis distance of span ``span`` (mean over networks)."""
        x = self.units(f)
        rows = self.det._span_of_frame_windows(f.shape[0])[span] if not self.span else slice(span, span + 1)
        d = x[rows][None] - self.stack()(x[rows]) - self.scorer_.mean_
        total = (d * (d @ self.scorer_.precision_)).sum(axis=(0, 1))
        if not self.span:  # (context x pooled bands) -> mels
            b = self.det.frame_bands
            total = np.repeat(total.reshape(FRAME_CONTEXT, -1).sum(axis=0), b)[: f.shape[1]] / b
        s = np.abs(total).sum()
        return total / s if s > 0 else total

    def set_standardisation(self, fold_of: np.ndarray) -> None:
        """Location and scale of log scores: from every clip's out-of-fold spans, and without each fold."""
        oof = self.oof_scores_
        self.loc_, self.scale_ = robust_location_scale(np.concatenate(oof))
        self.fold_loc_, self.fold_scale_ = [], []
        for k in range(int(fold_of.max()) + 1):
            rest = [oof[i] for i in np.flatnonzero(fold_of != k)]
            loc, scale = robust_location_scale(np.concatenate(rest))
            self.fold_loc_.append(loc)
            # Never below a share of the scale from every fold: with a handful of recordings the
            # spread of the two or three left is often near zero, and z of hundreds followed
            # (DCASE 2020 ToyConveyor, 3 clips: fold scale 0.05 beside 1.1, thresholds 316-1133
            # across seeds). With many recordings the fold scales match the pooled one and
            # this never binds.
            self.fold_scale_.append(max(scale, FOLD_SCALE_FLOOR * self.scale_))
        self._fold_of = fold_of

    def standardise(self, scores: np.ndarray, *, fold: int | None = None) -> np.ndarray:
        if fold is None:
            return standardise(scores, self.loc_, self.scale_)
        return standardise(scores, self.fold_loc_[fold], self.fold_scale_[fold])

    def oof_z(self) -> np.ndarray:
        """Every training span's out-of-fold standardised score, clip after clip."""
        return np.concatenate([self.standardise(s, fold=int(self._fold_of[i])) for i, s in enumerate(self.oof_scores_)])

    # -- persistence ---------------------------------------------------------------
    def describe(self) -> dict:
        oof = np.concatenate(self.oof_scores_) if getattr(self, "oof_scores_", None) else np.zeros(0)
        return {"name": self.name, "network": self.network_config_.to_dict(),
                "train": {k: v for k, v in vars(self.train_config_).items() if k != "seed"},
                "standardise": {"loc": self.loc_, "scale": self.scale_, "fold_loc": self.fold_loc_,
                                "fold_scale": self.fold_scale_, "n_oof_spans": int(oof.size)},
                "epochs_run": [sum(1 for h in self.history_ if h["fold"] == k) for k in range(len(self.nets_))]}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"{self.name}.mean": self.mean_, f"{self.name}.std": self.std_,
               f"{self.name}.scorer.mean": self.scorer_.mean_, f"{self.name}.scorer.precision": self.scorer_.precision_}
        for k, s in enumerate(self.fold_scorers_):
            out[f"{self.name}.fold{k}.mean"] = s.mean_
            out[f"{self.name}.fold{k}.precision"] = s.precision_
        return out

    @classmethod
    def restore(cls, d: dict, det: MultiViewDetector, arrays: dict, tensors: dict, n_folds: int, *,
                root: Path) -> _Member:
        import torch

        from machine_monitor.autoencoder import DenseAutoencoder, NetworkConfig
        from machine_monitor.scorers.residual import MahalanobisScorer
        from machine_monitor.training import TrainConfig, default_device

        m = cls(d["name"], det)
        m.network_config_ = NetworkConfig.from_dict(d["network"])
        m.train_config_ = TrainConfig(**d["train"])
        m.history_ = []
        name = m.name
        m.mean_, m.std_ = arrays[f"{name}.mean"], arrays[f"{name}.std"]
        if m.mean_.shape != (m.network_config_.input_dim,) or m.std_.shape != m.mean_.shape:
            raise ModelError(f"{root / 'arrays.safetensors'}: {name} standardisation does not match its network")
        m.scorer_ = MahalanobisScorer()
        m.scorer_.set_arrays({"mean": arrays[f"{name}.scorer.mean"], "precision": arrays[f"{name}.scorer.precision"]})
        m.fold_scorers_ = []
        for k in range(n_folds):
            s = MahalanobisScorer()
            s.set_arrays({"mean": arrays[f"{name}.fold{k}.mean"], "precision": arrays[f"{name}.fold{k}.precision"]})
            m.fold_scorers_.append(s)
        st = d["standardise"]
        m.loc_, m.scale_ = float(st["loc"]), float(st["scale"])
        m.fold_loc_, m.fold_scale_ = [float(v) for v in st["fold_loc"]], [float(v) for v in st["fold_scale"]]
        if len(m.fold_loc_) != n_folds or len(m.fold_scale_) != n_folds or not np.all(
                np.isfinite([m.loc_, m.scale_, *m.fold_loc_, *m.fold_scale_])) or min(m.scale_, *m.fold_scale_) <= 0:
            raise ModelError(f"{root / 'model.json'}: {name} standardisation is invalid")
        dev = torch.device(det.device) if det.device else default_device()
        m.nets_ = []
        for k in range(n_folds):
            prefix = f"{name}.{k}."
            net = DenseAutoencoder(m.network_config_)
            try:
                net.load_state_dict({p[len(prefix):]: v for p, v in tensors.items() if p.startswith(prefix)})
            except RuntimeError as exc:
                raise ModelError(f"{root / 'network.safetensors'}: {name} network {k} does not fit model.json "
                                 f"({exc})") from None
            m.nets_.append(net.to(dev).eval())
        return m
