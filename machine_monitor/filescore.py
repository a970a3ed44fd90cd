"""Score one file: the one function scan, evaluate, threshold and the report share.

A file no longer than ``WHOLE_FILE_TOLERANCE`` model clips is scored whole, exactly
like ``det.score_signal(det.load_signal(path))``. A longer file is streamed
(bounded memory, continuous resampling) and cut into *segments* of the model's clip
length (``det.clip_seconds_``), each scored like a clip. Segments start every
``hop_seconds`` (default: one segment, so they do not overlap) and the last one is
aligned to the end of the file so that no audio is left out. The file score is the
**worst segment's** score: an hour of normal sound with one bad minute is flagged. It is
judged against the model's long-file threshold for that many segments
(``det.long_file_threshold(n)``, calibrated so a normal file is flagged at the clip rate
whatever its length); the row's ``threshold`` is that value.

A file that cannot be used (missing, not audio, empty, too short, NaN, silent) is a
row with its one-line error; the scan goes on. Digitally silent segments inside a
long file are skipped; a file with no sound at all is an error.

**Machine stopped.** Audio far quieter than anything in training (a segment's median
0.5 s block level below the model's ``calibration_["levels"]["stopped_below_db"]``, the
monitor's ``machine_stopped`` test) is a machine switched off, not a fault: such a segment
is not scored (the networks never heard silence, so it would top every ranking), a long
file is judged by its running segments, and a file with none is a row with the verdict
``stopped`` and no score. A model without a level profile scores everything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator

import numpy as np

from machine_monitor.audio.io import (
    LOSSY_FORMATS,
    audio_duration,
    audio_info,
    check_signal,
    load_audio_if_short,
    read_blocks,
)
from machine_monitor.errors import AudioReadError, SilentAudioError
from machine_monitor.threshold import machine_stopped, window_level_db

log = logging.getLogger(__name__)

# A file up to this many clip lengths is scored whole, as one clip.
WHOLE_FILE_TOLERANCE = 1.25

@dataclasses.dataclass
class ScanRow:
    """The result of scanning one file.

    ``score`` is the file score (worst segment), ``worst_offset`` the start in
    seconds of the worst segment, ``n_segments``/``n_anomalous`` how many segments
    were scored and how many of them exceed the threshold, ``n_stopped`` how many were
    not scored because the machine was stopped (far quieter than training). ``error``
    is set (and the score is ``None``) when the file could not be used; a file with
    only stopped segments has no score either, and the verdict ``stopped``.
    """

    path: str
    threshold: float
    score: float | None = None
    duration: float | None = None
    worst_offset: float | None = None
    n_segments: int = 0
    n_anomalous: int = 0
    error: str | None = None
    n_stopped: int = 0
    members: dict | None = None  # multi-view models: each member's z as the fusion sees it (worst segment)
    index: int = -1  # position in the input list (not written out)

    @property
    def anomalous(self) -> bool:
        return self.score is not None and self.score > self.threshold

    @property
    def stopped(self) -> bool:
        """The machine was stopped throughout: nothing to judge (not an error, not an anomaly)."""
        return self.error is None and self.score is None and self.n_stopped > 0

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "error"
        if self.stopped:
            return "stopped"
        return "ANOMALY" if self.anomalous else "normal"

    def to_record(self, *, flat: bool = False) -> dict:
        """A dict for CSV/JSONL (``RECORD_FIELDS`` order); ``flat``: ``members`` as a JSON string (CSV)."""
        members = json.dumps(self.members) if flat and self.members is not None else self.members
        return {"path": self.path, "score": self.score, "threshold": self.threshold, "verdict": self.verdict,
                "anomalous_windows": self.n_anomalous, "windows": self.n_segments,
                "stopped_windows": self.n_stopped, "worst_offset_s": self.worst_offset,
                "duration_s": self.duration, "error": self.error,
                "members": members}

    @classmethod
    def from_record(cls, rec: dict) -> ScanRow:
        """Inverse of :meth:`to_record` (values may be strings, as read from CSV)."""
        def num(v, kind=float):
            return None if v in (None, "") else kind(float(v))

        return cls(path=str(rec["path"]), threshold=float(rec["threshold"]), score=num(rec.get("score")),
                   duration=num(rec.get("duration_s")), worst_offset=num(rec.get("worst_offset_s")),
                   n_segments=num(rec.get("windows"), int) or 0,
                   n_anomalous=num(rec.get("anomalous_windows"), int) or 0,
                   n_stopped=num(rec.get("stopped_windows"), int) or 0,  # absent in scans before it
                   error=rec.get("error") or None,
                   members=json.loads(rec["members"]) if isinstance(rec.get("members"), str) and rec["members"]
                   else rec.get("members") or None)


RECORD_FIELDS = tuple(ScanRow("", 0.0).to_record())


# -- one file ----------------------------------------------------------------------
def segment_starts(n_samples: int, segment: int, hop: int) -> np.ndarray:
    """Start samples of the segments covering ``n_samples`` samples.

    Segments of ``segment`` samples every ``hop`` samples; the last one is aligned
    to the end so the tail is covered. A signal no longer than one segment is one
    segment starting at 0.
    """
    if n_samples <= segment:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, n_samples - segment + 1, hop, dtype=np.int64)
    if starts[-1] + segment < n_samples:
        starts = np.append(starts, n_samples - segment)
    return starts


def iter_segments(blocks: Iterable[np.ndarray], *, segment: int, hop: int) -> Iterator[tuple[int, np.ndarray]]:
    """Cut a stream of blocks into ``(start_sample, segment)`` pairs.

    Same segments as :func:`segment_starts` without knowing the length in advance;
    memory is bounded by one segment plus one block.
    """
    buf = np.zeros(0, dtype=np.float32)
    recent = buf  # the last `segment` samples of the stream, for the end-aligned tail
    pos = total = covered = 0
    for block in blocks:
        buf = np.concatenate([buf, block])
        recent = np.concatenate([recent, block])[-segment:]
        total += block.size
        while buf.size >= segment:
            yield pos, buf[:segment]
            covered = pos + segment
            buf, pos = buf[hop:], pos + hop
    if total > covered:
        yield (0, buf) if covered == 0 else (total - segment, recent)


def _strip(msg: str, path) -> str:
    return str(msg).removeprefix(f"{path}: ")


def _segment_samples(det, segment_seconds: float | None) -> int:
    sr = det.feature_config.sr
    seconds = segment_seconds or getattr(det, "clip_seconds_", None) or 10.0
    return max(det.feature_config.min_samples, int(round(seconds * sr)))


def score_file(det, path: str | os.PathLike, *, segment_seconds: float | None = None,
               hop_seconds: float | None = None) -> ScanRow:
    """Score one file (see the module docstring); never raises for a bad file.

    Parameters
    ----------
    det : Detector
        A fitted detector.
    segment_seconds : float, optional
        Segment length; default the model's clip length ``det.clip_seconds_``.
    hop_seconds : float, optional
        Distance between segment starts; default ``segment_seconds``.

    Returns
    -------
    ScanRow
        With ``error`` set (a one-line reason) when the file cannot be used.
    """
    row = ScanRow(path=str(path), threshold=_threshold(det, path, 1))
    sr = det.feature_config.sr
    segment = _segment_samples(det, segment_seconds)
    hop = max(1, int(round(hop_seconds * sr))) if hop_seconds else segment
    try:
        y = _load_if_short(det, path, WHOLE_FILE_TOLERANCE * segment)
        if y is not None:
            if not _fill_stopped(row, y, _level_profile(det), sr=sr):
                _fill_whole(row, y, *_score(det, y), sr=sr)
        else:
            _score_segments(det, path, row, segment=segment, hop=hop)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a scan of thousands
        _fail(row, exc, path)
    return row


def score_files(det, paths: Iterable[str | os.PathLike], *, segment_seconds: float | None = None,
                hop_seconds: float | None = None, batch: int = 16) -> Iterator[ScanRow]:
    """:func:`score_file` of every path, in order, the same rows, short files ``batch`` at a time.

    A multi-view model runs each of its networks once on the rows of a whole batch of short
    files: its weights (8 MB for the default's 15 span networks, read from memory for one row
    each) are then read once per batch, not once per file, which is most of what a short file's
    scoring costs beyond reading it and computing its log-mel. Scores are the same to float32
    rounding. Long files, other models, and a batch whose joint scoring fails are scored file
    by file.

    Parameters
    ----------
    det : Detector
        A fitted detector.
    paths : iterable of path-like
        Read ``batch`` at a time (a generator of many files is fine).
    segment_seconds, hop_seconds : float, optional
        As :func:`score_file`.
    batch : int
        Short files scored together (1: :func:`score_file` one by one).

    Yields
    ------
    ScanRow
        One per path, in input order.
    """
    it = iter(paths)
    if batch <= 1 or not _scores_in_batches(det):
        for path in it:
            yield score_file(det, path, segment_seconds=segment_seconds, hop_seconds=hop_seconds)
        return
    sr = det.feature_config.sr
    segment = _segment_samples(det, segment_seconds)
    profile = _level_profile(det)
    while chunk := [p for _, p in zip(range(batch), it)]:
        rows, short = [], []
        for path in chunk:
            row = ScanRow(path=str(path), threshold=_threshold(det, path, 1))
            try:
                y = _load_if_short(det, path, WHOLE_FILE_TOLERANCE * segment)
            except Exception as exc:  # noqa: BLE001 - as score_file
                _fail(row, exc, path)
            else:
                if y is None:  # a long file: streamed in segments, alone
                    row = score_file(det, path, segment_seconds=segment_seconds, hop_seconds=hop_seconds)
                elif not _fill_stopped(row, y, profile, sr=sr):
                    short.append((row, y))
            rows.append(row)
        try:
            scored = _score_many(det, [y for _, y in short]) if short else []
        except Exception:  # noqa: BLE001 - one odd file must not spoil its batch: score them one by one
            log.debug("batch scoring failed; scoring its files one by one", exc_info=True)
            scored = None
        for i, (row, y) in enumerate(short):
            try:
                _fill_whole(row, y, *(scored[i] if scored is not None else _score(det, y)), sr=sr)
            except Exception as exc:  # noqa: BLE001 - as score_file
                _fail(row, exc, row.path)
        yield from rows


def _level_profile(det) -> dict | None:
    """The model's training level profile (:func:`threshold.level_profile`), or ``None``."""
    return (getattr(det, "calibration_", None) or {}).get("levels") or None


def _is_stopped(y: np.ndarray, profile: dict | None, *, sr: int) -> bool:
    return profile is not None and machine_stopped(window_level_db(y, sr=sr), profile)


def _fill_stopped(row: ScanRow, y: np.ndarray, profile: dict | None, *, sr: int) -> bool:
    """``row`` as a stopped machine's when the whole signal ``y`` is one (True), else unchanged."""
    if not _is_stopped(y, profile, sr=sr):
        return False
    row.duration, row.n_stopped = y.size / sr, 1
    return True


def _fill_whole(row: ScanRow, y: np.ndarray, score, members, *, sr: int) -> None:
    row.score, row.members = score, members
    row.duration = y.size / sr
    row.worst_offset, row.n_segments, row.n_anomalous = 0.0, 1, int(row.score > row.threshold)


def _fail(row: ScanRow, exc: Exception, path) -> None:
    """``row`` as the one-line error of ``exc`` (no score)."""
    if isinstance(exc, AudioReadError):
        row.error = _strip(exc, path)
    else:
        log.debug("unexpected error scanning %s", path, exc_info=(type(exc), exc, exc.__traceback__))
        row.error = f"unexpected {type(exc).__name__}: {_strip(exc, path)}"
    row.score = row.worst_offset = None
    row.n_segments = row.n_anomalous = 0


def _load_if_short(det, path, max_samples: float) -> np.ndarray | None:
    """``det.load_signal(path)`` when the file is at most ``max_samples`` long at the model's rate,
    else ``None`` (nothing decoded): for the detectors' own reader, from one opening of the file."""
    from machine_monitor.detectors.base import BaseDetector

    cfg = det.feature_config
    if isinstance(det, BaseDetector) and type(det).load_signal is BaseDetector.load_signal:
        return load_audio_if_short(path, max_samples=max_samples, sr=cfg.sr, channel=det.channel,
                                   min_samples=cfg.min_samples)
    try:
        seconds_in = audio_duration(path)
    except Exception:  # noqa: BLE001 - load_signal below gives the precise, user-facing reason
        seconds_in = 0.0
    return det.load_signal(path) if seconds_in * cfg.sr <= max_samples else None


def _scores_in_batches(det) -> bool:
    """A multi-view model whose clip score is :meth:`MultiViewDetector.score_members`' (what
    :func:`_score_many` computes for many signals at once)."""
    from machine_monitor.detectors.multiview import MultiViewDetector

    return isinstance(det, MultiViewDetector) and type(det).score_members is MultiViewDetector.score_members


def _score_many(det, signals: list[np.ndarray]) -> list[tuple[float, dict]]:
    """:func:`_score` of each signal, a multi-view model's networks run once for all of them:
    ``det.score_members`` (log-mel, members' raw span scores, their standardisation, the
    fusion, the clip aggregate) with the raw scores of the whole batch in one pass."""
    det._check_fitted()
    return [det.clip_and_members({n: det.members_[n].standardise(raw[n]) for n in det.members_})
            for raw in det.member_window_scores([det.logmel(y) for y in signals])]


#: File endings of lossy-coded audio (confirmed by the file's header before its thresholds change).
LOSSY_SUFFIXES = (".ogg", ".oga", ".mp3", ".opus")


def _threshold(det, path, n: int) -> float:
    """The threshold a file's worst of ``n`` units is judged against: the clip threshold for one,
    the long-file threshold for more; a lossy-coded file's own when the model has them."""
    long_file = getattr(det, "long_file_threshold", None)
    if long_file is None:
        return det.threshold_value_
    lossy = False
    if str(path).lower().endswith(LOSSY_SUFFIXES) and getattr(det, "judges_lossy_apart", lambda: False)():
        try:
            lossy = str(audio_info(path).format).upper() in LOSSY_FORMATS
        except AudioReadError:
            lossy = False  # the file's own error comes when it is read
    return float(long_file(n, lossy=True)) if lossy else float(long_file(n))


def _score(det, y: np.ndarray) -> tuple[float, dict | None]:
    """A clip score, and each member's z as the fusion sees it when the detector has members."""
    score_members = getattr(det, "score_members", None)
    return score_members(y) if score_members is not None else (det.score_signal(y), None)


def _score_segments(det, path, row: ScanRow, *, segment: int, hop: int) -> None:
    """Stream a long file and fill ``row`` with its worst segment."""
    cfg = det.feature_config
    thr = row.threshold
    profile = _level_profile(det)
    best, best_at, n, n_bad, n_stopped, total, silent = -math.inf, 0, 0, 0, 0, 0, None
    blocks = read_blocks(path, block_seconds=segment / cfg.sr, sr=cfg.sr, channel=det.channel)
    for start, y in iter_segments(blocks, segment=segment, hop=hop):
        total = max(total, start + y.size)
        try:
            check_signal(y, sr=cfg.sr, min_samples=cfg.min_samples, source=f"{path}: at {start / cfg.sr:.1f} s")
        except SilentAudioError as exc:
            silent = exc  # a dropout or a muted input: nothing to judge there
            continue
        if _is_stopped(y, profile, sr=cfg.sr):  # the machine was off for a while: not a fault
            n_stopped += 1
            continue
        s, members = _score(det, y)
        n += 1
        n_bad += s > thr
        if s > best:
            best, best_at, row.members = s, start, members
    row.n_stopped = n_stopped
    if n == 0:
        if n_stopped:
            row.duration = total / cfg.sr
            return
        if silent is not None:
            raise SilentAudioError(f"{path}: is digitally silent (no sample above -96 dBFS)")
        raise AudioReadError(f"{path}: contains no audio samples")
    row.score, row.worst_offset = float(best), best_at / cfg.sr
    row.n_segments, row.n_anomalous, row.duration = n, int(n_bad), total / cfg.sr
    # The worst of n segments is judged against the threshold calibrated for n of them (the clip
    # threshold would flag long normal files: a maximum grows with the number of segments).
    if getattr(det, "long_file_threshold", None) is not None:
        row.threshold = _threshold(det, path, n)
