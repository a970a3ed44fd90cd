"""Read audio files into validated 16 kHz mono float32 signals.

Rules, applied the same way to files, arrays and live blocks:

* mono is the mean of all channels, unless ``channel`` picks one (0-based);
* any sample rate is resampled to 16 kHz with soxr (high quality, streaming-capable);
* the signal must be finite, long enough for one feature window, and not
  digitally silent; otherwise :class:`AudioReadError` names the file and the reason.
"""

from __future__ import annotations

import dataclasses
import os
import stat
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
# Input sample rates a real recording chain uses; anything else is a broken or hostile header.
# Float audio lies within +-1 (a little beyond when clipped); 1000x that is corrupt data,
# and its power would overflow float32 features into NaN scores.
MAX_ABS_SAMPLE = 1_000.0
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 64
# The most samples one byte of a file may decode to: PCM holds at most 1 per byte (8-bit),
# lossless and lossy codecs a few hundred on near-constant sound; beyond this the header or
# the data is lying, and decoding it would exhaust memory before anything else could notice.
MAX_SAMPLES_PER_BYTE = 4096
MIN_SAMPLE_BUDGET = 1 << 20
# Block length used to decode whole files (memory per block, not per file).
BLOCK_SECONDS = 10.0


def clip_name(clip, i: int) -> str:
    """How a clip is named in messages: its path, or ``array[i]``."""
    return str(clip) if isinstance(clip, (str, os.PathLike)) else f"array[{i}]"


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
            raise AudioReadError(f"{source}: has 1 channel, cannot use channel {channel}")
        return y
    if y.ndim != 2:
        raise AudioReadError(f"{source}: expected (samples, channels) audio, got shape {y.shape}")
    if channel is None:
        # One channel is its own mean (exactly): no pass over the samples.
        return np.ascontiguousarray(y[:, 0]) if y.shape[1] == 1 else y.mean(axis=1, dtype=np.float32)
    if not 0 <= channel < y.shape[1]:
        raise AudioReadError(
            f"{source}: has {y.shape[1]} channels, cannot use channel {channel} (0-based)"
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
    # Two reductions only (no temporary the size of y: an hour of audio is 230 MB): a NaN
    # anywhere makes the maximum and minimum NaN, an inf makes one of them infinite.
    hi, lo = float(y.max()), float(y.min())
    if not np.isfinite(hi) or not np.isfinite(lo):
        bad = int(np.count_nonzero(~np.isfinite(y)))
        if bad:
            raise AudioReadError(f"{source}: contains {bad} non-finite samples (NaN or inf)")
    peak = max(hi, -lo)
    if peak > MAX_ABS_SAMPLE:
        raise AudioReadError(f"{source}: implausible sample values (peak {peak:.3g}; audio lies within +-1, "
                             f"float files at most a little beyond): corrupt data")
    if y.size < min_samples:
        raise AudioReadError(
            f"{source}: is {y.size / sr:.3f} s long, shorter than one feature window "
            f"({min_samples / sr:.3f} s)"
        )
    if peak < SILENCE_PEAK:
        raise SilentAudioError(f"{source}: is digitally silent (no sample above -96 dBFS)")
    return y


def _resample(y: np.ndarray, sr_in: int, sr: int) -> np.ndarray:
    if sr_in == sr:
        return y
    return soxr.resample(y, sr_in, sr, quality="HQ").astype(np.float32, copy=False)


def stream_resampler(sr_in: int, sr: int = SAMPLE_RATE):
    """A streaming resampler (continuous across block edges) from ``sr_in`` to ``sr``, or ``None``
    when the rates match: ``r.resample_chunk(block)``, and ``r.resample_chunk(empty, last=True)``
    for the tail. The one resampler of files, long-file blocks and live devices."""
    if int(sr_in) == int(sr):
        return None
    return soxr.ResampleStream(int(sr_in), int(sr), 1, dtype="float32", quality="HQ")


def check_sample_rate(sr_in, *, source: str = "audio") -> int:
    """A plausible input sample rate as an ``int``; anything else is an :class:`AudioReadError`.

    A rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` is a broken or hostile header:
    a 96 KB file claiming 1 Hz would resample to 13 hours of audio.
    """
    if isinstance(sr_in, bool) or not isinstance(sr_in, (int, np.integer, float, np.floating)):
        raise AudioReadError(f"{source}: sample rate must be a number of Hz, not {sr_in!r}")
    if not np.isfinite(sr_in) or float(sr_in) != int(sr_in):
        raise AudioReadError(f"{source}: sample rate must be a whole number of Hz, not {sr_in!r}")
    rate = int(sr_in)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioReadError(f"{source}: implausible sample rate {rate} Hz "
                             f"(accepted: {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz)")
    return rate


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, after :func:`audio_info` checked it is plausible.

    ``frames`` is the header's claim; readers trust only the data they decode.
    """

    path: str
    samplerate: int
    channels: int
    frames: int
    format: str
    subtype: str
    size: int

    @property
    def seconds(self) -> float:
        return self.frames / self.samplerate

    def chain(self) -> dict:
        """The recording chain a model records and compares: rate, format, channels."""
        return {"sample_rate": self.samplerate, "format": self.format, "channels": self.channels}


def max_samples_for(size: int) -> int:
    """The most samples (frames x channels) a file of ``size`` bytes may plausibly decode to."""
    return MAX_SAMPLES_PER_BYTE * max(int(size), 0) + MIN_SAMPLE_BUDGET


def _regular_file(path: Path) -> int:
    """``path``'s size; refuses what is missing, a folder, a FIFO, a device or a socket.

    Checked with ``stat`` before any ``open``: opening a FIFO blocks until a writer appears.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioReadError(f"{path}: no such file") from None
    except OSError as exc:
        raise AudioReadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioReadError(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if
                stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        raise AudioReadError(f"{path}: is {kind}, not an audio file")
    return int(st.st_size)


def _open(path: Path) -> tuple[sf.SoundFile, AudioInfo]:
    size = _regular_file(path)
    if size == 0:
        raise AudioReadError(f"{path}: not a readable audio file (empty: 0 bytes)")
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
        reason = str(exc).split(":", 1)[-1].strip() or type(exc).__name__
        raise AudioReadError(f"{path}: not a readable audio file ({reason})") from None
    try:
        rate = check_sample_rate(f.samplerate, source=str(path))
        if not 1 <= f.channels <= MAX_CHANNELS:
            raise AudioReadError(f"{path}: implausible channel count {f.channels} (accepted: 1-{MAX_CHANNELS})")
        if f.frames * f.channels > max_samples_for(size):
            raise AudioReadError(f"{path}: header claims {f.frames:,} frames x {f.channels} channels, far more "
                                 f"than {size:,} bytes can hold (corrupt or hostile header)")
        info = AudioInfo(str(path), rate, int(f.channels), int(f.frames), str(f.format), str(f.subtype), size)
    except BaseException:
        f.close()
        raise
    return f, info


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """The checked header of an audio file (rate, channels, claimed length, format), without decoding it.

    Raises
    ------
    AudioReadError
        Missing, not a regular file, unreadable, or a header with an implausible sample
        rate, channel count or length for the file's size.
    """
    f, info = _open(Path(path))
    f.close()
    return info


def iter_raw_blocks(path: str | os.PathLike, *, block_seconds: float = 1.0) -> Iterator[tuple[np.ndarray, AudioInfo]]:
    """Decode a file block by block at its own rate: ``(block (frames, channels) float32, info)``.

    Only decoded data counts: a header that claims more frames than the file holds ends
    when the data ends (soundfile's own ``blocks`` would repeat stale buffers up to the
    claim), and decoding stops with an :class:`AudioReadError` once the samples exceed
    what the file's size allows. Memory is one block.
    """
    path = Path(path)
    f, info = _open(path)
    with f:
        yield from _decode_blocks(f, info, path, block_seconds)


def _decode_blocks(f: sf.SoundFile, info: AudioInfo, path: Path,
                   block_seconds: float) -> Iterator[tuple[np.ndarray, AudioInfo]]:
    """:func:`iter_raw_blocks` of a file :func:`_open` opened."""
    # 16-bit PCM read as integers and scaled here: the same floats as libsndfile's (sample * 2**-15,
    # exact), in a third of its time.
    pcm16 = info.subtype == "PCM_16"
    frames = max(1, int(round(block_seconds * info.samplerate)))
    budget, decoded = max_samples_for(info.size), 0
    while True:
        try:
            block = f.read(frames, dtype="int16" if pcm16 else "float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, MemoryError) as exc:
            raise AudioReadError(f"{path}: audio data is corrupt ({exc})") from None
        if block.shape[0] == 0:
            return
        if pcm16:
            block = block.astype(np.float32)
            block *= np.float32(1.0 / 32768.0)
        decoded += block.size
        if decoded > budget:
            raise AudioReadError(f"{path}: decodes to more than {budget:,} samples, far more than "
                                 f"{info.size:,} bytes can hold (corrupt file)")
        yield block, info


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
        Missing, not a regular file, unreadable, implausible header (rate, length),
        empty, too short, non-finite or (``SilentAudioError``) digitally silent audio;
        the message starts with the path.
    """
    path = Path(path)
    f, info = _open(path)
    with f:
        return _load_opened(f, info, path, sr=sr, channel=channel, min_samples=min_samples)


def load_audio_if_short(
    path: str | os.PathLike,
    *,
    max_samples: float,
    sr: int = SAMPLE_RATE,
    channel: int | None = None,
    min_samples: int = 1,
) -> np.ndarray | None:
    """:func:`load_audio`, or ``None`` without decoding anything when the file's header claims
    more than ``max_samples`` samples at ``sr`` (one opening of the file for both).

    Raises
    ------
    AudioReadError
        As :func:`load_audio`.
    """
    path = Path(path)
    f, info = _open(path)
    with f:
        if info.frames / info.samplerate * sr > max_samples:
            return None
        return _load_opened(f, info, path, sr=sr, channel=channel, min_samples=min_samples)


def _load_opened(f: sf.SoundFile, info: AudioInfo, path: Path, *, sr: int, channel: int | None,
                 min_samples: int) -> np.ndarray:
    out: _Collector | None = None
    stream = None
    # Block by block: each block is downmixed and resampled (soxr's stream gives the same samples
    # as resampling the whole signal) as it arrives, so memory peaks at the 16 kHz mono result,
    # not at the file's rate and channels, nor at what its header claims.
    for block, _ in _decode_blocks(f, info, path, BLOCK_SECONDS):
        if out is None:
            # PCM headers are exact (libsndfile bounds them by the file size): room for the result at
            # once; a compressed file's claim is only an estimate, so it grows with the data instead.
            exact = info.subtype.startswith(("PCM", "FLOAT", "DOUBLE", "ULAW", "ALAW"))
            out = _Collector(int(np.ceil(info.frames * sr / info.samplerate)) + 64 if exact else 0)
            if info.samplerate != sr:
                stream = stream_resampler(info.samplerate, sr)
        y = to_mono(block, channel=channel, source=str(path))
        if stream is not None and not np.isfinite(y).all():
            # Check before resampling: soxr would smear one NaN over the whole clip (without
            # resampling, the final check counts them).
            check_signal(y, source=str(path))
        out.add(stream.resample_chunk(y) if stream is not None else y)
    if out is None:
        raise AudioReadError(f"{path}: contains no audio samples (header only)")
    if stream is not None:
        out.add(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    return check_signal(out.result(), sr=sr, min_samples=min_samples, source=str(path))


class _Collector:
    """Concatenates float32 blocks into one array, preallocated when the final size is known.

    A signal of one block (a short file) is that block itself, never copied.
    """

    def __init__(self, expected: int = 0):
        self.expected = expected
        self.buf: np.ndarray | None = None
        self.parts: list[np.ndarray] = []
        self.n = 0

    def add(self, y: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float32)
        if self.expected and self.n + y.size <= self.expected:
            if self.n == 0:
                self.parts = [y]
            else:
                if self.buf is None:  # a second block: room for the whole result at once
                    self.buf = np.empty(self.expected, dtype=np.float32)
                    self.buf[:self.n] = self.parts[0]
                    self.parts = []
                self.buf[self.n:self.n + y.size] = y
        else:
            if self.buf is not None:  # the header was short of the data: keep what is there
                self.parts.append(self.buf[:self.n])
                self.buf = None
            self.expected = 0
            self.parts.append(y)
        self.n += y.size

    def result(self) -> np.ndarray:
        if self.buf is not None:
            return self.buf[:self.n]
        return self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)


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
    stream = None
    for block, info in iter_raw_blocks(path, block_seconds=block_seconds):
        if stream is None and info.samplerate != sr:
            stream = stream_resampler(info.samplerate, sr)
        y = to_mono(block, channel=channel, source=str(path))
        if stream is not None:
            y = stream.resample_chunk(y)
        if y.size:
            yield y
    if stream is not None:
        tail = stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if tail.size:
            yield tail


def load_clip(
    clip,
    *,
    sr: int = SAMPLE_RATE,
    channel: int | None = None,
    min_samples: int = 1,
    name: str | None = None,
) -> np.ndarray:
    """Any clip the Python API accepts as a validated mono float32 signal at ``sr``.

    Parameters
    ----------
    clip : path-like, np.ndarray or (np.ndarray, int)
        A file, a signal already at ``sr``, or a ``(signal, sample_rate)`` tuple.
    name : str or None
        How the clip is named in messages (default: its path, or ``array``).

    Raises
    ------
    AudioReadError
        Anything that is not one of those shapes, an implausible rate, or audio that
        :func:`check_signal` refuses.
    """
    if isinstance(clip, (str, os.PathLike)):
        return load_audio(clip, sr=sr, channel=channel, min_samples=min_samples)
    source = name or "array"
    if isinstance(clip, tuple):
        if len(clip) != 2:
            raise AudioReadError(f"{source}: a clip tuple must be (signal, sample_rate), got {len(clip)} items")
        y, rate = clip
        rate = check_sample_rate(rate, source=source)
        y = to_mono(_as_signal(y, source), channel=channel, source=source)
        check_signal(y, sr=rate, source=source)  # NaNs must not reach the resampler
        y = _resample(y, rate, sr)
    else:
        y = to_mono(_as_signal(clip, source), channel=channel, source=source)
    return check_signal(y, sr=sr, min_samples=min_samples, source=source)


def _as_signal(y, source: str) -> np.ndarray:
    if isinstance(y, (str, bytes, os.PathLike)) or y is None:
        raise AudioReadError(f"{source}: expected a signal (array of samples), got {type(y).__name__}")
    try:
        out = np.asarray(y, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise AudioReadError(f"{source}: not an array of samples ({exc})") from None
    return out


def clip_chain(clip, *, sr: int = SAMPLE_RATE) -> dict:
    """The recording chain of a clip (input rate, format, channels), as a model records it."""
    if isinstance(clip, (str, os.PathLike)):
        return audio_info(clip).chain()
    if isinstance(clip, tuple) and len(clip) == 2:
        y, rate = clip
    else:
        y, rate = clip, sr
    shape = np.shape(y)
    return {"sample_rate": int(rate), "format": "array", "channels": int(shape[1]) if len(shape) == 2 else 1}


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


def read_excerpt(
    path: str | os.PathLike,
    *,
    offset: float,
    seconds: float,
    sr: int = SAMPLE_RATE,
    channel: int | None = None,
) -> np.ndarray:
    """``seconds`` of a file from ``offset`` (seconds) as mono float32 at ``sr``, reading only that part.

    Returns
    -------
    np.ndarray [shape=(<= seconds * sr,), dtype=float32]
    """
    path = Path(path)
    f, _ = _open(path)
    with f:
        try:
            f.seek(min(int(offset * f.samplerate), max(f.frames - 1, 0)))
            data = f.read(int(seconds * f.samplerate) + 1, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioReadError(f"{path}: audio data is corrupt ({exc})") from None
        sr_in = f.samplerate
    return _resample(to_mono(data, channel=channel, source=str(path)), sr_in, sr)


def fingerprint(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """SHA-256 (first 128 bits, hex) of a file's bytes: the same recording under any name or folder.

    A model keeps its training recordings' fingerprints, so that re-calibrating it on
    recordings it heard (whose scores are optimistic) can be caught.
    """
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:32]


def fingerprints(clips: Iterable) -> list[str]:
    """Fingerprints of the clips that are files (arrays have none), sorted and without repeats."""
    return sorted({fingerprint(c) for c in clips if isinstance(c, (str, os.PathLike))})


#: Sample formats copied exactly when a recording is cut (as integers); others are written as float.
_EXACT_DTYPES = {"PCM_16": "int16", "PCM_24": "int32", "PCM_32": "int32"}


def split_recording(path: str | os.PathLike, directory: str | os.PathLike, *, parts: int) -> list[Path]:
    """Cut one recording into ``parts`` consecutive pieces of equal length, written as WAV files.

    For training on a single long recording: the pieces become the recordings the
    out-of-fold calibration needs. Each keeps the file's own rate, channels and samples
    (16/24/32-bit PCM copied exactly, anything else as 32-bit float), and is named
    ``<stem>_partKKofN.wav`` so that name order is time order. Memory is one second of audio.

    Parameters
    ----------
    path : path-like
    directory : path-like
        An existing folder for the pieces.
    parts : int >= 2

    Returns
    -------
    list of Path
        The pieces, in time order (a file whose data ends before its header's length has
        fewer: the empty ones are not written).

    Raises
    ------
    AudioReadError
        The file cannot be read, or holds fewer frames than pieces.
    """
    info = audio_info(path)
    parts = int(parts)
    if parts < 2 or info.frames < parts:
        raise AudioReadError(f"{path}: cannot cut {info.frames} frames into {parts} parts")
    bounds = np.linspace(0, info.frames, parts + 1).round().astype(np.int64)
    bounds[-1] = np.iinfo(np.int64).max  # the last piece takes whatever data there is
    dtype = _EXACT_DTYPES.get(info.subtype, "float32")
    subtype = info.subtype if dtype != "float32" else "FLOAT"
    width = len(str(parts))
    names = [Path(directory) / f"{Path(path).stem}_part{k + 1:0{width}d}of{parts}.wav" for k in range(parts)]
    written, k, pos, out = [], 0, 0, None
    try:
        with sf.SoundFile(path) as f:
            while True:
                try:
                    block = f.read(info.samplerate, dtype=dtype, always_2d=True)
                except (sf.LibsndfileError, RuntimeError, ValueError, MemoryError) as exc:
                    raise AudioReadError(f"{path}: audio data is corrupt ({exc})") from None
                if block.shape[0] == 0:
                    break
                while block.shape[0]:
                    if out is None:
                        out = sf.SoundFile(names[k], "w", samplerate=info.samplerate, channels=info.channels,
                                           format="WAV", subtype=subtype)
                        written.append(names[k])
                    take = int(min(block.shape[0], bounds[k + 1] - pos))
                    out.write(block[:take])
                    block, pos = block[take:], pos + take
                    if pos >= bounds[k + 1]:
                        out.close()
                        out, k = None, k + 1
    finally:
        if out is not None:
            out.close()
    return written


def audio_duration(path: str | os.PathLike) -> float:
    """Length of a file in seconds, from its header (nothing decoded)."""
    info = audio_info(path)
    return info.frames / info.samplerate


def write_wav(path: str | os.PathLike, y: np.ndarray, *, sr: int = SAMPLE_RATE) -> Path:
    """Write a mono signal as a 16-bit WAV, durably: written beside, fsynced, renamed into place
    (a reader never sees half a file; a crash leaves the old file or none).

    Parameters
    ----------
    path : path-like
    y : np.ndarray [shape=(n,)]
        Samples in [-1, 1] (clipped).
    sr : int

    Raises
    ------
    OSError
        Saying why (the system's reason: disk full, read-only, ...) and where, with the
        bytes needed and free there (libsndfile itself only says "System error").
    """
    import io as _io
    import shutil
    import tempfile

    path = Path(path)
    buf = _io.BytesIO()
    sf.write(buf, np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    data = buf.getvalue()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        try:
            free = f"{shutil.disk_usage(path.parent).free:,} bytes free there"
        except OSError:
            free = "free space unknown"
        raise OSError(exc.errno, f"{exc.strerror or exc}: cannot write {path} ({len(data):,} bytes; {free})") \
            from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: libsndfile formats that are lossy-coded.
LOSSY_FORMATS = frozenset({"OGG", "MP3", "MPEG"})

#: The lossy coding a model calibrates for besides its own chain: OGG Vorbis at libsndfile's
#: default quality (what an archive re-coded to save space most often is).
LOSSY_CODEC = ("OGG", "VORBIS")


def lossy_round_trip(y: np.ndarray, *, sr: int = SAMPLE_RATE, codec: tuple[str, str] = LOSSY_CODEC) -> np.ndarray:
    """``y`` coded with a lossy codec and decoded again, in memory: what a copy of the recording
    in that format would read as.

    Parameters
    ----------
    y : np.ndarray [shape=(n,)]
        Mono samples at ``sr``.
    codec : (format, subtype)
        libsndfile's names (default OGG Vorbis, at its default quality).

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
        The decoded samples, trimmed or zero-padded to ``n`` (codecs pad their last frame).
    """
    import io as _io

    y = np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)
    buf = _io.BytesIO()
    sf.write(buf, y, sr, format=codec[0], subtype=codec[1])
    buf.seek(0)
    z, _ = sf.read(buf, dtype="float32", always_2d=False)
    out = np.zeros(y.size, dtype=np.float32)
    out[: min(y.size, z.size)] = z[: y.size]
    return out
