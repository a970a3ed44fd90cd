"""Audio sources for the live monitor: a microphone (PortAudio) or a replayed file.

Every source has the same shape, so the monitor loop cannot tell them apart::

    producer (audio callback or replay thread)
        -> bounded queue of raw blocks (device rate, all channels)
        -> read(): mono + streaming resample to 16 kHz, in the consumer's thread

The producer only copies blocks into the queue. When the queue is full the
block is dropped and counted, never waited for: an audio callback must not
block. Replays that need not keep real time (``speed=0``) wait instead, so
they lose nothing.

``sounddevice`` is imported lazily: it raises ``OSError`` at import when the
PortAudio library is missing, and nothing but the live commands needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

from machine_monitor.audio.io import (
    LOSSY_FORMATS,
    SAMPLE_RATE,
    audio_info,
    check_sample_rate,
    iter_raw_blocks,
    stream_resampler,
    to_mono,
)
from machine_monitor.errors import AudioDeviceError, AudioReadError, MachineMonitorError

log = logging.getLogger(__name__)

INSTALL_HINT = ("PortAudio is not installed; install it with `apt-get install libportaudio2` "
                "(Debian/Ubuntu), `dnf install portaudio` (Fedora) or `brew install portaudio` (macOS)")


class SourceLost(AudioDeviceError):
    """A running input stopped delivering audio (device unplugged, stream died, stalled)."""


def import_sounddevice():
    """``import sounddevice``, turning a missing PortAudio into an install hint."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise AudioDeviceError(f"{INSTALL_HINT} ({exc})") from None
    return sounddevice


def list_input_devices() -> list[dict]:
    """Every device with input channels: index, name, channels, default rate, host API."""
    sd = import_sounddevice()
    apis = sd.query_hostapis()
    try:
        default_in = sd.default.device[0]
    except (TypeError, IndexError):
        default_in = -1
    out = []
    for d in sd.query_devices():
        if d["max_input_channels"] > 0:
            out.append({"index": d["index"], "name": d["name"], "channels": d["max_input_channels"],
                        "default_samplerate": d["default_samplerate"], "hostapi": apis[d["hostapi"]]["name"],
                        "default": d["index"] == default_in})
    return out


def resolve_device(device: int | str | None) -> dict:
    """The input device for an index, a (unique, case-insensitive) part of a name, or the default.

    Raises ``AudioDeviceError`` naming the available inputs when nothing (or more
    than one device) matches.
    """
    inputs = list_input_devices()
    if not inputs:
        raise AudioDeviceError("no audio input device found (is a microphone connected?)")
    names = "; ".join(f"{d['index']}: {d['name']}" for d in inputs)
    if device is None or device == "":
        default = [d for d in inputs if d["default"]]
        if not default:
            raise AudioDeviceError(f"no default input device; pick one of the inputs ({names})")
        return default[0]
    if isinstance(device, int) or str(device).isdigit():
        found = [d for d in inputs if d["index"] == int(device)]
    else:
        exact = [d for d in inputs if d["name"].lower() == str(device).lower()]
        found = exact or [d for d in inputs if str(device).lower() in d["name"].lower()]
    if len(found) != 1:
        what = "no input device matches" if not found else "several input devices match"
        raise AudioDeviceError(f"{what} {device!r}; inputs are {names}")
    return found[0]


@dataclasses.dataclass
class SourceStats:
    """What a source delivered and lost since it was created."""

    blocks: int = 0  # blocks handed to the consumer
    samples: int = 0  # samples handed to the consumer, at 16 kHz
    dropped_blocks: int = 0  # blocks lost because the queue was full
    overflows: int = 0  # input overflows reported by the audio driver
    restarts: int = 0  # successful re-opens after a loss


class Source:
    """Base class: a bounded queue between a producer and :meth:`read`.

    Parameters
    ----------
    channel : int or None
        Channel to keep (0-based); ``None`` averages all channels.
    queue_seconds : float
        Capacity of the queue in seconds of audio; beyond it blocks are dropped.
    block_seconds : float
        Duration of one block.
    """

    sr = SAMPLE_RATE
    #: True for sources that end by themselves (files), False for microphones.
    finite = False

    def __init__(self, *, channel: int | None = None, queue_seconds: float = 10.0, block_seconds: float = 0.1):
        self.channel = channel
        self.queue_seconds = queue_seconds
        self.block_seconds = block_seconds
        self.stats = SourceStats()
        self._queue: queue.Queue | None = None
        self._resampler = None
        self._rate_in = SAMPLE_RATE
        self.finished = False

    # -- producer side (audio thread): copy and enqueue, nothing else ------------
    def _push(self, block: np.ndarray) -> None:
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            self.stats.dropped_blocks += 1

    # -- consumer side -------------------------------------------------------------
    def _open_queue(self, rate_in: int) -> None:
        capacity = max(4, int(np.ceil(self.queue_seconds / self.block_seconds)))
        self._queue = queue.Queue(maxsize=capacity)
        self._rate_in = int(rate_in)
        # Streaming resampler: continuous across block edges, state kept per opening.
        self._resampler = stream_resampler(self._rate_in, SAMPLE_RATE)

    def _convert(self, raw: np.ndarray) -> np.ndarray:
        y = to_mono(raw, channel=self.channel, source=self.describe())
        if self._resampler is not None:
            y = self._resampler.resample_chunk(y)
        return y

    def read(self, timeout: float = 0.1) -> np.ndarray | None:
        """The next block as 16 kHz mono float32, or ``None`` if none came within ``timeout``.

        Raises :class:`SourceLost` when the input died. After a finite source's
        last block, sets ``finished`` and returns ``None``.
        """
        try:
            raw = self._queue.get(timeout=timeout)
        except queue.Empty:
            self._check_alive()
            return None
        if raw is None:  # end-of-input marker from a finite source
            self.finished = True
            if self._resampler is not None:
                tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                if tail.size:
                    return self._count(tail)
            return None
        return self._count(self._convert(raw))

    def _count(self, y: np.ndarray) -> np.ndarray:
        self.stats.blocks += 1
        self.stats.samples += y.size
        return y

    def _check_alive(self) -> None:
        """Raise :class:`SourceLost` if the producer died (called when no block came)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class ArraySource(Source):
    """Replay an array as if it came from a microphone.

    Parameters
    ----------
    y : np.ndarray [shape=(n,) or (n, n_channels)]
    sr : int
        Its sample rate (resampled to 16 kHz on the way, like a device's).
    speed : float
        1 = real time (blocks arrive when they would from a device); 2 = twice
        as fast; 0 = as fast as the consumer reads, losing nothing.
    name : str
        How the source is named in messages.
    """

    finite = True

    def __init__(self, y: np.ndarray, sr: int = SAMPLE_RATE, *, speed: float = 1.0, name: str = "array",
                 channel: int | None = None, queue_seconds: float = 10.0, block_seconds: float = 0.1):
        super().__init__(channel=channel, queue_seconds=queue_seconds, block_seconds=block_seconds)
        try:
            self.y = np.asarray(y, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise AudioReadError(f"{name}: not an array of samples ({exc})") from None
        self.rate = check_sample_rate(sr, source=name)
        self.speed = float(speed)
        if not np.isfinite(self.speed) or self.speed < 0:
            raise AudioReadError(f"{name}: replay speed must be >= 0 (0 = as fast as possible), not {speed!r}")
        self.name = name
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._error: BaseException | None = None
        self._ended = False

    def describe(self) -> str:
        return self.name

    def _blocks(self):
        step = max(1, int(round(self.block_seconds * self.rate)))
        for i in range(0, len(self.y), step):
            yield self.y[i:i + step]

    def _produce(self) -> None:
        # A replay thread that dies must not leave the consumer waiting for ever: the
        # exception is kept and raised by read() (see _check_alive).
        try:
            self._replay()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer's thread
            self._error = exc

    def _replay(self) -> None:
        t0, sent = time.monotonic(), 0
        for block in self._blocks():
            if self._halt.is_set():
                return
            if self.speed > 0:
                # Deliver each block when a device would have finished recording it.
                due = t0 + (sent + len(block)) / self.rate / self.speed
                self._halt.wait(max(0.0, due - time.monotonic()))
                self._push(np.array(block, copy=True))
            else:
                while not self._halt.is_set():
                    try:
                        self._queue.put(np.array(block, copy=True), timeout=0.1)
                        break
                    except queue.Full:
                        continue
            sent += len(block)
        while not self._halt.is_set():
            try:
                self._queue.put(None, timeout=0.1)
                self._ended = True
                return
            except queue.Full:
                continue

    def _check_alive(self) -> None:
        """Raise the replay thread's error, or an error if it ended without finishing the input."""
        exc = self._error
        if exc is not None:
            if isinstance(exc, MachineMonitorError) and not isinstance(exc, AudioDeviceError):
                raise exc
            # Never AudioDeviceError: the monitor would re-open and replay the file again, for ever.
            raise AudioReadError(f"{self.describe()}: replay failed ({type(exc).__name__}: {exc})") from exc
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._ended and self._queue.empty():
            raise AudioReadError(f"{self.describe()}: replay stopped before the end of the input")

    def start(self) -> None:
        self._open_queue(self.rate)
        self.finished = False
        self._error, self._ended = None, False
        self._halt.clear()
        self._thread = threading.Thread(target=self._produce, name=f"replay-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


class FileSource(ArraySource):
    """Replay an audio file at real-time pace (``speed=1``) through the live path.

    Blocks are read from the file as they are due (:func:`~machine_monitor.audio.io.iter_raw_blocks`,
    the one audio reader), so memory stays bounded whatever the file's length. A file
    that breaks mid-replay raises :class:`AudioReadError` from :meth:`read`.
    """

    def __init__(self, path: str | os.PathLike, *, speed: float = 1.0, channel: int | None = None,
                 queue_seconds: float = 10.0, block_seconds: float = 0.1):
        self.path = Path(path)
        self.info = audio_info(self.path)  # refuses folders, FIFOs, devices, implausible headers
        if self.info.frames == 0:
            raise AudioReadError(f"{self.path}: contains no audio samples (header only)")
        if channel is not None and not 0 <= channel < self.info.channels:
            raise AudioReadError(f"{self.path}: has {self.info.channels} channels, cannot use channel {channel}")
        super().__init__(np.zeros(0, dtype=np.float32), self.info.samplerate, speed=speed, name=str(self.path),
                         channel=channel, queue_seconds=queue_seconds, block_seconds=block_seconds)

    @property
    def seconds(self) -> float:
        """Length of the file according to its (checked) header."""
        return self.info.seconds

    @property
    def lossy(self) -> bool:
        """Whether the file is lossy-coded (OGG, MP3): a model judges it against its lossy thresholds."""
        return str(self.info.format).upper() in LOSSY_FORMATS

    def _blocks(self):
        for block, _ in iter_raw_blocks(self.path, block_seconds=self.block_seconds):
            yield block


class StallWatch:
    """For a device source: no block for ``stall_seconds`` (``start_seconds`` before the first
    one after opening) means the input is lost. Mixed into a :class:`Source` that sets both
    limits and calls :meth:`_opened_now` whenever it (re)opens."""

    stall_seconds: float
    start_seconds: float

    def _opened_now(self) -> None:
        self.stats.restarts += self._opened > 0
        self._opened += 1
        self._got_block = False
        self._last_block = time.monotonic()

    def read(self, timeout: float = 0.1) -> np.ndarray | None:
        y = super().read(timeout)
        if y is not None:
            self._got_block = True
            self._last_block = time.monotonic()
        return y

    def _check_stall(self) -> None:
        waited = time.monotonic() - self._last_block
        limit = self.stall_seconds if self._got_block else self.start_seconds
        if waited > limit:
            raise SourceLost(f"no audio from {self.describe()} for {waited:.1f} s")


class LiveSource(StallWatch, Source):
    """A PortAudio input device through ``sounddevice.InputStream``.

    Opens the device at its default sample rate (or ``samplerate``) and
    resamples to 16 kHz. Opens ``channel + 1`` channels when ``channel`` is
    given, else up to 2 (their mean is used).

    Parameters
    ----------
    device : int, str or None
        Device index, part of its name, or ``None`` for the default input.
    stall_seconds : float
        No block for this long (after the first) means the input is lost.
    start_seconds : float
        Allowance for the first block after opening (some drivers are slow).
    """

    def __init__(self, device: int | str | None = None, *, channel: int | None = None,
                 samplerate: float | None = None, stall_seconds: float = 5.0, start_seconds: float = 10.0,
                 queue_seconds: float = 10.0, block_seconds: float = 0.1):
        super().__init__(channel=channel, queue_seconds=queue_seconds, block_seconds=block_seconds)
        self.device = device
        self.samplerate = samplerate
        self.stall_seconds = stall_seconds
        self.start_seconds = start_seconds
        self.device_info: dict | None = None
        self._stream = None
        self._died = threading.Event()
        self._last_block = 0.0
        self._got_block = False
        self._opened = 0

    def describe(self) -> str:
        if self.device_info:
            return f"input device {self.device_info['index']} ({self.device_info['name']})"
        return f"input device {self.device!r}" if self.device is not None else "the default input device"

    def _callback(self, indata, frames, time_info, status) -> None:
        # Audio thread: copy and enqueue only; logging happens in the consumer.
        if status.input_overflow:
            self.stats.overflows += 1
        self._push(indata.copy())

    def _finished(self) -> None:
        self._died.set()

    def start(self) -> None:
        """Open and start the stream; on a re-open, re-scan devices first (a USB mic may be back)."""
        sd = import_sounddevice()
        if self._opened:
            # PortAudio lists devices once per initialisation: re-initialise to see a re-plugged device.
            sd._terminate()
            sd._initialize()
            # Find it again by name: its index may have changed.
            info = resolve_device(self.device_info["name"] if self.device_info else self.device)
        else:
            info = resolve_device(self.device)
        channels = self.channel + 1 if self.channel is not None else min(2, info["channels"])
        if channels > info["channels"]:
            raise AudioDeviceError(f"{info['name']} has {info['channels']} input channels, "
                                   f"cannot use channel {self.channel} (0-based)")
        rate = int(self.samplerate or info["default_samplerate"])
        self.device_info = info
        self._open_queue(rate)
        self._died.clear()
        try:
            self._stream = sd.InputStream(device=info["index"], channels=channels, samplerate=rate, dtype="float32",
                                          blocksize=max(1, int(round(self.block_seconds * rate))), latency="high",
                                          callback=self._callback, finished_callback=self._finished)
            self._stream.start()
        except sd.PortAudioError as exc:
            self._stream = None
            raise AudioDeviceError(f"cannot open {self.describe()} at {rate} Hz, {channels} ch: {exc}") from None
        self._opened_now()
        log.info("listening on %s at %d Hz, %d channel(s)", self.describe(), rate, channels)

    def _check_alive(self) -> None:
        if self._died.is_set() or (self._stream is not None and not self._stream.active):
            raise SourceLost(f"{self.describe()} stopped (disconnected?)")
        self._check_stall()

    def stop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:  # a dead device may fail to close; nothing left to save
                log.debug("closing %s: %s", self.describe(), exc)
