"""What every detector kind shares: the audio front-end, the clip split, thresholds,
scoring, streaming, parameters, and the one save / load path.

A kind is a subclass of :class:`BaseDetector` with the same public shape
(scikit-learn / PyOD style): parameters in ``__init__`` and nothing else there,
``fit(clips) -> self``, learned state in attributes ending in ``_``,
``score(clips)`` (higher = more anomalous), ``predict(clips)`` (0/1),
``window_scores(y)``, ``score_signal(y)``, ``streaming()``, ``save(path)``,
``load(path)``, ``get_params()``.

A kind implements:

* ``fit`` (using :meth:`_prepare` for loading, the clip split and standardisation);
* ``window_scores(y)`` (and ``score_signal(y)`` when its clip score is not a pooling
  of its window scores, then ``_pools_windows`` returns ``False``);
* the model-directory hooks :meth:`_manifest_parts`, :meth:`_model_arrays`,
  :meth:`_model_tensors`, :meth:`_estimators` and :meth:`_restore`.

Clips are file paths, 16 kHz mono float arrays, or ``(array, sample_rate)`` tuples.
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from machine_monitor.audio.io import clip_name, load_clip
from machine_monitor.errors import ConfigError, ModelError, NotFittedError
from machine_monitor.features import FeatureConfig
from machine_monitor.params import keyword_params
from machine_monitor.persistence import (
    ARRAYS_FILE,
    MANIFEST,
    NETWORK_FILE,
    SKOPS_FILE,
    load_arrays,
    load_estimators,
    load_tensors,
    save_arrays,
    save_estimators,
    save_tensors,
    write_model_dir,
)
from machine_monitor.scorers.residual import aggregate, check_aggregate
from machine_monitor.threshold import AlertRule, fit_threshold, live_calibration

log = logging.getLogger(__name__)

#: ``__init__`` parameters that describe one run, not the model: never saved.
RUNTIME_PARAMS = ("device", "progress")
#: Fewer recordings than this outside a fold: once early stopping on held-out clips has chosen
#: a cross-fitted fold network's epochs, the network learns that many from every clip outside
#: its fold. The clips held out are otherwise a large share of few recordings (with 4 outside a
#: fold, one whole recording, and which one follows the seed): on sensiml-fan (6 recordings,
#: 2 days) the default's fold network that missed the second day scored that day at z 4.7 at
#: seed 2 and -1.0 at seed 0, and the clip thresholds spread by 31 % over seeds 0-2 (13 % so).
REFIT_BELOW_RECORDINGS = 10


def as_clip_list(clips) -> list:
    """``clips`` as a list; a single path or a single array/tuple is one clip, not a sequence of them."""
    if isinstance(clips, (str, os.PathLike, tuple)) or (isinstance(clips, np.ndarray) and clips.ndim == 1):
        return [clips]
    try:
        return list(clips)
    except TypeError:
        raise ConfigError(f"clips must be paths, arrays or (array, sample_rate) pairs, not {type(clips).__name__}") \
            from None


def score_stats(scores: np.ndarray) -> dict:
    """Summary statistics of a score sample, as stored in ``model.json``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return {"n": 0}
    q = np.percentile(s, [5, 50, 95])
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]), "max": float(s.max())}


def _fit_then_calibrate(fit):
    """Wrap a kind's ``fit`` so that every kind ends with the same out-of-fold calibration.

    ``fit(clips, ..., groups=None)``: ``groups`` (one label per clip) reaches the
    kind's own ``fit`` when it takes them (to cross-fit by group), and the calibration.
    """
    takes_groups = "groups" in inspect.signature(fit).parameters

    @functools.wraps(fit)
    def fit_and_calibrate(self, clips, *args, groups=None, **kwargs):
        extra = {"groups": groups} if takes_groups else {}
        if getattr(self, "_in_fit", False):  # a kind's fit calling its base class's fit
            return fit(self, clips, *args, **extra, **kwargs)
        clips = as_clip_list(clips)
        if groups is not None:
            groups = [str(g) for g in groups]
            if len(groups) != len(clips):
                raise ConfigError(f"got {len(groups)} group labels for {len(clips)} clips")
            extra = {"groups": groups} if takes_groups else {}
        if self.calibrate_on_fit:  # top-level fit: leave out clips that do not belong (issue 14)
            from machine_monitor.screening import screen_training_clips

            keep, screening = screen_training_clips(clips, channel=getattr(self, "channel", None),
                                                    names=[clip_name(c, i) for i, c in enumerate(clips)])
            self.screening_ = screening.record()
            clips = [clips[i] for i in keep]
            if groups is not None:
                groups = [groups[i] for i in keep]
                extra = {"groups": groups} if takes_groups else {}

        heard = []  # what the last fit trained on (after any refit without out-of-fold outliers)

        def fit_once(clips, groups):
            heard[:] = clips
            self._in_fit = True
            self._fit_extra = kwargs  # e.g. labelled anomalies: the calibration's clones fit with them too
            try:
                out = fit(self, clips, *args, **({"groups": groups} if takes_groups else {}), **kwargs)
            finally:
                self._in_fit = False
            if self.calibrate_on_fit:
                self.calibrate(clips, groups=groups)
            return out

        out = fit_once(clips, groups)
        if self.calibrate_on_fit:
            self._leave_out_of_fold_outliers(clips, groups, fit_once)
            from machine_monitor.audio.io import fingerprints

            self.training_fingerprints_ = fingerprints(heard)
        return out

    fit_and_calibrate.calibrates = True
    return fit_and_calibrate


class BaseDetector:
    """Shared front-end, split, threshold, scoring and model directory of every detector kind."""

    #: Registry name, written to ``model.json`` as ``detector``.
    kind = "base"
    #: ``fit`` ends with :meth:`calibrate` (the clones the calibration fits set this False).
    calibrate_on_fit = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fit = cls.__dict__.get("fit")
        if fit is not None and not getattr(fit, "calibrates", False):
            cls.fit = _fit_then_calibrate(fit)

    def _leave_out_of_fold_outliers(self, clips: list, groups, fit_once) -> None:
        """Refit without training recordings that score far above the others out of fold.

        Level and spectrum screening cannot see a recording of the right machine at the right
        level that is not normal (a fault recorded into the "normal" folder): its out-of-fold
        score can (:func:`machine_monitor.threshold.out_of_fold_outliers`). Suspects are
        left out and the detector refitted; a suspect that the refitted model, which never
        heard it, does not flag was rare but normal sound and goes back in (one more fit).
        """
        from machine_monitor.detectors.calibration import recording_units
        from machine_monitor.threshold import OOF_Z_LIMIT, out_of_fold_outliers

        recordings = getattr(self, "val_recordings_", None)
        scores = getattr(self, "val_scores_", None)
        if recordings is None or scores is None or len(recordings) != len(scores):
            return
        scale = getattr(self, "score_scale", "positive")
        suspects = out_of_fold_outliers(scores, recordings, scale=scale)
        if not suspects:
            return
        first = dict(getattr(self, "screening_", None) or {})
        names = {i: clip_name(clips[i], i) for i, _, _ in suspects}
        out = {i for i, _, _ in suspects}

        def refit(leave_out: set) -> None:
            keep = [i for i in range(len(clips)) if i not in leave_out]
            fit_once([clips[i] for i in keep], None if groups is None else [groups[i] for i in keep])

        refit(out)
        fresh, limit = {}, {}
        for i in out:  # the suspect as scan would score it: its worst unit against that many units' threshold
            units = recording_units(self, clips[i], i)
            fresh[i], limit[i] = max(units), self.long_file_threshold(len(units))
        confirmed = {i for i in out if fresh[i] > limit[i]}
        if confirmed != out:  # some suspects were normal after all: train on them again
            refit(confirmed)
        left = []
        for i, score, z in suspects:
            if i in confirmed:
                reason = (f"out-of-fold score {score:.4g}, {z:.0f} robust spreads above the other recordings' "
                          f"median (limit {OOF_Z_LIMIT:g}); a model fitted without it scores it "
                          f"{fresh[i]:.4g} against its threshold {limit[i]:.4g}")
                log.warning("%s: left out of training: %s", names[i], reason)
                left.append({"clip": names[i], "reason": reason})
            else:
                log.info("%s: kept: its high out-of-fold score (%.4g) was not confirmed by a model fitted "
                         "without it (%.4g)", names[i], score, fresh[i])
        first["left_out"] = list(first.get("left_out", [])) + left
        first["n_kept"] = int(first.get("n_kept", len(clips))) - len(left)
        first["out_of_fold"] = {"method": "worst unit score per recording, median/MAD across recordings"
                                + (" of log scores" if scale != "z" else ""), "z_limit": OOF_Z_LIMIT,
                                "suspects": len(suspects), "left_out": len(left)}
        self.screening_ = first

    # -- parameters ----------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        """``__init__``'s keyword parameters, the one list of a detector's parameters."""
        return keyword_params(cls)

    def get_params(self, deep: bool = False) -> dict:
        """The parameters a model is saved with (everything but per-run settings)."""
        return {k: getattr(self, k) for k in self._param_names() if k not in RUNTIME_PARAMS}

    def set_params(self, **params) -> BaseDetector:
        valid = self._param_names()
        for k, v in params.items():
            if k not in valid:
                raise ConfigError(f"{type(self).__name__} has no parameter {k!r} (valid: {', '.join(valid)})")
            setattr(self, k, v)
        return self

    # -- audio and features --------------------------------------------------------
    def _feature_kind_config(self) -> FeatureConfig:
        """The feature configuration this kind's parameters ask for (before fitting)."""
        return FeatureConfig.for_kind(self.features)

    @property
    def feature_config(self) -> FeatureConfig:
        return getattr(self, "feature_config_", None) or self._feature_kind_config()

    def load_signal(self, clip, i: int = 0) -> np.ndarray:
        """One clip as a validated 16 kHz mono float32 signal (the one audio entry point)."""
        cfg = self.feature_config
        return load_clip(clip, sr=cfg.sr, channel=self.channel, min_samples=cfg.min_samples, name=clip_name(clip, i))

    def _frames(self, y: np.ndarray) -> np.ndarray:
        """Standardised units ``(n_units, frame_dims)`` of a signal: frames, or peak spans."""
        from machine_monitor.screening import frames_in_blocks

        cfg = self.feature_config
        f = cfg.units(frames_in_blocks(y, cfg))  # block by block: a long signal's STFT at once is ~1 GB an hour
        f -= self.feature_mean_
        f /= self.feature_std_
        return f

    # -- fitting -------------------------------------------------------------------
    def _check_params(self, n_clips: int) -> None:
        check_aggregate(self.aggregate)
        if n_clips < 2:
            raise ConfigError(f"need at least 2 normal clips to train (one is held out), got {n_clips}: cut one "
                              "long recording into consecutive parts (audio.io.split_recording; `machine-monitor "
                              "train` does it for a single file)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), not {self.val_fraction!r}")
        if self.threshold_method not in ("percentile", "gamma"):
            raise ConfigError(f"threshold_method must be percentile or gamma, not {self.threshold_method!r}")

    def _prepare(self, clips: list, config: FeatureConfig) -> tuple[list[np.ndarray], np.ndarray]:
        """Load clips, fit ``config`` to them, hold out whole clips, standardise.

        Sets ``feature_config_``, ``clip_seconds_``, ``skipped_clips_``, ``val_clips_``,
        ``feature_mean_`` and ``feature_std_``; returns every kept clip's standardised
        units and the training clip ids.
        """
        from tqdm.auto import tqdm

        from machine_monitor.screening import read_training_clip

        # Load with the shortest span a peak model can have; the span is fitted to the clips below.
        self.feature_config_ = cfg = config.fitted_to(1)
        per_clip, seconds = [], []
        for i, clip in enumerate(tqdm(clips, desc="features", unit="clip", disable=not self.progress, leave=False)):
            # Frames block by block: a long file costs its frames, not its signal and STFT (issue 14).
            f_, stats_ = read_training_clip(clip, cfg, channel=self.channel, name=clip_name(clip, i))
            seconds.append(stats_.n / cfg.sr)
            per_clip.append(f_)
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

    # -- scoring -------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(clips) or load(dir)")

    def window_scores(self, y: np.ndarray) -> np.ndarray:
        """Per-window scores ``(n_windows,)`` of a validated 16 kHz mono signal."""
        raise NotImplementedError

    def _pools_windows(self) -> bool:
        """True when the clip score is ``aggregate`` of :meth:`window_scores` (streaming can cache them)."""
        return True

    def score_signal(self, y: np.ndarray) -> float:
        """Clip score of one validated 16 kHz mono signal."""
        return aggregate(self.window_scores(y), self.aggregate)

    def window_seconds(self) -> float:
        """Duration one window of features covers."""
        cfg = self.feature_config
        return cfg.min_samples / cfg.sr

    def score(self, clips: Iterable) -> np.ndarray:
        """Anomaly score of each clip, ``(n_clips,)``; higher = more anomalous.

        Raises ``AudioReadError`` naming the first clip that cannot be used.
        """
        self._check_fitted()
        return np.array([self.score_signal(self.load_signal(c, i)) for i, c in enumerate(as_clip_list(clips))],
                        dtype=np.float64)

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

    def set_threshold(self, clips: Iterable | None = None, *, scores=None, method: str | None = None,
                      percentile: float | None = None, contamination: float | None = None) -> BaseDetector:
        """Re-set the alarm threshold from new clips (or their scores).

        ``method``: by default ``"contamination"`` when ``contamination`` is given (a set
        known to hold that fraction of anomalies, alibi-detect style), else the model's
        own ``threshold_method`` (``gamma`` or ``percentile``, for normal clips).
        """
        self._check_fitted()
        if scores is None:
            scores = self.score(clips)
        if method is None:
            method = "contamination" if contamination is not None else self.threshold_method
        self.threshold_ = fit_threshold(scores, method=method,
                                        percentile=percentile or self.percentile, contamination=contamination)
        return self

    # -- calibration (machine_monitor.threshold, detectors.calibration) --------------
    def calibrate(self, clips, *, groups=None, false_alarms_per_day: float | None = None) -> BaseDetector:
        """Calibrate every decision unit from out-of-fold scores of the normal training ``clips``.

        Sets ``calibration_`` (clip, long-file and live thresholds, what each rests on and
        the false-alarm rates to expect), ``threshold_`` (the clip threshold) and
        ``calibration_streams_``. ``fit`` calls it; call it yourself after changing
        ``percentile``. ``groups``: one label per clip (a session); a group is never
        split between folds. Default: every clip its own group.
        """
        import time

        from machine_monitor.detectors.calibration import calibrate

        t0 = time.perf_counter()
        calibrate(self, as_clip_list(clips), groups=groups, false_alarms_per_day=false_alarms_per_day)
        self.calibration_["seconds"] = time.perf_counter() - t0
        return self

    def set_false_alarms_per_day(self, rate: float) -> BaseDetector:
        """Re-set the live alert level for ``rate`` false alerts per day, from the stored out-of-fold streams."""
        self._check_fitted()
        cal = getattr(self, "calibration_", None)
        streams = getattr(self, "calibration_streams_", None)
        if not cal or not streams:
            raise ConfigError("this model has no live calibration to re-set: re-train it or use the threshold command")
        old = cal["live"]
        live = live_calibration(streams, AlertRule(**old["rule"]), false_alarms_per_day=rate,
                                block=old.get("block", 1), confidence=old.get("confidence", 0.0),
                                audio_seconds=old.get("audio_seconds"), scale=old.get("scale", "positive"),
                                components=old.get("components", 1))
        for key in ("window_seconds", "hop_seconds", "quiet_seconds"):
            live[key] = old[key]
        if live["value"] < self.threshold_value_:
            live["value_model"], live["value"] = live["value"], self.threshold_value_
            live["note"] = "raised to the clip threshold"
        cal["live"] = live
        cal["expected"]["live_false_alerts_per_day"] = live["expected_false_alarms_per_day"]
        return self

    def long_file_threshold(self, n_windows: int, *, lossy: bool = False) -> float:
        """Threshold for a long file's worst of ``n_windows`` windows (the clip threshold for one).

        ``lossy``: for a lossy-coded file, the thresholds calibrated on lossily coded training
        audio when the model has them (:meth:`judges_lossy_apart`).
        """
        from machine_monitor.threshold import worst_window_threshold

        self._check_fitted()
        cal = getattr(self, "calibration_", None) or {}
        if lossy and self.judges_lossy_apart():
            base, lf = float(cal["lossy"]["value"]), cal["lossy"].get("long_file")
        else:
            base, lf = self.threshold_value_, cal.get("long_file")
        if not lf or int(n_windows) <= 1:
            return base
        return max(base, worst_window_threshold(lf, int(n_windows)))

    def judges_lossy_apart(self) -> bool:
        """Whether lossy-coded inputs (OGG, MP3) get their own thresholds: the model has them
        (fitted since they exist) and was trained on lossless audio."""
        from machine_monitor.audio.io import LOSSY_FORMATS

        cal = getattr(self, "calibration_", None) or {}
        if not isinstance(cal.get("lossy"), dict):
            return False
        return str((self.training_chain() or {}).get("format")).upper() not in LOSSY_FORMATS

    def training_chain(self) -> dict | None:
        """The recording chain (input rate, format, channels) most training clips came through, if recorded."""
        screening = getattr(self, "screening_", None)
        if screening is None:
            screening = (getattr(self, "manifest_", None) or {}).get("training", {}).get("screening")
        chain = (screening or {}).get("chain")
        return chain if isinstance(chain, dict) and chain else None

    def streaming(self) -> StreamScorer:
        """A scorer for overlapping windows of one stream (what the live monitor uses)."""
        self._check_fitted()
        return StreamScorer(self)

    # -- the model directory ---------------------------------------------------------
    def _manifest_parts(self) -> dict:
        """Kind-specific top-level entries of ``model.json`` (network shape, scorer, ...)."""
        return {}

    def _model_arrays(self) -> dict[str, np.ndarray]:
        """Kind-specific arrays, saved in ``arrays.safetensors`` with their names as given."""
        return {}

    def _model_tensors(self) -> dict:
        """Torch tensors (network weights) for ``network.safetensors``; empty if none."""
        return {}

    def _estimators(self) -> dict:
        """Scikit-learn parts for ``scorer.skops``; empty if none."""
        return {}

    def _fit_record(self) -> dict:
        """What ``fit`` recorded, for ``model.json``'s ``training`` entry."""
        return {"history": getattr(self, "history_", []), "fit_seconds": getattr(self, "fit_seconds_", None),
                "n_clips": getattr(self, "n_clips_", None), "skipped_clips": getattr(self, "skipped_clips_", []),
                "val_clips": getattr(self, "val_clips_", []), "clip_seconds": getattr(self, "clip_seconds_", None),
                "screening": getattr(self, "screening_", None),
                # SHA-256 prefixes of the training files: `threshold` refuses to calibrate on them.
                "fingerprints": list(getattr(self, "training_fingerprints_", []))}

    def _check_manifest(self, m: dict, root: Path) -> None:
        """Refuse a ``model.json`` whose kind-specific parts contradict its features (before reading files)."""

    def _restore(self, m: dict, arrays: dict, tensors: dict | None, estimators: dict | None, *,
                 root: Path, device: str | None) -> None:
        """Rebuild the kind's fitted parts from a verified model directory."""

    def save(self, path: str | os.PathLike) -> Path:
        """Write a self-describing model directory (atomically); returns its path."""
        self._check_fitted()
        arrays = {"feature_mean": self.feature_mean_, "feature_std": self.feature_std_, **self._model_arrays()}
        tensors, estimators = self._model_tensors(), self._estimators()

        def write(tmp: Path) -> None:
            save_arrays(tmp / ARRAYS_FILE, arrays)
            if tensors:
                save_tensors(tmp / NETWORK_FILE, tensors)
            if estimators:
                save_estimators(tmp / SKOPS_FILE, estimators)

        streams = getattr(self, "calibration_streams_", None)
        if streams:
            arrays["calibration_stream_scores"] = np.concatenate(streams).astype(np.float64)
            arrays["calibration_stream_lengths"] = np.array([len(x) for x in streams], dtype=np.int64)
        train_scores = np.asarray(getattr(self, "train_scores_", []), dtype=np.float64)
        val_scores = np.asarray(getattr(self, "val_scores_", []), dtype=np.float64)
        calibration = {"calibration": self.calibration_} if getattr(self, "calibration_", None) else {}
        manifest = {
            "detector": self.kind,
            "sample_rate": self.feature_config_.sr,
            "params": self.get_params(),
            "features": self.feature_config_.to_dict(),
            **self._manifest_parts(),
            "training": self._fit_record(),
            "threshold": self.threshold_,
            **calibration,
            "scores": {"train": score_stats(train_scores), "validation": score_stats(val_scores),
                       "train_values": train_scores, "validation_values": val_scores},
        }
        return write_model_dir(path, manifest, write)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> BaseDetector:
        """Load a model directory, of whatever kind it holds; refuses tampered or inconsistent
        models (``ModelError``)."""
        from machine_monitor.detectors.registry import load_detector

        return load_detector(path, device=device)

    @classmethod
    def _from_model_dir(cls, root: Path, m: dict, *, device: str | None = None) -> BaseDetector:
        """Rebuild from a model directory whose hashes :func:`read_manifest` already checked."""
        files = m.get("files") or {}
        try:
            params = {k: v for k, v in m["params"].items() if k in cls._param_names()}
            det = cls(**params, device=device)
            det.feature_config_ = cfg = FeatureConfig(**m["features"])
        except (KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise ModelError(f"{root / MANIFEST}: incomplete or invalid model description ({exc})") from None
        if m.get("sample_rate") != cfg.sr:
            raise ModelError(f"{root / MANIFEST}: sample_rate {m.get('sample_rate')} disagrees with features.sr "
                             f"{cfg.sr}")
        if ARRAYS_FILE not in files:
            raise ModelError(f"{root / MANIFEST}: lists no {ARRAYS_FILE}")
        try:
            det._check_manifest(m, root)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelError(f"{root / MANIFEST}: incomplete or invalid model description ({exc})") from None
        arrays = load_arrays(root / ARRAYS_FILE)
        for key in ("feature_mean", "feature_std"):
            if arrays.get(key) is None or arrays[key].shape != (cfg.frame_dims,):
                raise ModelError(f"{root / ARRAYS_FILE}: {key} does not match {cfg.frame_dims} feature dims")
        det.feature_mean_, det.feature_std_ = arrays.pop("feature_mean"), arrays.pop("feature_std")
        det._restore_calibration(m, arrays, root)
        tensors = load_tensors(root / NETWORK_FILE) if NETWORK_FILE in files else None
        estimators = load_estimators(root / SKOPS_FILE) if SKOPS_FILE in files else None
        try:
            det._restore(m, arrays, tensors, estimators, root=root, device=device)
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
            raise ModelError(f"{root}: model parts do not match model.json ({exc})") from None
        det._restore_fit_record(m, root)
        return det

    def _restore_calibration(self, m: dict, arrays: dict, root: Path) -> None:
        """``calibration_`` from ``model.json`` and its out-of-fold live streams from the arrays (popped)."""
        scores, lengths = arrays.pop("calibration_stream_scores", None), arrays.pop("calibration_stream_lengths", None)
        cal = m.get("calibration")
        if cal is None:
            return  # a model from before per-unit calibration: clip threshold only
        if not isinstance(cal, dict) or not all(isinstance(cal.get(k), dict) for k in ("clip", "long_file", "live")):
            raise ModelError(f"{root / MANIFEST}: calibration must hold clip, long_file and live entries")
        self.calibration_ = cal
        if scores is not None and lengths is not None:
            if lengths.ndim != 1 or (lengths < 0).any() or int(lengths.sum()) != scores.size:
                raise ModelError(f"{root / ARRAYS_FILE}: calibration stream lengths do not match the scores")
            self.calibration_streams_ = np.split(scores, np.cumsum(lengths)[:-1])

    def _restore_fit_record(self, m: dict, root: Path) -> None:
        """The threshold and what ``fit`` recorded (history, clips, scores), from ``model.json``."""
        train = m.get("training", {})
        self.threshold_ = m["threshold"]
        self.history_ = train.get("history", [])
        self.fit_seconds_ = train.get("fit_seconds")
        self.n_clips_ = train.get("n_clips")
        self.skipped_clips_ = train.get("skipped_clips", [])
        self.val_clips_ = np.asarray(train.get("val_clips", []), dtype=np.int64)
        self.clip_seconds_ = train.get("clip_seconds")
        self.training_fingerprints_ = [str(h) for h in train.get("fingerprints", [])]
        self.train_scores_ = np.asarray(m["scores"].get("train_values", []), dtype=np.float64)
        self.val_scores_ = np.asarray(m["scores"].get("validation_values", []), dtype=np.float64)
        self.manifest_ = m
        self.model_dir_ = root

    def __repr__(self) -> str:
        state = f", threshold={self.threshold_value_:.4g}" if hasattr(self, "threshold_") else ""
        return f"{type(self).__name__}(features={self.features!r}, aggregate={self.aggregate!r}{state})"


class StreamScorer:
    """Scores of sliding windows of one stream, each equal to ``detector.score_signal(window)``.

    When the detector's clip score pools its per-window scores and its feature
    windows tile the stream frame by frame, the feature windows shared by
    consecutive overlapping windows are scored once and cached: each hop costs the
    new audio only. Otherwise each window is scored whole.

    Window starts must lie on the feature frame grid (multiples of the feature hop
    from ``origin``).
    """

    def __init__(self, detector: BaseDetector, *, incremental: bool | None = None):
        self.detector = detector
        cfg = detector.feature_config
        self.hop = cfg.hop_length
        self.min_samples = cfg.min_samples
        # Peak spans sit `stride` frames apart with the last one anchored to the end of
        # the audio, so they do not tile frame by frame: score those windows whole.
        decomposable = detector._pools_windows() and cfg.kind != "peak"
        self.incremental = decomposable if incremental is None else incremental and decomposable
        self.aggregate = detector.aggregate
        self.reset(0)

    def reset(self, origin: int) -> None:
        """Forget cached work; the next windows start at ``origin``."""
        self.origin = origin
        self._next = 0  # first feature window not yet scored (index from origin)
        self._cache: collections.deque[tuple[int, float]] = collections.deque()

    def skip_to(self, position: int) -> None:
        """No window will start before ``position``: drop work that only earlier ones need."""
        first = -(-(position - self.origin) // self.hop)
        self._next = max(self._next, first)
        while self._cache and self._cache[0][0] < first:
            self._cache.popleft()

    def score(self, ring, start: int, stop: int) -> float:
        """Score of samples ``[start, stop)`` of the stream; ``ring.get(a, b)`` returns samples."""
        if not self.incremental:
            return self.detector.score_signal(ring.get(start, stop))
        seg = self.origin + self._next * self.hop
        if stop - seg >= self.min_samples:
            ws = self.detector.window_scores(ring.get(seg, stop))
            self._cache.extend(zip(range(self._next, self._next + ws.size), ws.tolist()))
            self._next += ws.size
        first = -(-(start - self.origin) // self.hop)
        last = (stop - self.min_samples - self.origin) // self.hop
        while self._cache and self._cache[0][0] < first:
            self._cache.popleft()
        scores = [s for j, s in self._cache if j <= last]
        return aggregate(np.asarray(scores), self.aggregate)
