"""Pure feature functions: signal -> frames -> stacked windows.

Every feature here is a matrix of *frames* ``(n_frames, n_dims)``; the autoencoder
sees *windows* of ``context`` consecutive frames flattened to ``context * n_dims``.
Keeping frames (not windows) in memory makes training sets ``context`` times smaller:
windows are gathered per batch (see :func:`window_index`).

* ``logmel``: DCASE front-end, power mel spectrogram with an **absolute** log
  reference (``10 * log10(mel + eps)``) so that a louder machine looks different.
* ``raw``: the waveform itself in blocks of ``hop_length`` samples; a window of
  ``context`` blocks is a raw frame of ``context * hop_length`` samples.
* ``peak``: the log-mel's per-band **maximum over ``context`` frames** (311 frames =
  10 s by default), one 128-dim vector per span, spans ``stride`` frames apart. Short
  events (a valve click, a bearing knock) set a band's peak whatever else the span holds,
  where a mean over hundreds of frames would wash them out, and a click that is *weaker*
  than normal shows as a lower peak, which per-frame reconstruction cannot see.
  The span shrinks at fit time to the shortest training clip (see :meth:`FeatureConfig.fitted_to`).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from machine_monitor.errors import ConfigError

LOG_EPS = 1e-10
KINDS = ("peak", "logmel", "raw")
#: Default top of the analysed band, Hz (see ``FeatureConfig.fmax``).
DEFAULT_FMAX = 7400.0


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Every parameter that turns a signal into autoencoder windows (saved with a model)."""

    kind: str = "logmel"
    sr: int = 16_000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    context: int = 5
    stride: int = 1
    # Top of the mel filterbank (None = sr / 2). The edge of the 16 kHz resampler's flat passband
    # (soxr HQ from 44.1/48 kHz: -0.02 dB at 7.4 kHz, -0.4 dB at 7.5, -2.9 dB at 7.6): a recording
    # resampled to 16 kHz gives the same log-mel as a 16 kHz original of the same sound, so the
    # format alone never reads as a fault.
    fmax: float | None = DEFAULT_FMAX

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"features must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for name in ("sr", "n_fft", "hop_length", "n_mels", "context", "stride"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"feature parameter {name} must be >= 1, not {getattr(self, name)!r}")

    @classmethod
    def for_kind(cls, kind: str, **overrides) -> FeatureConfig:
        """Defaults per kind: logmel 128 mels x 5 frames (640 dims: the DCASE front-end); raw
        1024-sample frames; peak (every view of the default detector): 128 ms frames, spans of
        309 frames (10 s) 16 frames (0.5 s) apart.

        ``peak`` frames are 2048 points: a Hann window's main lobe is 4 FFT bins, 62 Hz at 1024
        points, wider than the 128 mels' ~20 Hz bands below 500 Hz where machines keep their
        rotation orders, blade pass and mains hum; at 2048 it is 31 Hz, so those bands see a
        harmonic move (benchmarks/README.md: DCASE 2023 valve AUC 0.968 -> 0.993, pAUC
        0.864 -> 0.965; no SYNTHETIC set lost more than 0.01 but valve drift, 0.86 -> 0.67).
        """
        base = {"raw": {"hop_length": 256, "context": 4},
                "peak": {"n_fft": 2048, "context": 309, "stride": 16}}.get(kind, {})
        return cls(kind=kind, **{**base, **overrides})

    def fitted_to(self, n_frames: int) -> FeatureConfig:
        """This config with a ``peak`` span no longer than ``n_frames`` (the shortest training clip)."""
        if self.kind != "peak" or n_frames >= self.context:
            return self
        return dataclasses.replace(self, context=max(1, int(n_frames)))

    @property
    def frame_dims(self) -> int:
        """Dimensions of one standardised unit the network's input is built from."""
        return self.hop_length if self.kind == "raw" else self.n_mels

    @property
    def stack(self) -> int:
        """How many consecutive units are concatenated into one network input."""
        return 1 if self.kind == "peak" else self.context

    @property
    def window_dims(self) -> int:
        return self.frame_dims * self.stack

    def window_starts(self, n_samples: int) -> np.ndarray:
        """Start (in samples) of each network input window of a signal of ``n_samples``."""
        n = self.n_frames(n_samples)
        stride = self.stride if self.kind == "peak" else 1
        span = self.context if self.kind == "peak" else self.stack
        return span_starts(n, context=span, stride=stride) * self.hop_length

    def units(self, f: np.ndarray) -> np.ndarray:
        """What the network's inputs are stacked from: frames, or pooled peak spectra."""
        return peak_windows(f, context=self.context, stride=self.stride) if self.kind == "peak" else f

    @property
    def min_samples(self) -> int:
        """Shortest signal that yields one window."""
        first = self.hop_length if self.kind == "raw" else self.n_fft
        return first + (self.context - 1) * self.hop_length

    def n_frames(self, n_samples: int) -> int:
        first = self.hop_length if self.kind == "raw" else self.n_fft
        return 0 if n_samples < first else 1 + (n_samples - first) // self.hop_length

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmax: float | None = None) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmax=fmax)`` (Slaney scale and
    norm, float32): the same weights, computed as librosa 0.10-0.11 computes them, without
    importing librosa (0.9 s for every process that computes a log-mel: each scan worker)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = (min_log_hz - 0.0) / f_sp
    logstep = np.log(6.4) / 27.0

    def hz_to_mel(f: float):
        f = np.asanyarray(f)
        return min_log_mel + np.log(f / min_log_hz) / logstep if f >= min_log_hz else (f - 0.0) / f_sp

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(float(sr) / 2 if fmax is None else fmax), n_mels + 2)
    mel_f = 0.0 + f_sp * mels
    log_t = mels >= min_log_mel
    mel_f[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, np.fft.rfftfreq(n=n_fft, d=1.0 / sr))
    weights = np.zeros((int(n_mels), int(1 + n_fft // 2)), dtype=np.float32)
    for i in range(int(n_mels)):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]  # Slaney norm: equal area
    return weights


@lru_cache(maxsize=8)
def _mel_sparse(sr: int, n_fft: int, n_mels: int, fmax: float | None = None):
    """The mel basis as a sparse matrix over the FFT bins below its top nonzero bin: ``(csr, n_bins)``.

    A filter covers a few bins and a bin lies in at most two filters (934 of 65,664 weights
    at the defaults), so the product costs a fiftieth of the dense one.
    """
    import scipy.sparse

    basis = _mel_basis(sr, n_fft, n_mels, fmax)
    used = np.flatnonzero(basis.any(axis=0))
    n_bins = int(used[-1]) + 1 if used.size else 1
    return scipy.sparse.csr_matrix(basis[:, :n_bins]), n_bins


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic Hann, as librosa/scipy use for STFT analysis.
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


@lru_cache(maxsize=8)
def _hann_tensor(n_fft: int):
    import torch

    return torch.from_numpy(_hann(n_fft))


def logmel_frames(
    y: np.ndarray, *, sr: int = 16_000, n_fft: int = 1024, hop_length: int = 512, n_mels: int = 128,
    fmax: float | None = None,
) -> np.ndarray:
    """Log-mel power spectrogram with an absolute reference.

    Frames are not centred (no padding): frame ``t`` covers samples
    ``[t * hop_length, t * hop_length + n_fft)``, so a window's features depend on
    that window's audio only, the same in a file and in a live stream.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono signal at ``sr``.

    Returns
    -------
    np.ndarray [shape=(n_frames, n_mels), dtype=float32]
        ``10 * log10(mel_power + 1e-10)``; ``n_frames = 1 + (n - n_fft) // hop_length``.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.size < n_fft:
        return np.zeros((0, n_mels), dtype=np.float32)
    import torch  # loaded with any detector; its FFT (MKL) is 2.5x pocketfft's on 1024-point frames

    n_frames = 1 + (y.size - n_fft) // hop_length
    basis, n_bins = _mel_sparse(sr, n_fft, n_mels, fmax)
    y = np.ascontiguousarray(y)
    t = torch.from_numpy(y if y.flags.writeable else y.copy())
    spec = torch.fft.rfft(t.unfold(0, n_fft, hop_length) * _hann_tensor(n_fft), dim=1)  # (frames, bins) complex64
    spec = spec[:, :n_bins].T.numpy()
    # Power as (bins, frames) for the sparse product: float32 re**2 + im**2.
    power = np.square(spec.real, order="C")
    power += np.square(spec.imag, order="C")
    mel = basis @ power  # (n_mels, n_frames), float32
    out = np.empty((n_frames, n_mels), dtype=np.float32)
    np.add(mel.T, np.float32(LOG_EPS), out=out)
    np.log10(out, out=out)
    out *= np.float32(10.0)
    return out


def raw_frames(y: np.ndarray, *, hop_length: int = 256) -> np.ndarray:
    """Raw waveform cut into consecutive, non-overlapping blocks.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]

    Returns
    -------
    np.ndarray [shape=(n // hop_length, hop_length), dtype=float32]
        A trailing partial block is dropped.
    """
    y = np.asarray(y, dtype=np.float32)
    n = y.size // hop_length
    return y[: n * hop_length].reshape(n, hop_length).copy()


def frames(y: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Frames of ``y`` for ``config``: ``(n_frames, n_dims)`` float32 (log-mel for ``peak`` too)."""
    if config.kind != "raw":
        return logmel_frames(y, sr=config.sr, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels,
                             fmax=config.fmax)
    return raw_frames(y, hop_length=config.hop_length)


def span_starts(n_frames: int, *, context: int, stride: int = 1) -> np.ndarray:
    """First frame of each span of ``context`` frames, ``stride`` apart, the last ending at the end.

    Returns
    -------
    np.ndarray [shape=(n_spans,), dtype=int64]
    """
    n = n_frames - context + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, n, stride, dtype=np.int64)
    return starts if starts[-1] == n - 1 else np.append(starts, n - 1)


def peak_windows(f: np.ndarray, *, context: int = 311, stride: int = 16) -> np.ndarray:
    """Per-band maximum over spans of ``context`` frames, ``stride`` frames apart.

    The last span always ends at the last frame, so the end of a signal is never skipped.

    Parameters
    ----------
    f : np.ndarray [shape=(n_frames, d)]

    Returns
    -------
    np.ndarray [shape=(n_spans, d), dtype=float32]
        ``n_spans = ceil((n_frames - context) / stride) + 1``; zero rows if ``n_frames < context``.
    """
    starts = span_starts(f.shape[0], context=context, stride=stride)
    if starts.size == 0:
        return np.zeros((0, f.shape[1]), dtype=np.float32)
    if context == 1:
        return np.ascontiguousarray(f[starts], dtype=np.float32)
    if starts.size <= 2:  # a clip or a live window: one or two spans, cheaper directly (the same maxima)
        return np.stack([np.max(f[s : s + context], axis=0) for s in starts]).astype(np.float32)
    # Running max via a doubling sparse table: O(n log context), no (n, context, d) view copied.
    m, span = f.astype(np.float32, copy=True), 1
    while span * 2 <= context:
        m[: m.shape[0] - span] = np.maximum(m[: m.shape[0] - span], m[span:])
        span *= 2
    # m[t] = max f[t : t + span]; combine two overlapping spans to cover exactly `context`.
    return np.maximum(m[starts], m[starts + context - span])


def stack_frames(f: np.ndarray, *, context: int = 5) -> np.ndarray:
    """Stack ``context`` consecutive frames into one vector per window.

    Parameters
    ----------
    f : np.ndarray [shape=(n_frames, d)]

    Returns
    -------
    np.ndarray [shape=(n_frames - context + 1, context * d), dtype=float32]
        Row ``t`` is ``f[t], f[t+1], ..., f[t+context-1]`` concatenated.
    """
    n = f.shape[0] - context + 1
    if n <= 0:
        return np.zeros((0, context * f.shape[1]), dtype=np.float32)
    if context == 1:
        return np.ascontiguousarray(f, dtype=np.float32)
    return np.ascontiguousarray(sliding_window_view(f, (context, f.shape[1]))[:, 0].reshape(n, -1))


def window_index(lengths: np.ndarray, *, context: int) -> np.ndarray:
    """Start rows of every valid window in frames of several clips concatenated.

    Parameters
    ----------
    lengths : np.ndarray [shape=(n_clips,)]
        Number of frames of each clip, in concatenation order.

    Returns
    -------
    np.ndarray [shape=(n_windows,), dtype=int64]
        Row ``s`` such that ``frames[s : s + context]`` lies inside one clip.
    """
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    per_clip = [np.arange(s, s + max(0, n - context + 1), dtype=np.int64) for s, n in zip(starts, lengths)]
    return np.concatenate(per_clip) if per_clip else np.zeros(0, dtype=np.int64)


def gather_windows(f: np.ndarray, starts: np.ndarray, *, context: int) -> np.ndarray:
    """Windows beginning at ``starts`` in a frame matrix ``f``: ``(len(starts), context * d)``."""
    return f[starts[:, None] + np.arange(context)].reshape(len(starts), -1)


# ---------------------------------------------------------------- pooled views of one log-mel
# Each view below turns the same log-mel frames ``(n_frames, n_mels)`` into one vector per
# span, spans placed exactly as :func:`peak_windows` places them (:func:`span_starts`), so
# every view of a signal has the same number of rows and row ``i`` covers the same audio.


def _span_sums(f: np.ndarray, starts: np.ndarray, context: int, power: int) -> np.ndarray:
    """Sum of ``f ** power`` over each span, float64, shape ``(len(starts), d)``."""
    c = np.zeros((f.shape[0] + 1, f.shape[1]), dtype=np.float64)
    np.cumsum(np.asarray(f, dtype=np.float64) ** power, axis=0, out=c[1:])
    return c[starts + context] - c[starts]


def mean_windows(f: np.ndarray, *, context: int = 311, stride: int = 16) -> np.ndarray:
    """Per-band mean over spans of ``context`` frames, ``stride`` frames apart.

    The steady spectrum of a span: a band whose level shifted by a few dB shows here at
    full size, where a span's maximum is set by its loudest moment.

    Parameters
    ----------
    f : np.ndarray [shape=(n_frames, d)]
    context, stride : int >= 1
        Span length and hop in frames (as :func:`peak_windows`).

    Returns
    -------
    np.ndarray [shape=(n_spans, d), dtype=float32]
        Zero rows if ``n_frames < context``.

    Examples
    --------
    >>> f = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> mean_windows(f, context=3, stride=3)
    array([[2., 3.],
           [8., 9.]], dtype=float32)
    """
    starts = span_starts(f.shape[0], context=context, stride=stride)
    if starts.size == 0:
        return np.zeros((0, f.shape[1]), dtype=np.float32)
    if starts.size <= 2:
        return np.stack([np.mean(f[s : s + context], axis=0, dtype=np.float64) for s in starts]).astype(np.float32)
    return (_span_sums(f, starts, context, 1) / context).astype(np.float32)


def std_windows(f: np.ndarray, *, context: int = 311, stride: int = 16) -> np.ndarray:
    """Per-band standard deviation over spans of ``context`` frames: temporal variability.

    A band that starts to fluctuate (amplitude modulation, intermittent knocks, a rubbing
    squeal that comes and goes) raises its spread while its mean and peak may barely move;
    a band that becomes steadier (clicks gone) lowers it.

    Parameters
    ----------
    f : np.ndarray [shape=(n_frames, d)]
        Log-mel frames in dB.
    context, stride : int >= 1
        Span length and hop in frames (as :func:`peak_windows`).

    Returns
    -------
    np.ndarray [shape=(n_spans, d), dtype=float32]
        Population standard deviation (``ddof=0``) in the units of ``f``; zero rows if
        ``n_frames < context``.

    Examples
    --------
    >>> f = np.array([[0.0], [2.0], [0.0], [2.0]], dtype=np.float32)
    >>> std_windows(f, context=4)
    array([[1.]], dtype=float32)
    """
    starts = span_starts(f.shape[0], context=context, stride=stride)
    if starts.size == 0:
        return np.zeros((0, f.shape[1]), dtype=np.float32)
    if starts.size <= 2:  # a clip or a live window: one or two spans, cheaper directly (two-pass, float32)
        return np.stack([np.std(f[s : s + context], axis=0) for s in starts]).astype(np.float32)
    # Centre on the signal's mean first: sums of squares of dB values near -50 lose digits otherwise.
    g = np.asarray(f, dtype=np.float64) - np.mean(f, axis=0, dtype=np.float64)
    m = _span_sums(g, starts, context, 1) / context
    var = _span_sums(g, starts, context, 2) / context - m**2
    return np.sqrt(np.maximum(var, 0.0)).astype(np.float32)


def rank_weights(context: int, *, decay: float) -> np.ndarray:
    """TWFR weights ``decay ** i / sum`` for the ``i``-th largest of ``context`` values.

    Parameters
    ----------
    context : int >= 1
    decay : float in [0, 1]
        ``0``: all weight on the largest value (max pooling); ``1``: equal weights
        (mean pooling); in between, the loudest moments count more.

    Returns
    -------
    np.ndarray [shape=(context,), dtype=float64]
        Non-negative, summing to 1, non-increasing.
    """
    if not 0.0 <= decay <= 1.0:
        raise ConfigError(f"rank-pooling decay must be in [0, 1], not {decay!r}")
    w = np.zeros(context)
    w[0] = 1.0
    if decay > 0.0:
        w = decay ** np.arange(context, dtype=np.float64)
    return w / w.sum()


def rank_pooled_windows(f: np.ndarray, *, context: int = 311, stride: int = 16, decay: float = 0.99) -> np.ndarray:
    """Weighted-rank pooling (TWFR) of each band over spans of ``context`` frames.

    Each band's values in a span are sorted from loudest to quietest and averaged with the
    weights of :func:`rank_weights`: between the span's maximum (``decay=0``) and its mean
    (``decay=1``), as TWFR-GMM (DCASE 2022/2023) pools a log-mel over time.

    Parameters
    ----------
    f : np.ndarray [shape=(n_frames, d)]
    context, stride : int >= 1
        Span length and hop in frames (as :func:`peak_windows`).
    decay : float in [0, 1]
        Rank weight ratio; see :func:`rank_weights`.

    Returns
    -------
    np.ndarray [shape=(n_spans, d), dtype=float32]
        Zero rows if ``n_frames < context``.

    Examples
    --------
    >>> f = np.array([[1.0], [3.0], [2.0]], dtype=np.float32)
    >>> rank_pooled_windows(f, context=3, decay=0.5).round(4)  # (3 + 0.5 * 2 + 0.25 * 1) / 1.75
    array([[2.4286]], dtype=float32)
    """
    rank_weights(1, decay=decay)  # refuses a decay outside [0, 1]
    return soft_peak_windows(f, context=context, stride=stride, decay=decay, top=context)  # every rank


def pool_bands(f: np.ndarray, *, factor: int = 2) -> np.ndarray:
    """Mean of each group of ``factor`` adjacent bands: a coarser spectrum, fewer dimensions.

    Parameters
    ----------
    f : np.ndarray [shape=(n_frames, d)]
    factor : int >= 1
        Bands per group; a trailing partial group is averaged over the bands it has.

    Returns
    -------
    np.ndarray [shape=(n_frames, ceil(d / factor)), dtype=float32]

    Examples
    --------
    >>> pool_bands(np.array([[0.0, 2.0, 4.0]], dtype=np.float32), factor=2)
    array([[1., 4.]], dtype=float32)
    """
    if factor < 1:
        raise ConfigError(f"band pooling factor must be >= 1, not {factor!r}")
    f = np.asarray(f, dtype=np.float32)
    if factor == 1:
        return f
    d = f.shape[1]
    if d % factor == 0:
        out = f[:, 0::factor].copy()
        for i in range(1, factor):
            out += f[:, i::factor]
        return out / np.float32(factor)
    groups = np.arange(d) // factor
    counts = np.bincount(groups).astype(np.float32)
    out = np.zeros((f.shape[0], counts.size), dtype=np.float32)
    np.add.at(out.T, groups, f.T)
    return out / counts


#: The ``peak`` member's soft maximum: rank weight ratio, and how many of the loudest frames it reads.
SOFT_PEAK_DECAY = 0.3
SOFT_PEAK_TOP = 8


def soft_peak_windows(f: np.ndarray, *, context: int = 311, stride: int = 16, decay: float = SOFT_PEAK_DECAY,
                      top: int = SOFT_PEAK_TOP, chunk: int = 64) -> np.ndarray:
    """Per-band soft maximum over spans: the ``top`` loudest frames of a band, weighted ``decay ** rank``.

    The maximum reads one frame, so one frame's noise moves it as much as a click does; here
    the loudest frame weighs about 70 % (``decay=0.3``), the next ones the rest: several
    weaker clicks in a span show more clearly, a single knock still dominates. Spans are
    placed as :func:`peak_windows` places them.

    Parameters
    ----------
    f : np.ndarray [shape=(n_frames, d)]
    context, stride : int >= 1
        Span length and hop in frames.
    decay : float in [0, 1)
        Weight ratio between consecutive ranks (``0``: the maximum).
    top : int >= 1
        Loudest frames read per band (``decay ** top`` is negligible beyond).
    chunk : int
        Spans sorted at a time (bounded memory for long signals).

    Returns
    -------
    np.ndarray [shape=(n_spans, d), dtype=float32]
        Zero rows if ``n_frames < context``.

    Examples
    --------
    >>> f = np.array([[1.0], [3.0], [2.0]], dtype=np.float32)
    >>> soft_peak_windows(f, context=3, decay=0.5, top=2).round(4)  # (3 + 0.5 * 2) / 1.5
    array([[2.6667]], dtype=float32)
    """
    k = min(int(top), int(context))
    if k <= 1 or decay <= 0.0:
        return peak_windows(f, context=context, stride=stride)
    starts = span_starts(f.shape[0], context=context, stride=stride)
    if starts.size == 0:
        return np.zeros((0, f.shape[1]), dtype=np.float32)
    w = (float(decay) ** np.arange(k)).astype(np.float32)
    w /= w.sum()
    view = sliding_window_view(np.asarray(f, dtype=np.float32), context, axis=0)  # (n, d, context), no copy
    out = np.empty((starts.size, f.shape[1]), dtype=np.float32)
    for a in range(0, starts.size, chunk):
        neg = view[starts[a:a + chunk]]  # the chunk's spans, copied once and negated in place
        np.negative(neg, out=neg)
        loudest = np.partition(neg, k - 1, axis=2)[..., :k]  # -(k largest)
        loudest.sort(axis=2)  # loudest first
        out[a:a + chunk] = -(loudest @ w)
    return out
