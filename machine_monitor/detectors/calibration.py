"""Out-of-fold calibration of a fitted detector, the same for every kind.

:func:`calibrate` gathers the evidence the pure functions of
:mod:`machine_monitor.threshold` turn into thresholds:

1. the training recordings are split into folds that never split a group
   (:func:`~machine_monitor.threshold.group_folds`; default one group per file);
2. for each fold, a scorer blind to it: the kind's own cross-fitted parts when it has
   them (``det.fold_of_`` and ``det.score_signal(y, fold=k)``, e.g. the autoencoder
   ensemble's fold network with a scorer refitted without the fold); else, with one
   group per recording, the recordings the kind held out (``det.val_clips_``) scored by
   the fitted detector; else (sessions given as groups) clones of the detector fitted
   without each fold;
3. with it, every recording of the fold is scored in *clip units* as ``scan`` scores
   files (the whole recording up to 1.25 clip lengths, else clip-length segments) and
   every recording is streamed through the live monitor's windows (its window length
   and hop), one window score per hop;
4. the clip / long-file / live calibrations and the training level profile follow.

The result is ``det.calibration_`` (everything, for ``model.json``), ``det.threshold_``
(the clip threshold, what ``predict`` and ``scan`` use), and ``det.calibration_streams_``
(the out-of-fold live window scores, kept so a monitor with another alert rule or
false-alarm target re-calibrates from the same evidence).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os

import numpy as np

from machine_monitor.errors import AudioReadError, ConfigError
from machine_monitor.threshold import (
    DEFAULT_CLIP_FALSE_ALARM_RATE,
    DEFAULT_FALSE_ALARMS_PER_DAY,
    DEFAULT_FOLDS,
    LEVEL_BLOCK_SECONDS,
    MIN_SCORES,
    WHOLE_FILE_TOLERANCE,
    AlertRule,
    block_levels_db,
    clip_calibration,
    group_folds,
    groups_from_paths,
    level_profile,
    live_calibration,
    live_geometry,
    long_file_calibration,
    machine_stopped,
    percentile_threshold,
    unit_starts,
)

log = logging.getLogger(__name__)


#: Fewer groups (sessions, or recordings) than this: the calibration says how thin that is.
FEW_GROUPS = 3

#: Kinds whose ``window_scores(y)`` give one score per window of ``feature_config.window_starts``,
#: each from that window's audio alone, and whose clip score is ``aggregate`` of those: a long
#: clip unit can be scored piece by piece (:func:`_score_in_pieces`) with the same result.
PIECEWISE_KINDS = ("ae", "multiview")
#: Audio per piece when a long unit is scored piece by piece (~2 minutes at 16 kHz).
PIECE_SAMPLES = 120 * 16_000


def _piecewise(score):
    """``(detector, window_scores)`` when ``score`` is a :data:`PIECEWISE_KINDS` detector's
    ``score_signal`` (its own, or a ``functools.partial`` with ``fold``), else ``None``."""
    func, fold = score, None
    if isinstance(score, functools.partial):
        if score.args or set(score.keywords) - {"fold"}:
            return None
        func, fold = score.func, score.keywords.get("fold")
    det = getattr(func, "__self__", None)
    if (getattr(func, "__name__", None) != "score_signal" or getattr(det, "kind", None) not in PIECEWISE_KINDS
            or not det._pools_windows()):
        return None
    return det, (det.window_scores if fold is None else functools.partial(det.window_scores, fold=fold))


def _score_in_pieces(det, window_scores, rec, a: int, b: int) -> float:
    """``det.score_signal`` of samples ``[a, b)`` of a recording without holding them at once.

    The windows of ``[a, b)`` (``feature_config.window_starts``: ``span`` frames, ``stride``
    apart, the last one anchored to the end) are scored in pieces of a whole number of
    windows; each piece starts on the window grid, and on every 8th frame (the multiview
    frame view's grid), so its windows are exactly the unit's windows there, and the last
    piece runs to the unit's end, where the anchored window lies. The unit's score is
    ``aggregate`` of the concatenated window scores: the whole unit's, up to float rounding.
    Memory is a piece, not the unit (a 1.5-hour unit at once: its signal, log-mel and views,
    over 1 GB).
    """
    from machine_monitor.scorers.residual import aggregate

    cfg = det.feature_config
    hop = cfg.hop_length
    stride = cfg.stride if cfg.kind == "peak" else 1
    span = cfg.context if cfg.kind == "peak" else cfg.stack
    first = cfg.hop_length if cfg.kind == "raw" else cfg.n_fft
    per_piece = max(8, PIECE_SAMPLES // (stride * hop) // 8 * 8)  # windows per piece
    length = ((per_piece - 1) * stride + span - 1) * hop + first  # samples holding exactly those windows
    n_frames = cfg.n_frames(b - a)
    regular = (n_frames - span) // stride + 1 if n_frames >= span else 0  # windows on the grid
    scores, k = [], 0
    while (k + 1) * per_piece < regular:
        start = a + k * per_piece * stride * hop
        scores.append(window_scores(rec.get(start, start + length)))
        k += 1
    scores.append(window_scores(rec.get(a + k * per_piece * stride * hop, b)))
    return aggregate(np.concatenate(scores), det.aggregate)


def _unit_scores(score, rec, segment: int) -> list[float]:
    """Scores of a recording in scan's clip units (the whole recording up to 1.25 segments)."""
    n = rec.size
    units = [(0, n)] if n <= WHOLE_FILE_TOLERANCE * segment else [(s, s + segment) for s in unit_starts(n, segment)]
    pieces = _piecewise(score)
    out = []
    for a, b in units:
        if pieces is not None and b - a > _Signals.LONG_SAMPLES:
            out.append(_score_in_pieces(*pieces, rec, a, b))
        else:
            out.append(score(rec.get(a, b)))
    return out


def recording_units(det, clip, i: int = 0) -> list[float]:
    """A recording's scores in scan's clip units with the fitted model, as the calibration
    scores them: a long file streamed block by block, never loaded whole."""
    cfg = det.feature_config
    clip_seconds = getattr(det, "clip_seconds_", None) or 10.0
    signals = _Signals(det)
    signals.add(clip, i)
    return _unit_scores(det.score_signal, signals[0], max(cfg.min_samples, int(round(clip_seconds * cfg.sr))))


def _clip_evidence(unit_scores: np.ndarray, streams: list, stride: int, n_recordings: int):
    """What a clip threshold rests on: the clip-unit scores; when there are too few, the
    non-overlapping live windows (each a clip unit or shorter: their scores spread at least as
    wide, so the threshold errs high). Returns ``(scores, n_eff)``: ``n_eff`` is the recordings
    the scores come from when fewer than the scores (units or windows of one recording are not
    independent scores: a bound's uncertainty counts recordings), else ``None``."""
    independent = np.concatenate([s[::stride] for s in streams]) if streams else np.zeros(0)
    if unit_scores.size < MIN_SCORES and independent.size > unit_scores.size:
        return independent, min(n_recordings, int(independent.size))
    return unit_scores, (n_recordings if n_recordings < unit_scores.size else None)


#: Training recordings coded lossily for the lossy-input thresholds, at most (~35 ms for 10 s each),
#: and how many of them are also streamed for the lossy live level (monitor --input of a lossy
#: file: rare, and streaming every window doubles what the live calibration costs).
LOSSY_MAX_RECORDINGS = 200
LOSSY_STREAM_RECORDINGS = 6


def _lossy_calibration(det, signals, fold_of, order, scorers, segment: int, *, rate: float, scale: str,
                       floor: dict, live_rule, window: int, hop: int, target: float) -> dict | None:
    """Clip, long-file and live thresholds for lossy-coded copies of the machine's sound.

    A lossy codec changes what a model trained on lossless audio hears (OGG Vorbis at its
    default quality moved band levels by up to 2 dB and their variability more: every normal
    demo clip scored 4 times the threshold), so a lossy file is judged against the same
    out-of-fold calibration run on the training recordings coded with that codec and decoded
    again (:func:`machine_monitor.audio.io.lossy_round_trip`): up to
    ``LOSSY_MAX_RECORDINGS`` recordings of at most a minute, each scored in clip units (the
    first ``LOSSY_STREAM_RECORDINGS`` also streamed through the live windows) by the parts
    blind to its fold. Each threshold is at
    least the lossless chain's (``floor``: the clip and live values). ``None`` when no
    recording qualifies.
    """
    from machine_monitor.audio.io import LOSSY_CODEC, lossy_round_trip

    sr = det.feature_config.sr
    # Only recordings a blind part scores (fold -1: a kind with one held-out split trained on it).
    picked = [i for i in order if fold_of[i] >= 0 and signals[i].size <= _Signals.LONG_SAMPLES]
    picked = picked[:LOSSY_MAX_RECORDINGS]
    units, streams, groups = [], [], []
    for i in picked:
        try:
            coded = _Held(lossy_round_trip(signals[i].get(0, signals[i].size), sr=sr))
            s = [v for v in _unit_scores(scorers[fold_of[i]], coded, segment) if np.isfinite(v)]
        except AudioReadError:  # e.g. silent once decoded: no score, as for the recording itself
            continue
        units += s
        groups += [i] * len(s)
        if len(set(groups)) <= LOSSY_STREAM_RECORDINGS:
            streams += _split_at_gaps(_stream_scores(scorers[fold_of[i]], coded, window, hop))
    if not units:
        return None
    stride = max(1, math.ceil(window / hop))
    components = getattr(det, "score_components", 1)  # parts the score is the largest of: the far units' tail law
    evidence, n_eff = _clip_evidence(np.asarray(units, dtype=np.float64), streams, stride, len(set(groups)))
    clip = clip_calibration(evidence, rate=rate, scale=scale, n_eff=n_eff)
    value = max(float(clip["value"]), float(floor["clip"]))
    long_file = long_file_calibration(evidence, rate=rate, floor=value, scale=scale, n_eff=n_eff,
                                      components=components)
    live = None
    if streams:
        live = live_calibration(streams, live_rule, false_alarms_per_day=target, block=stride, scale=scale,
                                components=components)
        live["value"] = max(float(live["value"]), value, float(floor["live"]))
    return {"codec": f"{LOSSY_CODEC[0]} {LOSSY_CODEC[1]}, libsndfile's default quality", "value": value,
            "n": int(evidence.size), "n_recordings": len(set(groups)), "clip": clip, "long_file": long_file,
            "live": live, "evidence": "out-of-fold scores of training recordings coded lossily and decoded"}


def _stream_scores(score, rec, window: int, hop: int) -> np.ndarray:
    """One score per hop of the monitor's sliding windows over a recording (ending at window, window + hop, ...)."""
    out = []
    for start in range(0, rec.size - window + 1, hop):
        try:
            out.append(score(rec.get(start, start + window)))
        except AudioReadError:  # a digitally silent window: the monitor skips it too
            out.append(np.nan)
    return np.asarray(out, dtype=np.float64)


class _Held:
    """A recording held in memory as a 16 kHz signal."""

    def __init__(self, y: np.ndarray):
        self.y, self.size = y, y.size

    def get(self, a: int, b: int) -> np.ndarray:
        return self.y[a:b]

    def levels(self, sr: int) -> np.ndarray:
        return block_levels_db(self.y, sr=sr)


class _Reread:
    """A recording beyond the memory budget (or an array longer than a minute): loaded again
    when used, and kept while it is the one in use (``last``, one slot shared by the
    recordings): its units and live windows are read from one load, not one load each."""

    def __init__(self, det, clip, i: int, size: int, last: list):
        self.det, self.clip, self.i, self.size, self.last = det, clip, i, size, last

    def _signal(self) -> np.ndarray:
        if self.last[0] is not self:
            self.last[:] = [None, None]  # the previous recording goes before this one is loaded
            self.last[:] = [self, self.det.load_signal(self.clip, self.i)]
        return self.last[1]

    def get(self, a: int, b: int) -> np.ndarray:
        return self._signal()[a:b]

    def levels(self, sr: int) -> np.ndarray:
        return block_levels_db(self._signal(), sr=sr)


class _Streamed:
    """A long recording file, never held whole: validated, measured and level-profiled in one
    streamed pass, then read forward block by block (a read before the current position
    starts the file again: only the last clip unit, aligned to the end, goes back)."""

    BLOCK_SECONDS = 10.0

    def __init__(self, det, path, name: str):
        from machine_monitor.audio.io import check_signal

        self.det, self.path, self.name = det, path, name
        cfg = det.feature_config
        sr, b = cfg.sr, max(1, int(round(LEVEL_BLOCK_SECONDS * cfg.sr)))
        # The checks load_signal makes on the whole signal, on its blocks: finite, plausible, long enough, not silent.
        n, peak, carry, levels = 0, 0.0, np.zeros(0, dtype=np.float32), []
        for y in self._blocks():
            hi, lo = float(y.max()), float(y.min())
            if not (np.isfinite(hi) and np.isfinite(lo)):
                check_signal(y, sr=sr, source=name)  # raises, counting the non-finite samples
            peak, n = max(peak, hi, -lo), n + y.size
            # Level blocks of LEVEL_BLOCK_SECONDS from the start, as block_levels_db of the whole signal.
            buf = np.concatenate([carry, y]) if carry.size else y
            whole = buf.size // b * b
            if whole:
                levels.append(block_levels_db(buf[:whole], sr=sr))
            carry = buf[whole:].copy()
        if n == 0:
            raise AudioReadError(f"{name}: contains no audio samples")
        check_signal(np.array([peak], dtype=np.float32), sr=sr, source=name)  # implausible or silent
        if n < cfg.min_samples:
            raise AudioReadError(f"{name}: is {n / sr:.3f} s long, shorter than one feature window "
                                 f"({cfg.min_samples / sr:.3f} s)")
        self.size = n
        self._levels = np.concatenate(levels) if levels else block_levels_db(carry, sr=sr)
        self._restart()

    def _blocks(self):
        from machine_monitor.audio.io import read_blocks

        cfg = self.det.feature_config
        return read_blocks(self.path, block_seconds=self.BLOCK_SECONDS, sr=cfg.sr, channel=self.det.channel)

    def _restart(self) -> None:
        self._it, self._buf, self._pos = None, np.zeros(0, dtype=np.float32), 0  # self._buf[0] is sample self._pos

    def get(self, a: int, b: int) -> np.ndarray:
        if self._it is None or a < self._pos:
            self._restart()
            self._it = self._blocks()
        parts = [self._buf[max(0, a - self._pos):]]  # what is held from `a` on
        end = self._pos + self._buf.size  # where the file's stream stands
        while end < b:
            y = next(self._it, None)
            if y is None:
                break
            if end + y.size > a:  # blocks wholly before `a` are skipped, never kept
                parts.append(y[max(0, a - end):])
            end += y.size
        self._buf = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self._pos = end - self._buf.size
        return self._buf[a - self._pos:b - self._pos]

    def levels(self, sr: int) -> np.ndarray:
        return self._levels


class _Signals:
    """The calibration's recordings as 16 kHz signals: short ones held in memory up to a
    budget (re-read beyond it), long files never loaded whole (streamed block by block
    whenever they are used): hours of training audio never sit in memory at once (issue 14)."""

    BUDGET_SAMPLES = 32_000_000  # 128 MB of float32
    LONG_SAMPLES = 60 * 16_000  # a minute at 16 kHz

    def __init__(self, det):
        self.det, self.items, self.held, self.last = det, [], 0, [None, None]

    def add(self, clip, i: int) -> None:
        """Add a recording; raises ``AudioReadError`` for one that cannot be used (as ``load_signal``)."""
        from machine_monitor.audio.io import audio_info, clip_name

        sr = self.det.feature_config.sr
        if isinstance(clip, (str, os.PathLike)) and audio_info(clip).seconds * sr > self.LONG_SAMPLES:
            # Long files are never held (holding one costs its size; re-reading it, little next to scoring it).
            self.items.append(_Streamed(self.det, clip, clip_name(clip, i)))
            return
        y = self.det.load_signal(clip, i)  # raises for a clip that cannot be used
        # Short recordings are held (re-reading thousands of files costs time) up to the budget.
        keep = y.size <= self.LONG_SAMPLES and self.held + y.size <= self.BUDGET_SAMPLES
        self.held += y.size if keep else 0
        self.items.append(_Held(y) if keep else _Reread(self.det, clip, i, y.size, self.last))

    @classmethod
    def of_arrays(cls, det, signals) -> _Signals:
        """Signals the caller already loaded (16 kHz mono), all held."""
        out = cls(det)
        out.items = [_Held(np.asarray(y, dtype=np.float32)) for y in signals]
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        return self.items[k]

    def __iter__(self):
        return iter(self.items)


def _split_at_gaps(s: np.ndarray) -> list[np.ndarray]:
    """Continuous runs of finite scores (the monitor restarts its history after a gap)."""
    runs, cur = [], []
    for v in s:
        if np.isfinite(v):
            cur.append(v)
        elif cur:
            runs.append(np.asarray(cur))
            cur = []
    if cur:
        runs.append(np.asarray(cur))
    return runs


def clone_fold_scorers(det, clips: list, fold_of: np.ndarray) -> list:
    """For each fold, ``score_signal`` of a clone of ``det`` fitted without that fold."""
    params = dict(det.get_params())
    scorers = []
    for k in range(int(fold_of.max()) + 1):
        train = [c for c, f in zip(clips, fold_of) if f != k]
        clone = type(det)(**params)
        clone.calibrate_on_fit = False
        clone.fit(train, **getattr(det, "_fit_extra", {}))
        scorers.append(clone.score_signal)
    return scorers


def calibrate(det, clips: list, *, groups=None, signals=None, rate: float | None = None,
              false_alarms_per_day: float | None = None, rule: tuple[int, int, float] = (3, 5, 30.0),
              n_folds: int = DEFAULT_FOLDS) -> dict:
    """Calibrate every decision unit of a fitted detector from out-of-fold scores of ``clips``.

    Parameters
    ----------
    det : fitted detector
    clips : list
        The normal training recordings (paths, arrays or ``(array, sr)``).
    groups : sequence or None
        One label per clip; clips of one group stay on one side of every split.
        ``None``: every clip its own group.
    signals : list of ndarray or None
        The clips already loaded (16 kHz mono), if the caller has them.
    rate : float or None
        Clip (and long-file) false-alarm rate; default ``1 - det.percentile / 100``.
    false_alarms_per_day : float or None
        Live target; default ``DEFAULT_FALSE_ALARMS_PER_DAY``.
    rule : (k, n, quiet_seconds)
        The live alert rule the level is set for.
    n_folds : int

    Returns
    -------
    dict, also stored as ``det.calibration_``; sets ``det.threshold_`` and ``det.calibration_streams_``.
    """
    clips = list(clips)
    pct = getattr(det, "percentile", None)
    rate = float(rate) if rate is not None else (1.0 - pct / 100.0 if pct else DEFAULT_CLIP_FALSE_ALARM_RATE)
    target = float(false_alarms_per_day if false_alarms_per_day is not None else DEFAULT_FALSE_ALARMS_PER_DAY)
    if groups is None:
        groups = groups_from_paths([str(c) if isinstance(c, (str, os.PathLike)) else None for c in clips])
    groups = [str(g) for g in groups]
    if len(groups) != len(clips):
        raise ConfigError(f"got {len(groups)} group labels for {len(clips)} recordings")
    if signals is None:
        # The clips the detector trained on: a clip shorter than its span was left out of training.
        signals, kept = _Signals(det), []
        for i, c in enumerate(clips):
            try:
                signals.add(c, i)
                kept.append(i)
            except AudioReadError as exc:
                log.info("not used for calibration: %s", exc)
        clips, groups = [clips[i] for i in kept], [groups[i] for i in kept]
    elif not isinstance(signals, _Signals):
        signals = _Signals.of_arrays(det, signals)
    notes = []
    if len(set(groups)) < 2:
        notes.append("all recordings form one group: folds split them by recording, so the calibration cannot "
                     "measure how a new session differs; record a second session")
        groups = [f"#{i}" for i in range(len(clips))]
    elif len(set(groups)) < FEW_GROUPS:
        # Every out-of-fold score then compares one session with the networks of the other: the
        # thresholds are how far apart two sessions sound, from two (more groups: group_spread_warnings).
        grouped = len(set(groups)) < len(groups)
        what = "groups of recordings (sessions)" if grouped else "recordings"
        notes.append(f"only {len(set(groups))} {what}: each is scored by networks that never heard it, trained on "
                     f"the other, so every threshold measures how much these two differ, from two of them: record "
                     "more sessions of normal running" + (" (or train without --group-by if the sessions sound "
                                                           "alike)" if grouped else ""))
    fold_of = scorers = None
    own = getattr(det, "fold_of_", None)
    if own is not None and len(own) == len(clips) and "fold" in inspect.signature(det.score_signal).parameters:
        own = np.asarray(own, dtype=np.int64)
        split = any(len(set(own[[i for i, h in enumerate(groups) if h == g]])) > 1 for g in set(groups))
        if not split and own.min() >= 0 and len(set(own.tolist())) >= 2:
            fold_of = own
            scorers = [functools.partial(det.score_signal, fold=k) for k in range(int(own.max()) + 1)]
            how = "the detector's own cross-fitted parts blind to each fold"
    val = np.asarray(getattr(det, "val_clips_", []), dtype=np.int64)
    if scorers is None and len(set(groups)) == len(groups) and val.size and val.max() < len(clips):
        # The kind's own held-out clips: neither its model nor its scorer trained on them.
        fold_of = np.full(len(clips), -1, dtype=np.int64)
        fold_of[val] = 0
        scorers = [det.score_signal]
        how = f"the fitted detector on the {val.size} clips it held out"
    if scorers is None:
        fold_of = group_folds(groups, n_folds=n_folds)
        how = f"{int(fold_of.max()) + 1} clones fitted without their fold"
        scorers = clone_fold_scorers(det, clips, fold_of)
    how = f"out-of-fold: {int(fold_of.max()) + 1} folds of {len(set(groups))} groups, scored by {how}"
    cal = _calibrate_from(det, signals, groups, fold_of, scorers, how=how, rate=rate, target=target, rule=rule)
    cal["warnings"] = notes + cal["warnings"]
    for w in notes:
        log.warning("%s", w)
    return cal


def heard_recordings(det, clips: list) -> list[int]:
    """Indices of the ``clips`` that are files the detector trained on (same bytes, any name).

    Their scores are optimistic (the networks learnt them), so thresholds set from them
    are too low: a fresh calibration must leave them out. A model saved before training
    fingerprints were kept knows none.
    """
    known = set(getattr(det, "training_fingerprints_", None) or [])
    if not known:
        return []
    from machine_monitor.audio.io import fingerprint

    return [i for i, c in enumerate(clips) if isinstance(c, (str, os.PathLike)) and fingerprint(c) in known]


def heard_names(clips: list, heard, *, first: int = 3) -> str:
    """The file names of ``clips`` at the indices ``heard`` (heard, stopped, ...) for a message: the first
    few, then "..."."""
    names = [os.path.basename(str(clips[i])) for i in sorted(heard)]
    return ", ".join(names[:first]) + (", ..." if len(names) > first else "")


def without_heard(det, clips: list, groups=None) -> tuple[list, list | None, list[str]]:
    """``clips`` (and their ``groups``) without the ones the detector trained on, and a warning
    naming those left out (empty if none). :class:`ConfigError` if every one was heard."""
    clips = list(clips)
    heard = set(heard_recordings(det, clips))
    if not heard:
        return clips, groups, []
    if len(heard) == len(clips):
        raise ConfigError(f"all {len(clips)} recordings trained this model: it heard them, so their scores are "
                          "optimistic and thresholds set from them would be too low; give recordings it never heard")
    note = (f"{len(heard)} of the {len(clips)} recordings trained this model and were left out "
            f"({heard_names(clips, heard)}): it heard them, so their scores are optimistic")
    log.warning("%s", note)
    keep = [i for i in range(len(clips)) if i not in heard]
    return [clips[i] for i in keep], None if groups is None else [list(groups)[i] for i in keep], [note]


def recalibrate(det, clips: list, *, groups=None, rate: float | None = None,
                false_alarms_per_day: float | None = None, rule: tuple[int, int, float] | None = None) -> dict:
    """Re-calibrate a fitted detector from recordings it never heard (recent normal running).

    The same units, streams and fits as :func:`calibrate`; no folds are needed, since
    neither the networks nor the scorer saw these recordings: the detector itself
    scores them. ``rule`` and the rates default to the model's current calibration.
    Recordings the model trained on (:func:`heard_recordings`) are left out, with a
    warning, and so are recordings of the machine stopped (their median level below the
    model's ``stopped_below_db``: the monitor would not score them, and scored they would
    set every threshold far above any fault); if none is left, :class:`ConfigError`.
    """
    clips, groups, note = without_heard(det, clips, groups)
    old = getattr(det, "calibration_", None) or {}
    if rule is None:
        r = old.get("live", {}).get("rule")
        rule = (r["k"], r["n"], old["live"].get("quiet_seconds", 30.0)) if r else (3, 5, 30.0)
    if rate is None:
        rate = old.get("clip", {}).get("expected_false_alarm_rate")
    if false_alarms_per_day is None:
        false_alarms_per_day = old.get("live", {}).get("target_false_alarms_per_day")
    pct = getattr(det, "percentile", None)
    rate = float(rate) if rate is not None else (1.0 - pct / 100.0 if pct else DEFAULT_CLIP_FALSE_ALARM_RATE)
    target = float(false_alarms_per_day if false_alarms_per_day is not None else DEFAULT_FALSE_ALARMS_PER_DAY)
    signals = _Signals(det)  # long recordings streamed, never held whole
    for i, c in enumerate(clips):
        signals.add(c, i)
    off = _stopped_recordings(signals, old.get("levels"), sr=det.feature_config.sr,
                              window_seconds=old.get("live", {}).get("window_seconds"))
    if off:
        names = heard_names(clips, off)
        if len(off) == len(clips):
            which = "the one recording" if len(clips) == 1 else f"all {len(clips)} recordings"
            raise ConfigError(f"in {which} the machine was stopped (far quieter than the "
                              f"model's training audio, below {old['levels']['stopped_below_db']:.1f} dBFS; "
                              f"{names}): give recordings of it running normally (or retrain, if the microphone "
                              "or its gain changed)")
        below = old["levels"]["stopped_below_db"]
        note.append(f"{len(off)} of the {len(clips)} recordings were left out: the machine was stopped in (part "
                    f"of) them (far quieter than the training audio, below {below:.1f} dBFS; {names})")
        log.warning("%s", note[-1])
        keep = [i for i in range(len(clips)) if i not in set(off)]
        signals.items = [signals.items[i] for i in keep]
        clips, groups = [clips[i] for i in keep], None if groups is None else [list(groups)[i] for i in keep]
    if groups is None:
        groups = groups_from_paths([str(c) if isinstance(c, (str, os.PathLike)) else None for c in clips])
    groups = [str(g) for g in groups]
    fold_of = np.zeros(len(signals), dtype=np.int64)
    how = f"recordings the model never heard ({len(set(groups))} groups), scored by the detector itself"
    cal = _calibrate_from(det, signals, groups, fold_of, [det.score_signal], how=how, rate=rate, target=target,
                          rule=rule)
    cal["warnings"] = note + cal["warnings"]
    return cal


def _stopped_recordings(signals: _Signals, profile: dict | None, *, sr: int,
                        window_seconds: float | None = None) -> list[int]:
    """Indices of the recordings in which the machine was stopped: throughout (their median 0.5 s
    block level below the profile's ``stopped_below_db``), or for a live window or longer in a row
    (the monitor would not score those windows; scored here, they would raise every threshold)."""
    if not profile:
        return []
    run = max(1, math.ceil((window_seconds or LEVEL_BLOCK_SECONDS) / LEVEL_BLOCK_SECONDS))
    out = []
    for i, rec in enumerate(signals):
        levels = rec.levels(sr)
        quiet = levels < float(profile["stopped_below_db"])
        if machine_stopped(float(np.median(levels)), profile) or _longest_run(quiet) >= run:
            out.append(i)
    return out


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of ``True`` in a 1-d boolean array."""
    edges = np.diff(np.concatenate([[0], np.asarray(flags, dtype=np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((stops - starts).max()) if starts.size else 0


def _calibrate_from(det, signals, groups, fold_of, scorers, *, how, rate, target, rule) -> dict:
    """Every decision unit's calibration from scorers blind to each fold's recordings."""
    cfg = det.feature_config
    sr = cfg.sr
    k_folds = int(fold_of.max()) + 1
    seconds = np.array([rec.size / sr for rec in signals])
    clips = signals
    clip_seconds = getattr(det, "clip_seconds_", None) or 10.0
    segment = max(cfg.min_samples, int(round(clip_seconds * sr)))
    window, hop = live_geometry(sr=sr, feature_hop=cfg.hop_length, min_samples=cfg.min_samples,
                                clip_seconds=clip_seconds)
    k, n, quiet_seconds = int(rule[0]), int(rule[1]), float(rule[2])
    live_rule = AlertRule(k=k, n=n, quiet_windows=max(1, math.ceil(quiet_seconds * sr / hop)), hop_seconds=hop / sr)

    unit_scores, unit_groups, unit_recordings, streams = [], [], [], []
    order = np.random.default_rng(getattr(det, "seed", 0)).permutation(len(signals))
    for f in range(k_folds):
        ids = [i for i in order if fold_of[i] == f]
        for i in ids:
            s = _unit_scores(scorers[f], signals[i], segment)
            unit_scores += s
            unit_groups += [groups[i]] * len(s)
            unit_recordings += [int(i)] * len(s)
        # Each recording is streamed alone: joining recordings would make windows (a clip's end
        # and another's start) that no continuous microphone hears.
        for i in ids:
            streams += _split_at_gaps(_stream_scores(scorers[f], signals[i], window, hop))
    unit_scores = np.asarray(unit_scores, dtype=np.float64)

    stride = max(1, math.ceil(window / hop))
    evidence, n_eff = _clip_evidence(unit_scores, streams, stride, len(signals))
    source = "out-of-fold clip scores" + (f" of {n_eff} recordings" if n_eff is not None else "")
    if evidence is not unit_scores:
        source, unit_groups = f"out-of-fold scores of non-overlapping live windows of {n_eff} recordings", None
    # The kind declares its score's scale (and how many parts it is the largest of): the tail
    # models of the units follow it.
    scale = getattr(det, "score_scale", "positive")
    components = getattr(det, "score_components", 1)
    if getattr(det, "threshold_method", "gamma") == "percentile":
        clip = {**percentile_threshold(evidence, percentile=100 * (1 - rate)), "n": int(evidence.size),
                "expected_false_alarm_rate": rate, "warnings": []}
        if evidence.size < MIN_SCORES:
            clip["warnings"].append(f"the clip threshold rests on only {evidence.size} out-of-fold scores")
    else:
        clip = clip_calibration(evidence, rate=rate, groups=unit_groups, scale=scale, n_eff=n_eff)
    clip["evidence"] = source
    clip["n_recordings"] = len(clips)
    clip["percentile"] = 100.0 * (1.0 - rate)
    clip["n_scores"] = clip["n"]
    long_file = long_file_calibration(evidence, rate=rate, floor=clip["value"], scale=scale, n_eff=n_eff,
                                      components=components)
    long_file["evidence"] = source
    long_file["segment_seconds"] = segment / sr
    live = live_calibration(streams, live_rule, false_alarms_per_day=target, block=stride,
                            audio_seconds=float(sum(rec.size for rec in signals) / sr), scale=scale,
                            components=components)
    live["window_seconds"], live["hop_seconds"] = window / sr, hop / sr
    live["quiet_seconds"] = quiet_seconds
    # The live level never sits below the clip threshold: a window flagged live is at least a flagged clip.
    if live["value"] < clip["value"]:
        live["value_model"], live["value"] = live["value"], clip["value"]
        live["note"] = "raised to the clip threshold"
    lossy = _lossy_calibration(det, signals, fold_of, order, scorers, segment, rate=rate, scale=scale,
                               floor={"clip": clip["value"], "live": live["value"]}, live_rule=live_rule,
                               window=window, hop=hop, target=target)
    levels = level_profile(np.concatenate([rec.levels(sr) for rec in signals]))

    warnings = list(dict.fromkeys(clip.get("warnings", []) + long_file["warnings"] + live["warnings"]))
    minutes = float(seconds.sum() / 60)
    cal = {
        "version": 1,
        "how": how,
        "n_recordings": len(clips), "n_groups": len(set(groups)), "n_folds": k_folds,
        "audio_minutes": minutes,
        "clip": clip, "long_file": long_file, "live": live, "levels": levels,
        **({"lossy": lossy} if lossy else {}),
        "expected": {"clip_false_alarm_rate": rate, "long_file_false_alarm_rate": rate,
                     "live_false_alerts_per_day": live["expected_false_alarms_per_day"]},
        "warnings": warnings,
    }
    det.calibration_ = cal
    det.calibration_streams_ = streams
    det.threshold_ = {k_: v for k_, v in clip.items() if k_ != "gamma"} | {"gamma": clip.get("gamma")}
    det.val_scores_ = unit_scores
    det.val_recordings_ = np.asarray(unit_recordings, dtype=np.int64)  # which recording each unit score is of
    det.fold_of_ = fold_of
    for w in warnings:
        log.warning("%s", w)
    return cal


def describe(cal: dict) -> list[str]:
    """What a user should expect, one line each (``train`` prints these)."""
    c, lf, lv = cal["clip"], cal["long_file"], cal["live"]
    ex = lf.get("examples", {})
    return [
        f"evidence: {cal['n_recordings']} recordings ({cal['audio_minutes']:.1f} min) in {cal['n_groups']} groups, "
        f"{cal['how']}",
        f"clip threshold {c['value']:.4g} ({c['method']} on {c['n']} {c['evidence']}): expect "
        f"{100 * c['expected_false_alarm_rate']:.2g} % of normal clips flagged",
        f"long files: worst window against a threshold that grows with the windows "
        f"({', '.join(f'{k} windows {v:.4g}' for k, v in ex.items())}): expect "
        f"{100 * lf['expected_false_alarm_rate']:.2g} % of normal files flagged",
        f"live alerts: window level {lv['value']:.4g}, {lv['rule']['k']} of {lv['rule']['n']} windows "
        f"({lv['window_seconds']:.2f} s every {lv['hop_seconds']:.3f} s): expect "
        f"{lv['expected_false_alarms_per_day']:.2g} false alerts per day of monitoring (target "
        f"{lv['target_false_alarms_per_day']:g}; extrapolated from {lv['audio_seconds'] / 60:.1f} min"
        + (f"; {lv['expected_false_alarms_per_day_with_fit_uncertainty']:.2g} with the uncertainty of the fit"
           if lv.get("expected_false_alarms_per_day_with_fit_uncertainty") is not None else "") + ")",
    ] + ([f"lossy files (OGG, MP3): clip threshold {cal['lossy']['value']:.4g}"
          + (f", live level {cal['lossy']['live']['value']:.4g}" if cal["lossy"].get("live") else "")
          + f", from {cal['lossy']['n']} out-of-fold scores of the training audio coded as "
          f"{cal['lossy']['codec']}"] if cal.get("lossy") else [])
