"""Read audio files into validated 16 kHz mono float32 signals.

Rules, applied the same way to files, arrays and live blocks:

* mono is the mean of all channels, unless ``channel`` picks one (0-based);
* any sample rate is resampled to 16 kHz with soxr (high quality, streaming-capable);
* the signal must be finite, long enough for one feature window, and not
  digitally silent; otherwise :class:`AudioReadError` names the file and the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from machine_monitor.errors import AudioReadError, SilentAudioError

SAMPLE_RATE = 16_000
# Every format libsndfile reads that people keep machine recordings in.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
# Half a 16-bit LSB: below this a clip holds no sound at all, only dither or zeros.
SILENCE_PEAK = 1.0 / 65536


def to_mono(y: np.ndarray, *, channel: int | None = None, source: str = "audio") -> np.ndarray:
    """Downmix a ``(n_samples, n_channels)`` or ``(n_samples,)`` array to mono.

    Parameters
    ----------
    y : np.ndarray [shape=(n,) or (n, n_channels)]
    channel : int or None
        Keep this channel (0-based) instead of averaging all channels.
    source : str
        Named in error messages.

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        if channel not in (None, 0):
            raise AudioReadError(f"{source}: has 1 channel, cannot use --channel {channel}")
        return y
    if y.ndim != 2:
        raise AudioReadError(f"{source}: expected (samples, channels) audio, got shape {y.shape}")
    if channel is None:
        return y.mean(axis=1, dtype=np.float32)
    if not 0 <= channel < y.shape[1]:
        raise AudioReadError(
            f"{source}: has {y.shape[1]} channels, cannot use --channel {channel} (0-based)"
        )
    return np.ascontiguousarray(y[:, channel])


def check_signal(
    y: np.ndarray, *, sr: int = SAMPLE_RATE, min_samples: int = 1, source: str = "audio"
) -> np.ndarray:
    """Validate a mono signal: finite, long enough, not digitally silent.

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
        ``y`` itself (as float32) when it passes.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.size == 0:
        raise AudioReadError(f"{source}: contains no audio samples")
    if not np.isfinite(y).all():
        bad = int(np.count_nonzero(~np.isfinite(y)))
        raise AudioReadError(f"{source}: contains {bad} non-finite samples (NaN or inf)")
    if y.size < min_samples:
        raise AudioReadError(
            f"{source}: is {y.size / sr:.3f} s long, shorter than one feature window "
            f"({min_samples / sr:.3f} s)"
        )
    if float(np.max(np.abs(y))) < SILENCE_PEAK:
        raise SilentAudioError(f"{source}: is digitally silent (no sample above -96 dBFS)")
    return y


def _resample(y: np.ndarray, sr_in: int, sr: int) -> np.ndarray:
    if sr_in == sr:
        return y
    return soxr.resample(y, sr_in, sr, quality="HQ").astype(np.float32, copy=False)


def _open(path: Path) -> sf.SoundFile:
    if not path.exists():
        raise AudioReadError(f"{path}: no such file")
    if path.is_dir():
        raise AudioReadError(f"{path}: is a directory, not an audio file")
    try:
        return sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).split(":", 1)[-1].strip() or type(exc).__name__
        raise AudioReadError(f"{path}: not a readable audio file ({reason})") from None


def load_audio(
    path: str | os.PathLike,
    *,
    sr: int = SAMPLE_RATE,
    channel: int | None = None,
    min_samples: int = 1,
) -> np.ndarray:
    """Load a whole file as a validated mono float32 signal at ``sr``.

    Parameters
    ----------
    path : path-like
        Any format libsndfile reads (WAV, FLAC, OGG, MP3, AIFF, ...).
    sr : int
        Target sample rate.
    channel : int or None
        Channel to keep (0-based); ``None`` averages all channels.
    min_samples : int
        Shortest acceptable length at ``sr`` (one feature window).

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]

    Raises
    ------
    AudioReadError
        Missing, unreadable, empty, too short, non-finite or (``SilentAudioError``)
        digitally silent audio; the message starts with the path.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioReadError(f"{path}: audio data is corrupt ({exc})") from None
        sr_in = f.samplerate
    if data.shape[0] == 0:
        raise AudioReadError(f"{path}: contains no audio samples (header only)")
    y = to_mono(data, channel=channel, source=str(path))
    if not np.isfinite(y).all():
        # Check before resampling: soxr would smear one NaN over the whole clip.
        check_signal(y, source=str(path))
    return check_signal(_resample(y, sr_in, sr), sr=sr, min_samples=min_samples, source=str(path))


def read_blocks(
    path: str | os.PathLike,
    *,
    block_seconds: float,
    sr: int = SAMPLE_RATE,
    channel: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream a file of any length as mono float32 blocks at ``sr``.

    Memory stays bounded by ``block_seconds`` whatever the file's length, rate or
    channel count; resampling is continuous across block edges (soxr stream).
    Blocks are not validated: callers check the windows they score.

    Yields
    ------
    np.ndarray [shape=(<= block_seconds * sr,), dtype=float32]
    """
    path = Path(path)
    with _open(path) as f:
        sr_in = f.samplerate
        stream = soxr.ResampleStream(sr_in, sr, 1, dtype="float32", quality="HQ") if sr_in != sr else None
        frames = max(1, int(round(block_seconds * sr_in)))
        try:
            for block in f.blocks(blocksize=frames, dtype="float32", always_2d=True):
                y = to_mono(block, channel=channel, source=str(path))
                if stream is not None:
                    y = stream.resample_chunk(y)
                if y.size:
                    yield y
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioReadError(f"{path}: audio data is corrupt ({exc})") from None
        if stream is not None:
            tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield tail


def find_audio_files(
    inputs: Iterable[str | os.PathLike], *, recursive: bool = False
) -> list[Path]:
    """Expand files and folders into a sorted list of audio files.

    Files named explicitly are kept whatever their extension (so a bad one gets a
    clear read error); folders contribute files with an ``AUDIO_EXTENSIONS`` suffix.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            out.extend(
                sorted(q for q in p.glob(pattern) if q.is_file() and q.suffix.lower() in AUDIO_EXTENSIONS)
            )
        else:
            out.append(p)
    return out
