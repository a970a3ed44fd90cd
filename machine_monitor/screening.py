"""Bad-clip screening before training: leave out clips that do not belong.

One constant (DC) clip among 40 good ones raised a detector's threshold 10,000-fold; one
clip at half level hid every fault. Training assumes every clip is normal sound of *this*
machine through *this* recording chain, so clips that plainly are not are left out, named
in a warning and recorded in ``model.json``, before anything is fitted to them.

What a clip is compared on (robust statistics across the training clips: median and
MAD, so the odd clips cannot hide by moving the reference):

* **constant / DC**: almost all of its energy is a constant offset (a dead microphone,
  a DC-coupled fault), or it has no AC signal at all;
* **level**: its RMS level (dB) against the other clips';
* **spectrum**: its mean power in 32 bands (dB) against the other clips', band by band;
* **chain**: its file's sample rate, channel count or coding (lossy OGG/MP3 against
  lossless) differs from most clips' (a clip from another microphone or recorder).

A clip is left out only when it is far outside the spread of the others (and by an
absolute minimum, so near-identical synthetic clips do not make every small difference
look odd). With fewer than :data:`MIN_CLIPS_FOR_STATISTICS` clips only the absolute
check (constant / DC) runs. A clip that has close neighbours (a few other clips like it: a second
operating mode, another domain) is a mode of normal sound and is kept. When screening
would leave out half the clips or more,
there is no majority to call "normal": training is refused rather than guessed.

Statistics are accumulated block by block (:class:`ClipStats`), so a three-hour file
costs one block of memory.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np

from machine_monitor.audio.io import LOSSY_FORMATS
from machine_monitor.errors import AudioReadError, ConfigError, SilentAudioError

log = logging.getLogger(__name__)

SR = 16_000
N_FFT = 1024
N_BANDS = 32
#: Below this many clips, spreads are not estimated (only the constant/DC check runs).
MIN_CLIPS_FOR_STATISTICS = 5
#: A clip is odd when its deviation exceeds this many robust standard deviations ...
Z_LIMIT = 5.0
#: ... and at least this many dB (level; mean over the spectrum's worst quarter of bands).
MIN_LEVEL_DB = 4.5
MIN_SPECTRUM_DB = 10.0
#: Robust standard deviations never count as smaller than this (dB): identical clips.
SCALE_FLOOR_DB = 0.75
#: Share of a clip's power that may be a constant offset before it counts as DC.
DC_SHARE = 0.99
#: A clip with this share of the clips (at least 1, at most 3) close to it is a mode, not odd.
GROUP_SHARE = 0.05
#: Share of clips that may be left out; at or above it, training is refused.
MAX_LEFT_OUT = 0.5


def _band_edges(n_bins: int, n_bands: int = N_BANDS) -> np.ndarray:
    # Log-spaced from ~60 Hz to Nyquist: resolution where machines hum, coarse above.
    lo = np.log10(4)
    edges = np.unique(np.round(np.logspace(lo, np.log10(n_bins), n_bands + 1)).astype(int))
    edges[0] = 1  # DC bin excluded: it is judged by the DC check
    return edges


@dataclasses.dataclass
class ClipStats:
    """Running statistics of one clip's 16 kHz mono signal, fed block by block."""

    name: str
    chain: dict | None = None
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    frames: int = 0
    psd: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(N_FFT // 2 + 1))
    _carry: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.float32), repr=False)

    def update(self, y: np.ndarray) -> ClipStats:
        """Add the next block of the clip (any length)."""
        y = np.asarray(y, dtype=np.float32)
        finite = y[np.isfinite(y)]
        self.n += finite.size
        self.total += float(finite.sum(dtype=np.float64))
        self.total_sq += float(np.dot(finite.astype(np.float64), finite.astype(np.float64)))
        buf = np.concatenate([self._carry, np.nan_to_num(y)])
        k = buf.size // N_FFT
        if k:
            fr = buf[: k * N_FFT].reshape(k, N_FFT)
            fr = fr - fr.mean(axis=1, keepdims=True)
            spec = np.fft.rfft(fr * np.hanning(N_FFT).astype(np.float32), axis=1)
            self.psd += (spec.real ** 2 + spec.imag ** 2).sum(axis=0, dtype=np.float64)
            self.frames += k
        self._carry = buf[k * N_FFT:].copy()
        return self

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    @property
    def rms(self) -> float:
        return float(np.sqrt(self.total_sq / self.n)) if self.n else 0.0

    @property
    def ac_rms(self) -> float:
        return float(np.sqrt(max(self.total_sq / self.n - self.mean ** 2, 0.0))) if self.n else 0.0

    @property
    def dc_share(self) -> float:
        """Share of the clip's power in its constant offset."""
        return (self.mean ** 2) / (self.total_sq / self.n) if self.n and self.total_sq > 0 else 0.0

    @property
    def level_db(self) -> float:
        return 20.0 * np.log10(self.ac_rms + 1e-12)

    def bands_db(self) -> np.ndarray:
        """Mean power per band, dB ``(N_BANDS,)`` (``-inf``-free)."""
        psd = self.psd / max(self.frames, 1)
        edges = _band_edges(psd.size)
        bands = np.array([psd[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
        return 10.0 * np.log10(bands + 1e-12)


#: Files longer than this are read in blocks (bounded memory); shorter ones whole, as scoring reads them.
#: One training recording (the usual first try: "a few minutes of normal running") is cut into
#: this many consecutive parts, fewer when short: the out-of-fold calibration needs recordings
#: to hold out, and a part of a minute keeps the within-recording excursions the live level needs.
ONE_RECORDING_PARTS = 5
#: ... each part at least this long (two 10 s windows).
MIN_PART_SECONDS = 20.0


def one_recording_parts(seconds: float) -> int:
    """How many consecutive parts one training recording of ``seconds`` is cut into; 0 if too short."""
    n = min(ONE_RECORDING_PARTS, int(seconds // MIN_PART_SECONDS))
    return n if n >= 2 else 0


LONG_FILE_SECONDS = 60.0
#: Feature frames are computed on blocks of this many seconds (the STFT of an hour at once is ~1 GB).
FEATURE_BLOCK_SECONDS = 10.0


def read_training_clip(clip, config, *, channel: int | None = None, name: str | None = None):
    """One training clip's feature frames and :class:`ClipStats`, in bounded memory.

    A long file is streamed (:func:`~machine_monitor.audio.io.read_blocks`, as scan reads
    it); a short file or an array is read whole. Either way frames are computed block by
    block with the STFT's overlap carried over, so they equal ``frames(y, config)`` of the
    whole signal, and memory is the frames plus one block whatever the clip's length.
    The clip is validated as :func:`~machine_monitor.audio.io.check_signal` does.

    Returns
    -------
    frames : np.ndarray [shape=(n_frames, frame_dims), dtype=float32]
    stats : ClipStats
    """
    import os

    from machine_monitor.audio.io import (
        MAX_ABS_SAMPLE,
        SILENCE_PEAK,
        audio_info,
        check_signal,
        load_audio,
        load_clip,
        read_blocks,
    )
    from machine_monitor.features import frames as feature_frames

    sr = config.sr
    block = int(FEATURE_BLOCK_SECONDS * sr)
    expected = 0
    if isinstance(clip, (str, os.PathLike)):
        name = str(clip)
        info = audio_info(clip)
        expected = int(info.seconds * sr)
        stats = ClipStats(name, chain=info.chain())
        if info.seconds > LONG_FILE_SECONDS:
            blocks = read_blocks(clip, block_seconds=FEATURE_BLOCK_SECONDS, sr=sr, channel=channel)
        else:
            y = load_audio(clip, sr=sr, channel=channel, min_samples=config.min_samples)
            blocks = (y[i:i + block] for i in range(0, y.size, block))
    else:
        from machine_monitor.audio.io import clip_chain

        name = name or "array"
        y = load_clip(clip, sr=sr, channel=channel, min_samples=config.min_samples, name=name)
        try:
            chain = clip_chain(clip, sr=sr)
        except Exception:  # noqa: BLE001 - the chain is informative only
            chain = None
        stats = ClipStats(name, chain=chain)
        blocks = (y[i:i + block] for i in range(0, y.size, block))
        expected = y.size
    peak = 0.0

    def checked(blocks):
        nonlocal peak
        for b in blocks:
            if not np.isfinite(b).all():
                check_signal(b, sr=sr, source=name)  # raises, naming the non-finite samples
            peak = max(peak, float(np.max(np.abs(b))) if b.size else 0.0)
            if peak > MAX_ABS_SAMPLE:
                check_signal(b, sr=sr, source=name)
            stats.update(b)
            yield b

    f = frames_of_blocks(checked(blocks), config, feature_frames=feature_frames, expected_samples=expected)
    if stats.n == 0:
        raise AudioReadError(f"{name}: contains no audio samples")
    if stats.n < config.min_samples:
        raise AudioReadError(f"{name}: is {stats.n / sr:.3f} s long, shorter than one feature window "
                             f"({config.min_samples / sr:.3f} s)")
    if peak < SILENCE_PEAK:
        raise SilentAudioError(f"{name}: is digitally silent (no sample above -96 dBFS)")
    return f, stats


def frames_of_blocks(blocks, config, *, feature_frames=None, expected_samples: int = 0) -> np.ndarray:
    """``frames(signal, config)`` of a signal given as consecutive blocks, in bounded memory.

    The STFT's overlap is carried from block to block, so the result equals the frames of
    the whole signal; memory is the frames (grown geometrically) plus one block, not the
    signal's STFT (an hour of audio at once is ~1 GB).
    """
    if feature_frames is None:
        from machine_monitor.features import frames as feature_frames
    hop, first = config.hop_length, _first(config)
    out = np.empty((max(config.n_frames(expected_samples), 16), config.frame_dims), dtype=np.float32)
    n, carry = 0, np.zeros(0, dtype=np.float32)
    for b in blocks:
        buf = np.concatenate([carry, b]) if carry.size else b
        k = config.n_frames(buf.size)
        if k:
            part = feature_frames(buf[: (k - 1) * hop + first], config)
            if n + len(part) > len(out):
                grown = np.empty((max(2 * len(out), n + len(part)), config.frame_dims), dtype=np.float32)
                grown[:n] = out[:n]
                out = grown
            out[n:n + len(part)] = part
            n += len(part)
        carry = buf[k * hop:].copy()
    return out[:n]


def frames_in_blocks(y: np.ndarray, config, *, block_seconds: float = FEATURE_BLOCK_SECONDS) -> np.ndarray:
    """``frames(y, config)`` computed block by block (same values; bounded transient memory)."""
    block = max(int(block_seconds * config.sr), config.n_fft)
    if y.size <= block:
        from machine_monitor.features import frames as feature_frames

        return feature_frames(y, config)
    return frames_of_blocks((y[i:i + block] for i in range(0, y.size, block)), config, expected_samples=y.size)


def rows_in_pieces(rows, f: np.ndarray, *, span: int, stride: int, frames_per_piece: int = 16_384):
    """``rows(f)`` of a long frame matrix, piece by piece: yields consecutive parts of it.

    ``rows(g)`` must give one row per window of ``span`` frames starting every ``stride``
    frames from the start of ``g`` (and, optionally, one more anchored to its end), each from
    that window's frames alone: a pooled view of a log-mel (:func:`~machine_monitor.features.
    std_windows`: one call on a 1.5-hour log-mel makes ~0.5 GB of float64 temporaries).
    Each piece but the last holds a whole number of windows and starts on the grid; the last
    runs to the end, where an anchored window lies. The parts joined are ``rows(f)``, up to
    float rounding; a short ``f`` is one piece, ``rows(f)`` itself.
    """
    windows = (f.shape[0] - span) // stride + 1 if f.shape[0] >= span else 0
    per_piece = max(1, frames_per_piece // stride)
    k = 0
    while (k + 1) * per_piece < windows:
        start = k * per_piece * stride
        yield rows(f[start:start + (per_piece - 1) * stride + span])
        k += 1
    yield rows(f[k * per_piece * stride:])


def _first(config) -> int:
    return config.hop_length if config.kind == "raw" else config.n_fft


def clip_stats(clip, *, sr: int = SR, channel: int | None = None, name: str | None = None) -> ClipStats:
    """:class:`ClipStats` of one clip (path, array or ``(array, sr)``), reading a file in blocks."""
    import os

    from machine_monitor.audio.io import audio_info, check_signal, clip_chain, load_clip, read_blocks

    if isinstance(clip, (str, os.PathLike)):
        stats = ClipStats(str(clip), chain=audio_info(clip).chain())
        peak = 0.0
        for b in read_blocks(clip, block_seconds=FEATURE_BLOCK_SECONDS, sr=sr, channel=channel):
            if not np.isfinite(b).all():
                check_signal(b, sr=sr, source=str(clip))  # raises, counting the non-finite samples
            peak = max(peak, float(np.max(np.abs(b))) if b.size else 0.0)
            stats.update(b)
        # The same refusals as loading the clip whole: empty, silent, absurd values.
        if stats.n == 0:
            raise AudioReadError(f"{clip}: contains no audio samples")
        check_signal(np.array([peak], dtype=np.float32), sr=sr, source=str(clip))
        return stats
    name = name or "array"
    y = load_clip(clip, sr=sr, channel=channel, name=name)
    try:
        chain = clip_chain(clip, sr=sr)
    except Exception:  # noqa: BLE001 - the chain is informative only
        chain = None
    return signal_stats(y, name, chain=chain)


def screen_training_clips(clips: Sequence, *, sr: int = SR, channel: int | None = None,
                          names: Sequence[str] | None = None, min_keep: int = 2) -> tuple[list[int], Screening]:
    """Screen training clips: the indices of the clips to keep, and the :class:`Screening`.

    Warns once per clip left out (naming it and why); raises :class:`ConfigError` when
    too few remain. Unreadable clips raise their own ``AudioReadError``, as training would.
    """
    names = list(names) if names is not None else [str(c) if isinstance(c, (str, bytes)) or hasattr(c, "__fspath__")
                                                    else f"array[{i}]" for i, c in enumerate(clips)]
    stats = [clip_stats(c, sr=sr, channel=channel, name=names[i]) for i, c in enumerate(clips)]
    result = screen_and_warn(stats, min_keep=min_keep)
    return [i for i in range(len(clips)) if result.keep[i]], result


def screen_and_warn(stats: Sequence[ClipStats], *, min_keep: int = 2) -> Screening:
    """:func:`screen_clips`, then one warning per clip left out."""
    result = screen_clips(stats, min_keep=min_keep)
    warn_left_out(result)
    return result


def signal_stats(y: np.ndarray, name: str, *, chain: dict | None = None, block: int = 10 * SR) -> ClipStats:
    """:class:`ClipStats` of a whole signal."""
    s = ClipStats(name, chain=chain)
    for i in range(0, max(len(y), 1), block):
        s.update(y[i:i + block])
    return s


@dataclasses.dataclass
class Screening:
    """Outcome of :func:`screen_clips`: which clips to keep and why the others were left out."""

    keep: np.ndarray  # bool (n_clips,)
    left_out: list[dict]  # {"clip", "reason"} per clip left out, in input order
    statistics: dict  # the reference the clips were compared with (for model.json)

    def record(self) -> dict:
        """What ``model.json`` records."""
        return {"left_out": self.left_out, "n_clips": int(self.keep.size), "n_kept": int(self.keep.sum()),
                **self.statistics}


def _robust(x: np.ndarray, axis: int = 0, floor: float = SCALE_FLOOR_DB) -> tuple[np.ndarray, np.ndarray]:
    med = np.median(x, axis=axis)
    mad = np.median(np.abs(x - np.expand_dims(med, axis)), axis=axis)
    return med, np.maximum(1.4826 * mad, floor)


def screen_clips(stats: Sequence[ClipStats], *, min_keep: int = 2, refuse: bool = True) -> Screening:
    """Decide which training clips belong (see the module docstring).

    Parameters
    ----------
    stats : sequence of ClipStats
        One per clip, in input order.
    min_keep : int
        Fewest clips training needs; fewer left is a :class:`ConfigError`.
    refuse : bool
        Raise :class:`ConfigError` when too few clips remain (else just report).

    Returns
    -------
    Screening
    """
    n = len(stats)
    reasons: dict[int, list[str]] = {}

    def odd(i: int, why: str) -> None:
        reasons.setdefault(i, []).append(why)

    for i, s in enumerate(stats):
        if s.n and (s.dc_share >= DC_SHARE or s.ac_rms < 1e-6):
            odd(i, f"constant signal (DC offset {s.mean:+.3g}, {100 * s.dc_share:.1f} % of its power)")
    statistics: dict = {"method": "median/MAD across clips", "z_limit": Z_LIMIT}
    if n >= MIN_CLIPS_FOR_STATISTICS:
        ok = [i for i in range(n) if i not in reasons]
        # Chain: a file recorded at another rate or channel count than most clips.
        chains = [(s.chain or {}).get("sample_rate") for s in stats]
        chans = [(s.chain or {}).get("channels") for s in stats]
        coding = [None if not (s.chain or {}).get("format") or s.chain["format"] == "array"
                  else "lossy" if str(s.chain["format"]).upper() in LOSSY_FORMATS else "lossless" for s in stats]
        for what, values, unit in (("sample rate", chains, " Hz"), ("channel count", chans, ""),
                                   ("coding", coding, "")):
            known = [v for v in values if v is not None]
            if len(known) >= MIN_CLIPS_FOR_STATISTICS:
                common, count = Counter(known).most_common(1)[0]
                if count >= 0.75 * len(known):
                    statistics[what.replace(" ", "_")] = common
                    for i, v in enumerate(values):
                        if v is not None and v != common:
                            odd(i, f"{what} {v}{unit}, most clips {common}{unit} (another recording chain)")
        if len(ok) >= MIN_CLIPS_FOR_STATISTICS:
            level = np.array([s.level_db for s in stats])
            med, scale = _robust(level[ok])
            statistics.update(level_db_median=float(med), level_db_scale=float(scale))
            for i in range(n):
                dev = level[i] - med
                if i not in reasons and abs(dev) > max(Z_LIMIT * scale, MIN_LEVEL_DB):
                    odd(i, f"level {level[i]:.1f} dB, {dev:+.1f} dB from the clips' median "
                        f"(spread {scale:.1f} dB)")
            bands = np.array([s.bands_db() for s in stats])
            bmed, bscale = _robust(bands[ok], axis=0)
            # Deviation of a clip: its worst quarter of bands, in dB and in robust spreads.
            dev_db = np.abs(bands - bmed)
            q = max(1, N_BANDS // 4)
            worst_db = np.sort(dev_db, axis=1)[:, -q:].mean(axis=1)
            worst_z = np.sort(dev_db / bscale, axis=1)[:, -q:].mean(axis=1)
            statistics.update(spectrum_bands=N_BANDS)
            for i in range(n):
                if i not in reasons and worst_z[i] > Z_LIMIT and worst_db[i] > MIN_SPECTRUM_DB:
                    odd(i, f"spectrum {worst_db[i]:.0f} dB away from the clips' median in its "
                        f"{q} most different bands ({worst_z[i]:.0f} spreads)")
            # A clip with enough close neighbours is a mode of normal sound (another speed,
            # another season, a second domain), not an odd clip: keep it. Constant and
            # chain findings stand regardless.
            group = max(1, min(3, int(np.ceil(GROUP_SHARE * n))))
            for i in [i for i in reasons if all(r.startswith(("level", "spectrum")) for r in reasons[i])]:
                d_band = np.sort(np.abs(bands - bands[i]), axis=1)[:, -q:].mean(axis=1)
                close = (d_band < MIN_SPECTRUM_DB / 2) & (np.abs(level - level[i]) < MIN_LEVEL_DB / 2)
                close[i] = False
                if close.sum() >= group:
                    del reasons[i]
    chains = [tuple(sorted((s.chain or {}).items())) for s in stats if s.chain]
    if chains:
        statistics["chain"] = dict(Counter(chains).most_common(1)[0][0])
    keep = np.ones(n, dtype=bool)
    left = []
    for i in sorted(reasons):
        keep[i] = False
        left.append({"clip": stats[i].name, "reason": "; ".join(reasons[i])})
    result = Screening(keep=keep, left_out=left, statistics=statistics)
    if refuse:
        n_keep = int(keep.sum())
        if left and (n_keep < min_keep or len(left) >= MAX_LEFT_OUT * n):
            listed = "; ".join(f"{d['clip']}: {d['reason']}" for d in left[:5])
            more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
            raise ConfigError(f"only {n_keep} of {n} training clips look like the same machine and recording "
                              f"chain, too few to learn 'normal' from; left out {listed}{more}")
    return result


def warn_left_out(screening: Screening) -> None:
    """One warning per clip left out, naming it and the reason."""
    for d in screening.left_out:
        log.warning("%s: left out of training: %s", d["clip"], d["reason"])
