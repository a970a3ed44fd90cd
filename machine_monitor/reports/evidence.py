"""Evidence a person can read: why a stretch of audio was flagged, drawn once for every page.

The HTML report of ``scan --report``, the dashboard's alert view and anything else that
shows "this is what the detector heard" use this one rendering:

* the log-mel spectrogram with its frequency axis in **Hz** and a colour scale in **dB**;
* the **difference from normal**: the model's normal reference spectrum subtracted, so that
  "3 kHz is 10 dB louder than usual" is visible at a glance, with the flagged span's
  spectrum drawn against the normal one beside it;
* the **score over time** with the threshold line and the anomalous span marked, and for
  a file longer than the excerpt, the score over the whole file (where the trouble starts);
* where the detector explains itself (``explain(y)``), which view (member) and which
  frequency bands drove the score.

The normal reference is, in order of preference: the detector's ``reference_logmel_``
(mean training log-mel, dB, ``(n_mels,)``); the feature standardisation mean of a frame
log-mel model (the same thing); for a ``peak`` model, the mean of the per-band peak levels
over a span, compared with the excerpt's own per-span peaks (what that model sees). A model
with no such spectrum (raw-waveform features) gets no difference panel, and the figure says so.

Two steps: :func:`collect_evidence` (numbers: a plain :class:`Evidence` record, cheap to
keep or test) and :func:`evidence_figure` / :func:`render_evidence` (the picture, with
matplotlib's object-oriented API on Agg: no pyplot, no global state, thread-safe).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Colours shared by every evidence picture (and the dashboard's charts).
SCORE_COLOR, THRESHOLD_COLOR, SPAN_COLOR, NORMAL_COLOR = "#1f3b5a", "#c0392b", "#e67e22", "#7f8c8d"
#: Hz ticks tried on a frequency axis (only those inside the model's band range are used).
HZ_TICKS = (50, 100, 200, 500, 1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 20000)
#: The difference-from-normal colour scale is clipped to +/- this many dB.
DIFF_RANGE_DB = 20.0


@dataclasses.dataclass
class Evidence:
    """What the detector heard in one excerpt, as numbers (times in seconds of the file/stream).

    Attributes
    ----------
    name : str
        The file, clip or alert the excerpt comes from (shown in the title).
    offset, duration : float
        Where the excerpt starts and how long it is.
    spec : np.ndarray [shape=(n_frames, n_mels)]
        Log-mel level in dB (absolute reference, as the detector computes it).
    frame_seconds : float
        Seconds between spectrogram frames.
    band_hz : np.ndarray [shape=(n_mels,)]
        Centre frequency of each mel band.
    times, scores : np.ndarray [shape=(n_windows,)]
        Start time and score of each scored window in the excerpt.
    window_seconds : float
        Audio one window covers.
    threshold : float
        The level a window must exceed to count as anomalous.
    span : tuple of float or None
        ``(start, end)`` of the anomalous span, or None when no window exceeds the threshold.
    reference : np.ndarray [shape=(n_mels,)] or None
        Normal reference spectrum (dB); ``reference_kind`` says which (``"mean"`` log-mel or
        ``"peak"`` level per band over a span); ``reference_note`` why there is none.
    deviation : np.ndarray [shape=(n_cols, n_mels)] or None
        Difference from normal over time (dB); ``deviation_times`` where each column is drawn
        from, ``deviation_seconds`` how wide (a frame, or for a peak reference one stride of
        windows, centred on the window it summarises).
    span_spectrum : np.ndarray [shape=(n_mels,)] or None
        The flagged sound's spectrum, comparable with ``reference``: the anomalous span's mean
        level (or the worst window's, without a span), or the worst window's per-band peak for
        a peak reference; ``span_spectrum_label`` says which.
    explanation : dict or None
        ``{"members": {name: standardised score}, "bands": (n_mels,)}`` from ``explain(y)``.
    timeline : tuple of np.ndarray or None
        ``(starts, scores, segment_seconds)`` over the whole file, when it is longer than
        the excerpt.
    score : float or None
        The score that flagged it (clip, file or alert peak).
    time_label : str
        What the time axis measures.
    """

    name: str
    offset: float
    duration: float
    spec: np.ndarray
    frame_seconds: float
    band_hz: np.ndarray
    times: np.ndarray
    scores: np.ndarray
    window_seconds: float
    threshold: float
    span: tuple[float, float] | None = None
    reference: np.ndarray | None = None
    reference_kind: str | None = None
    reference_note: str = ""
    deviation: np.ndarray | None = None
    deviation_times: np.ndarray | None = None
    deviation_seconds: float = 0.0
    span_spectrum: np.ndarray | None = None
    span_spectrum_label: str = ""
    explanation: dict | None = None
    timeline: tuple[np.ndarray, np.ndarray, float] | None = None
    score: float | None = None
    time_label: str = "time in file (s)"

    # -- words ---------------------------------------------------------------------
    def strongest_deviation(self, *, width: int = 4) -> tuple[float, float, float] | None:
        """``(low_hz, high_hz, dB)`` of the ``width`` adjacent bands that differ most from normal.

        The sign of ``dB`` says louder (+) or quieter (-) than normal.
        """
        if self.reference is None or self.span_spectrum is None:
            return None
        d = np.asarray(self.span_spectrum, np.float64) - np.asarray(self.reference, np.float64)
        width = max(1, min(width, d.size))
        smooth = np.convolve(d, np.ones(width) / width, mode="valid")
        i = int(np.argmax(np.abs(smooth)))
        return float(self.band_hz[i]), float(self.band_hz[i + width - 1]), float(smooth[i])

    def top_member(self) -> tuple[str, float] | None:
        """The view whose standardised score is highest, with that score."""
        members = (self.explanation or {}).get("members") or {}
        if not members:
            return None
        name = max(members, key=lambda k: members[k])
        return str(name), float(members[name])

    def top_bands(self, n: int = 3) -> list[float]:
        """Centre frequencies (Hz) of the ``n`` bands that contributed most to the score."""
        bands = (self.explanation or {}).get("bands")
        if bands is None or np.size(bands) != self.band_hz.size:
            return []
        order = np.argsort(np.asarray(bands, np.float64))[::-1][:n]
        return [float(self.band_hz[i]) for i in order]

    def summary(self) -> list[str]:
        """A few plain sentences: the score against the threshold, where, which frequencies."""
        out = []
        if self.score is not None:
            verdict = "above" if self.score > self.threshold else "below"
            out.append(f"Score {self.score:.3g}, {verdict} the threshold {self.threshold:.3g}.")
        if self.span is not None:
            out.append(f"Windows above the threshold from {self.span[0]:.1f} s to {self.span[1]:.1f} s "
                       f"({int(np.count_nonzero(self.scores > self.threshold))} of {self.scores.size}).")
        elif self.scores.size:
            out.append(f"No window of this excerpt is above the threshold (highest {self.scores.max():.3g}).")
        if self.timeline is not None:
            starts, scores, seg = self.timeline
            bad = np.flatnonzero(scores > self.threshold)
            if bad.size:
                out.append(f"In the whole file, {bad.size} of {scores.size} segments are above the threshold, "
                           f"the first from {starts[bad[0]]:.0f} s.")
        dev = self.strongest_deviation()
        if dev is not None:
            lo, hi, db = dev
            what = "per-band peak level" if self.reference_kind == "peak" else "level"
            out.append(f"Largest difference from normal: {db:+.1f} dB {what} at {_hz(lo)}-{_hz(hi)}.")
        elif self.reference_note:
            out.append(self.reference_note)
        member = self.top_member()
        if member is not None:
            out.append(f"View that drove the score: {member[0]} ({member[1]:.2g} standard deviations above "
                       "its normal).")
        bands = self.top_bands()
        if bands:
            out.append("Bands that drove it most: " + ", ".join(_hz(b) for b in bands) + ".")
        return out


def _hz(f: float) -> str:
    return f"{f / 1000:.1f} kHz" if f >= 1000 else f"{f:.0f} Hz"


def short_name(name: str | os.PathLike, *, max_chars: int = 40) -> str:
    """A clip's name for a plot label: the file name without its folder, shortened in the middle."""
    s = Path(str(name)).name or str(name)
    if len(s) <= max_chars:
        return s
    keep = max_chars - 1
    return s[: keep - keep // 2] + "\u2026" + s[-(keep // 2):]


# -- numbers -----------------------------------------------------------------------------
def band_frequencies(n_mels: int, *, sr: int = 16_000, fmax: float | None = None) -> np.ndarray:
    """Centre frequency (Hz) of each band of the project's mel filterbank.

    Returns
    -------
    np.ndarray [shape=(n_mels,), dtype=float64]
        The peak of each triangular filter (librosa's Slaney mel scale, 0 Hz to ``fmax``).
    """
    import librosa

    return librosa.mel_frequencies(n_mels + 2, fmin=0.0, fmax=fmax or sr / 2)[1:-1].astype(np.float64)


def _spectrogram_config(det):
    """The log-mel settings of the model (or the defaults, for a raw-waveform model)."""
    from machine_monitor.features import FeatureConfig

    cfg = det.feature_config
    return cfg if cfg.kind in ("logmel", "peak") else FeatureConfig.for_kind("logmel", sr=cfg.sr)


def normal_reference(det) -> tuple[np.ndarray | None, str | None, str]:
    """The model's normal spectrum: ``(values (n_mels,) dB, kind, note)``.

    ``kind`` is ``"mean"`` (mean log-mel of the training sound) or ``"peak"`` (mean of the
    per-band peak level over a span, for ``peak`` models that keep nothing else); with no
    reference, values and kind are None and ``note`` says why.
    """
    mel = _spectrogram_config(det)
    ref = getattr(det, "reference_logmel_", None)
    if ref is not None and np.shape(ref) == (mel.n_mels,):
        return np.asarray(ref, np.float32), "mean", ""
    cfg = det.feature_config
    mean = getattr(det, "feature_mean_", None)
    if mean is not None and np.shape(mean) == (cfg.n_mels,) and cfg.kind in ("logmel", "peak"):
        return np.asarray(mean, np.float32), ("mean" if cfg.kind == "logmel" else "peak"), ""
    return None, None, ("No difference from normal: this model keeps no normal spectrum "
                        f"({cfg.kind} features).")


def anomalous_span(times: np.ndarray, scores: np.ndarray, window_seconds: float,
                   threshold: float, *, resolution: float = 0.01) -> tuple[float, float] | None:
    """Where the trouble is: the audio covered by windows above ``threshold`` and by none below it.

    A window's score speaks for all of its audio, so a window judged normal clears the part
    it shares with an anomalous one; when nothing is left that way (the windows disagree
    everywhere), the span is from the start of the first anomalous window to the end of the
    last one. Returns ``(start, end)`` in the times' units, or None when no window is above.
    """
    times, scores = np.asarray(times, np.float64), np.asarray(scores, np.float64)
    bad = scores > threshold
    if not bad.any():
        return None
    lo, hi = float(times[bad][0]), float(times[bad][-1] + window_seconds)
    grid = np.arange(lo, hi, resolution) + resolution / 2
    covered_bad = np.zeros(grid.size, bool)
    covered_good = np.zeros(grid.size, bool)
    for t, score in zip(times, scores):
        inside = (grid >= t) & (grid < t + window_seconds)
        if score > threshold:
            covered_bad |= inside
        elif np.isfinite(score):
            covered_good |= inside
    core = np.flatnonzero(covered_bad & ~covered_good)
    if core.size == 0:
        return lo, hi
    return float(grid[core[0]] - resolution / 2), float(grid[core[-1]] + resolution / 2)


def _window_times(det, n_samples: int, n_scores: int, offset: float) -> np.ndarray:
    """Start time of each scored window; evenly spread when the detector's windows are its own."""
    cfg = det.feature_config
    try:
        starts = cfg.window_starts(n_samples) / cfg.sr
    except Exception:  # noqa: BLE001 - a detector kind with a framing of its own
        starts = np.zeros(0)
    if starts.size != n_scores:
        last = max(0.0, n_samples / cfg.sr - det.window_seconds())
        starts = np.linspace(0.0, last, n_scores) if n_scores > 1 else np.zeros(n_scores)
    return offset + starts


def _explain(det, y: np.ndarray, n_mels: int) -> dict | None:
    explain = getattr(det, "explain", None)
    if explain is None:
        return None
    try:
        out = explain(y)
    except Exception as exc:  # noqa: BLE001 - an explanation that fails must not lose the evidence
        log.warning("the detector could not explain this excerpt: %s", exc)
        return None
    members = {str(k): float(v) for k, v in dict(out.get("members") or {}).items()}
    bands = out.get("bands")
    bands = None if bands is None or np.size(bands) != n_mels else np.asarray(bands, np.float64).ravel()
    return {"members": members, "bands": bands} if members or bands is not None else None


def collect_evidence(det, y: np.ndarray, *, offset: float = 0.0, name: str = "", threshold: float | None = None,
                     span: tuple[float, float] | None = None, score: float | None = None,
                     timeline: tuple[np.ndarray, np.ndarray, float] | None = None,
                     time_label: str = "time in file (s)") -> Evidence:
    """Everything :func:`evidence_figure` draws, for one excerpt of audio.

    Parameters
    ----------
    det : fitted detector
        Any kind (public API: ``feature_config``, ``window_scores``, ``window_seconds``,
        ``threshold_value_``; ``reference_logmel_`` and ``explain`` when it has them).
    y : np.ndarray [shape=(n,)]
        The excerpt, 16 kHz mono float32 (at least one feature window long).
    offset : float
        Where the excerpt starts in its file or stream (seconds); all times include it.
    threshold : float, optional
        The level that makes a window anomalous (default the model's threshold; a live alert
        passes the level it used).
    span : (float, float), optional
        The anomalous span, when the caller knows it; else from the windows above ``threshold``.
    timeline : (starts, scores, segment_seconds), optional
        Scores over the whole file (see :func:`file_timeline`).
    """
    from machine_monitor.features import logmel_frames, peak_windows, span_starts

    y = np.asarray(y, dtype=np.float32)
    mel = _spectrogram_config(det)
    cfg = det.feature_config
    spec = logmel_frames(y, sr=mel.sr, n_fft=mel.n_fft, hop_length=mel.hop_length, n_mels=mel.n_mels, fmax=mel.fmax)
    thr = float(det.threshold_value_ if threshold is None else threshold)
    scores = np.asarray(det.window_scores(y), dtype=np.float64)
    win = float(det.window_seconds())
    times = _window_times(det, y.size, scores.size, offset)
    if span is None:
        span = anomalous_span(times, scores, win, thr)
    frame_s = mel.hop_length / mel.sr
    ev = Evidence(name=str(name), offset=float(offset), duration=y.size / mel.sr, spec=spec, frame_seconds=frame_s,
                  band_hz=band_frequencies(mel.n_mels, sr=mel.sr, fmax=mel.fmax), times=times, scores=scores,
                  window_seconds=win, threshold=thr, span=span, timeline=timeline,
                  score=None if score is None else float(score), time_label=time_label)
    ev.reference, ev.reference_kind, ev.reference_note = normal_reference(det)
    if ev.reference is not None and spec.shape[0]:
        frame_t = offset + np.arange(spec.shape[0]) * frame_s
        if ev.reference_kind == "peak":
            # What a peak model sees: each window's per-band maximum against the normal one.
            ctx = min(cfg.context, spec.shape[0])
            stride = max(1, cfg.stride)
            cols = peak_windows(spec, context=ctx, stride=stride)
            ev.deviation = cols - ev.reference
            starts = offset + span_starts(spec.shape[0], context=ctx, stride=stride) * frame_s
            # Each column is drawn at its window's centre: it speaks for the whole window.
            ev.deviation_times = starts + (ctx * frame_s - stride * frame_s) / 2
            ev.deviation_seconds = stride * frame_s
            worst = times[int(np.argmax(scores))] if scores.size else offset
            ev.span_spectrum = cols[int(np.argmin(np.abs(starts - worst)))]
            ev.span_spectrum_label = "worst window (peak)"
        else:
            if span is not None:
                inside = (frame_t >= span[0]) & (frame_t + mel.n_fft / mel.sr <= span[1] + 1e-9)
                ev.span_spectrum_label = "anomalous span (mean)"
            else:
                k = int(np.argmax(scores)) if scores.size else 0
                inside = (frame_t >= times[k]) & (frame_t < times[k] + win) if scores.size else frame_t >= 0
                ev.span_spectrum_label = "worst window (mean)"
            if not inside.any():
                inside[:] = True
            ev.deviation = spec - ev.reference
            ev.deviation_times = frame_t
            ev.deviation_seconds = frame_s
            ev.span_spectrum = spec[inside].mean(axis=0)
    ev.explanation = _explain(det, y, mel.n_mels)
    return ev


def file_timeline(det, path: str | os.PathLike, *, segment_seconds: float | None = None,
                  hop_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Score a whole file segment by segment, as ``scan`` does: ``(starts, scores, segment_seconds)``.

    Memory stays bounded by one segment; digitally silent segments get NaN (nothing to judge).
    """
    from machine_monitor.audio.io import check_signal, read_blocks
    from machine_monitor.errors import SilentAudioError

    try:
        from machine_monitor.filescore import iter_segments
    except ImportError:  # before the layout move
        from machine_monitor.scan import iter_segments

    cfg = det.feature_config
    seconds = segment_seconds or getattr(det, "clip_seconds_", None) or 10.0
    segment = max(cfg.min_samples, int(round(seconds * cfg.sr)))
    hop = max(1, int(round(hop_seconds * cfg.sr))) if hop_seconds else segment
    starts, scores = [], []
    for start, y in iter_segments(read_blocks(path, block_seconds=segment / cfg.sr, sr=cfg.sr, channel=det.channel),
                                  segment=segment, hop=hop):
        try:
            check_signal(y, sr=cfg.sr, min_samples=cfg.min_samples, source=f"{path}: at {start / cfg.sr:.1f} s")
        except SilentAudioError:
            s = math.nan
        else:
            s = det.score_signal(y)
        starts.append(start / cfg.sr)
        scores.append(s)
    return np.array(starts, np.float64), np.array(scores, np.float64), segment / cfg.sr


def evidence_for_file(det, path: str | os.PathLike, *, offset: float = 0.0, seconds: float | None = None,
                      score: float | None = None, threshold: float | None = None, whole_file: bool = True,
                      context: float | None = None) -> Evidence:
    """Evidence for the part of a file from ``offset`` (default: the model's clip length).

    In a longer file the excerpt reaches ``context`` seconds (default: ``seconds``) to each side,
    so that the picture shows the sound before and after the flagged part. With ``whole_file``
    the score over the whole file is added (one more pass over the file, as ``scan`` reads it).
    ``threshold``: the level the file was judged by (a scan row's), default the model's.
    """
    from machine_monitor.audio.io import audio_info, read_excerpt

    cfg = det.feature_config
    seconds = seconds or max(getattr(det, "clip_seconds_", None) or 10.0, cfg.min_samples / cfg.sr)
    total = audio_info(path).seconds
    context = seconds if context is None else max(0.0, float(context))
    start = max(0.0, offset - context)
    end = min(total, offset + seconds + context) if total > 0 else offset + seconds
    y = read_excerpt(path, offset=start, seconds=max(end - start, seconds), sr=cfg.sr, channel=det.channel)
    timeline = None
    if whole_file and total > seconds * 1.25:
        timeline = file_timeline(det, path)
    return collect_evidence(det, y, offset=start, name=str(path), score=score, threshold=threshold,
                            timeline=timeline)


# -- the picture -------------------------------------------------------------------------
def _hz_axis(ax, band_hz: np.ndarray, *, label: bool = True) -> None:
    """Mel bands are drawn at their index (equal height each); the ticks say Hz."""
    idx = np.arange(band_hz.size)
    ticks, pos = [], []
    for f in (f for f in HZ_TICKS[::-1] if band_hz[0] <= f <= band_hz[-1]):
        y = float(np.interp(f, band_hz, idx))
        if not pos or pos[-1] - y >= band_hz.size / 14:  # labels at least 1/14 of the axis apart
            ticks.append(f)
            pos.append(y)
    ax.set_yticks(pos, [_hz(f).replace(".0 kHz", " kHz") for f in ticks])
    ax.set_ylim(-0.5, band_hz.size - 0.5)
    if label:
        ax.set_ylabel("frequency")


def _mark_span(ax, span, *, fill: bool) -> None:
    if span is None:
        return
    if fill:
        ax.axvspan(span[0], span[1], color=SPAN_COLOR, alpha=0.22, lw=0)
    else:
        for x in span:
            ax.axvline(x, color=SPAN_COLOR, lw=1.6, ls="--")


def _score_axis(ax, times, scores, width, threshold, *, span=None, label="window score", step=False) -> None:
    finite = np.isfinite(scores)
    mid = times + width / 2
    ax.plot(mid[finite], scores[finite], color=SCORE_COLOR, lw=1.1, marker="o" if scores.size <= 60 else None,
            ms=3, drawstyle="steps-mid" if step else "default", label=label)
    bad = finite & (scores > threshold)
    if bad.any():
        ax.plot(mid[bad], scores[bad], "o", color=THRESHOLD_COLOR, ms=3.5, label="above threshold")
    ax.axhline(threshold, color=THRESHOLD_COLOR, ls="--", lw=1.4, label=f"threshold {threshold:.3g}")
    _mark_span(ax, span, fill=True)
    hi = np.nanmax(np.append(scores[finite], threshold)) if finite.any() else threshold
    lo = np.nanmin(np.append(scores[finite], threshold)) if finite.any() else 0.0
    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
    ax.set_ylim(min(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    # Above the panel, right of its title: inside, it would hide the scores that matter.
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False, borderaxespad=0.1)


def _note(ax, text: str, width: int = 24) -> None:
    """An empty side panel that says why it is empty."""
    ax.axis("off")
    ax.text(0.02, 0.5, _wrap(text, width), fontsize=7.5, va="center", color="#555", transform=ax.transAxes)


def evidence_figure(ev: Evidence, *, width: float = 10.0):
    """The evidence as one matplotlib Figure (Agg canvas attached).

    Rows: the score over the whole file (long files only), the spectrogram, the difference
    from normal (when the model has a reference), the window scores. Beside them: the
    flagged spectrum against normal, the bands and the view that drove the score.
    Fixed margins, no layout engine: one picture costs a fraction of a second.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_tl = ev.timeline is not None and ev.timeline[1].size > 1
    has_dev = ev.deviation is not None
    rows = (["timeline"] if has_tl else []) + ["spec"] + (["dev"] if has_dev else []) + ["score"]
    heights = {"timeline": 1.2, "spec": 2.3, "dev": 1.9, "score": 1.4}
    gap = 0.62  # inches between rows (titles and tick labels)
    height = 0.45 + 0.55 + sum(heights[r] for r in rows) + gap * (len(rows) - 1)
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # Columns: the panels, their colour scales, room for the scales' labels, the side panels.
    gs = fig.add_gridspec(len(rows), 4, width_ratios=(6.0, 0.12, 0.62, 1.75), height_ratios=[heights[r] for r in rows],
                          left=0.85 / width, right=1 - 0.15 / width, top=1 - 0.5 / height, bottom=0.5 / height,
                          hspace=gap / (sum(heights[r] for r in rows) / len(rows)), wspace=0.04)
    axes = {r: fig.add_subplot(gs[i, 0]) for i, r in enumerate(rows)}
    title = short_name(ev.name, max_chars=70) if ev.name else "excerpt"
    if ev.score is not None:
        title += f": score {ev.score:.3g} (threshold {ev.threshold:.3g})"
    fig.suptitle(title, fontsize=10, x=0.01, y=1 - 0.08 / height, ha="left", va="top")
    t0, t1 = ev.offset, ev.offset + ev.duration
    n_mels = ev.band_hz.size

    if has_tl:
        ax = axes["timeline"]
        starts, scores, seg = ev.timeline
        _score_axis(ax, starts, scores, seg, ev.threshold, label="segment score", step=True)
        ax.axvspan(t0, t1, color="#2e86c1", alpha=0.2, lw=0)
        ax.annotate("excerpt", xy=((t0 + t1) / 2, 0.03), xycoords=("data", "axes fraction"), ha="center",
                    va="bottom", fontsize=7, color="#2e86c1")
        ax.set_xlim(starts[0], starts[-1] + seg)
        ax.set_title("Score over the whole file (s)", fontsize=9, loc="left")
        _note(fig.add_subplot(gs[0, 3]), "Blue: the excerpt drawn below, the file's worst part.")

    # Spectrogram with its dB scale, and the flagged spectrum against normal beside it.
    ax = axes["spec"]
    extent = (t0, t0 + ev.spec.shape[0] * ev.frame_seconds, -0.5, n_mels - 0.5)
    if ev.spec.size:
        vmax = float(np.percentile(ev.spec, 99.5))
        im = ax.imshow(ev.spec.T, origin="lower", aspect="auto", extent=extent, cmap="magma",
                       vmin=vmax - 80.0, vmax=vmax, interpolation="nearest")
        cb = fig.colorbar(im, cax=fig.add_subplot(gs[rows.index("spec"), 1]))
        cb.set_label("level (dB)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    _hz_axis(ax, ev.band_hz)
    _mark_span(ax, ev.span, fill=False)
    ax.set_title("Log-mel spectrogram" + (" (dashed: anomalous span)" if ev.span else ""), fontsize=9, loc="left")
    if ev.reference is not None and ev.span_spectrum is not None:
        side = fig.add_subplot(gs[rows.index("spec"), 3], sharey=ax)
        idx = np.arange(n_mels)
        what = "peak" if ev.reference_kind == "peak" else "mean"
        side.plot(ev.reference, idx, color=NORMAL_COLOR, lw=1.4, label=f"normal ({what})")
        side.plot(ev.span_spectrum, idx, color=THRESHOLD_COLOR, lw=1.1, label=ev.span_spectrum_label)
        side.fill_betweenx(idx, ev.reference, ev.span_spectrum, where=ev.span_spectrum > ev.reference,
                           color=THRESHOLD_COLOR, alpha=0.25, lw=0)
        side.fill_betweenx(idx, ev.reference, ev.span_spectrum, where=ev.span_spectrum < ev.reference,
                           color="#2e86c1", alpha=0.25, lw=0)
        side.set_xlabel("level (dB)", fontsize=8)
        side.legend(fontsize=6.5, loc="upper right", framealpha=0.85)
        side.grid(alpha=0.3)
        side.tick_params(labelleft=False, labelsize=7)
        side.set_title("Flagged vs normal", fontsize=9, loc="left")
    else:
        _note(fig.add_subplot(gs[rows.index("spec"), 3]), ev.reference_note or "No normal reference.")

    if has_dev:
        ax = axes["dev"]
        dt = ev.deviation_times
        extent = (dt[0], dt[-1] + ev.deviation_seconds, -0.5, n_mels - 0.5)
        if dt.size == 1 and ev.reference_kind == "peak":  # one window: it speaks for all of its audio
            extent = (t0, t1, -0.5, n_mels - 0.5)
        im = ax.imshow(ev.deviation.T, origin="lower", aspect="auto", extent=extent, cmap="RdBu_r",
                       vmin=-DIFF_RANGE_DB, vmax=DIFF_RANGE_DB, interpolation="nearest")
        cb = fig.colorbar(im, cax=fig.add_subplot(gs[rows.index("dev"), 1]))
        cb.set_label("dB vs normal", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        _hz_axis(ax, ev.band_hz)
        _mark_span(ax, ev.span, fill=False)
        ax.set_title("Difference from normal: red louder, blue quieter" +
                     (" (each window's per-band peak)" if ev.reference_kind == "peak" else ""),
                     fontsize=9, loc="left")
        bands = (ev.explanation or {}).get("bands")
        if bands is not None:
            side = fig.add_subplot(gs[rows.index("dev"), 3], sharey=ax)
            side.barh(np.arange(n_mels), bands, height=1.0, color=SPAN_COLOR)
            side.set_xlabel("share of the score", fontsize=8)
            side.set_title("Bands that drove it", fontsize=9, loc="left")
            side.grid(alpha=0.3, axis="x")
            side.tick_params(labelleft=False, labelsize=7)
        else:
            _note(fig.add_subplot(gs[rows.index("dev"), 3]),
                  "This detector does not say which bands drove its score.")

    ax = axes["score"]
    _score_axis(ax, ev.times, ev.scores, ev.window_seconds, ev.threshold, span=ev.span)
    ax.set_xlabel(ev.time_label, fontsize=9)
    ax.set_title("Window score over time", fontsize=9, loc="left")
    for r in ("spec", "dev", "score"):
        if r in axes:
            axes[r].set_xlim(t0, t1)
            if r != "score":
                axes[r].tick_params(labelbottom=False)
    members = (ev.explanation or {}).get("members") or {}
    if members:
        side = fig.add_subplot(gs[rows.index("score"), 3])
        names = list(members)[::-1]
        vals = [members[n] for n in names]
        side.barh(names, vals, color=[THRESHOLD_COLOR if v == max(vals) else NORMAL_COLOR for v in vals])
        side.axvline(0, color="#333", lw=0.8)
        side.set_xlabel("standardised score", fontsize=8)
        side.set_title("Which view", fontsize=9, loc="left")
        side.tick_params(labelsize=7)
        side.grid(alpha=0.3, axis="x")
    else:
        _note(fig.add_subplot(gs[rows.index("score"), 3]),
              "One view: this detector does not split its score by member.")
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def render_evidence(ev: Evidence, *, fmt: str = "png", dpi: int = 90, width: float = 10.0) -> bytes:
    """The evidence picture as image bytes (``png`` or ``jpeg``)."""
    import io

    fig = evidence_figure(ev, width=width)
    buf = io.BytesIO()
    extra = {"pil_kwargs": {"quality": 85}} if fmt == "jpeg" else {}
    fig.savefig(buf, format=fmt, dpi=dpi, **extra)
    return buf.getvalue()


def evidence_data_uri(ev: Evidence, *, fmt: str = "jpeg", dpi: int = 90) -> str:
    """The picture embedded in a ``data:`` URI (JPEG by default: spectrogram noise makes PNGs large)."""
    return f"data:image/{fmt};base64," + base64.b64encode(render_evidence(ev, fmt=fmt, dpi=dpi)).decode("ascii")
