"""The service's audio inputs: every PortAudio stream in one place, one stream per device.

Several machines can listen to channels of one multichannel interface: the
interface is opened **once** (with as many channels as the highest one used)
and each block goes to every machine on it, each keeping its channel. Opening a
device twice fails on most drivers (ALSA ``hw``: "device busy").

PortAudio lists devices only when it is initialised, so finding a USB
microphone that was plugged back in needs a re-initialisation, which closes
*every* stream of the process. :class:`DeviceHub` does that itself, at most
every ``rescan_seconds`` while other devices run, and re-opens their streams at
once: their machines see a short gap (their windows restart; no event), not a
lost device. One machine's device failing therefore never stops the others.

Such a re-scan costs the other machines a window of monitoring (their windows restart after the
gap), so while a device stays missing the re-scans become rarer: after ``rescan_seconds`` (60 s),
then twice as long each time it is still missing, up to ``rescan_max_seconds`` (15 min). With no
other device running, every re-open attempt re-scans.

A :class:`HubSource` has the shape of every other source (``start``, ``read``,
``stop``, ``stats``, ``describe``), so the machine loop cannot tell it from a
file replay; ``generation`` changes whenever its stream was re-opened.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from machine_monitor.audio.sources import Source, SourceLost, StallWatch, import_sounddevice, resolve_device
from machine_monitor.errors import AudioDeviceError

log = logging.getLogger(__name__)


class _Stream:
    """One device's PortAudio stream and the sources fed from it."""

    def __init__(self, key: str, device, samplerate: float | None):
        self.key = key
        self.device = device
        self.samplerate = samplerate
        self.info: dict | None = None
        self.stream = None
        self.channels = 0
        self.rate = 0
        self.children: tuple[HubSource, ...] = ()  # attached now
        self.members: list[HubSource] = []  # every source made for it (the channels to open)
        self.died = threading.Event()
        self.generation = 0

    def callback(self, indata, frames, time_info, status) -> None:
        # Audio thread: one copy, handed to every machine on this device; nothing else.
        block = indata.copy()
        for child in self.children:
            if status.input_overflow:
                child.stats.overflows += 1
            child._push(block)

    def finished_for(self, generation: int):
        """The stream's finished callback: only the stream of ``generation`` may declare the device dead."""
        def finished() -> None:
            if self.generation == generation and self.stream is not None:
                self.died.set()
        return finished

    def describe(self) -> str:
        if self.info:
            return f"input device {self.info['index']} ({self.info['name']})"
        return f"input device {self.device!r}" if self.device is not None else "the default input device"


class DeviceHub:
    """Opens, shares, re-scans and closes the service's input devices.

    Parameters
    ----------
    rescan_seconds, rescan_max_seconds : float
        While other devices are running, re-initialise PortAudio (to find a
        re-plugged device) at most this often, doubling while the device stays
        missing, up to the maximum.
    block_seconds : float
        Duration of one block.
    """

    def __init__(self, *, rescan_seconds: float = 60.0, rescan_max_seconds: float = 900.0,
                 block_seconds: float = 0.1):
        self.rescan_seconds = rescan_seconds
        self.rescan_max_seconds = rescan_max_seconds
        self.block_seconds = block_seconds
        self._lock = threading.RLock()
        self._streams: dict[str, _Stream] = {}
        self._last_rescan = -math.inf
        self._rescan_wait = rescan_seconds
        self.rescans = 0

    def source(self, device, *, channel: int | None = None, samplerate: float | None = None,
               stall_seconds: float = 5.0, start_seconds: float = 10.0) -> HubSource:
        key = f"{'default' if device is None else str(device).lower()}@{samplerate or 'native'}"
        with self._lock:
            st = self._streams.setdefault(key, _Stream(key, device, samplerate))
            src = HubSource(self, st, channel=channel, stall_seconds=stall_seconds, start_seconds=start_seconds,
                            block_seconds=self.block_seconds)
            st.members.append(src)
        return src

    # -- called by HubSource ------------------------------------------------------------
    def attach(self, child: HubSource) -> None:
        with self._lock:
            st = child._st
            need = self._channels_needed(st, child)
            if st.stream is None or st.died.is_set() or need > st.channels:
                self._close(st)
                self._open(st, need, rescan=st.info is not None or st.died.is_set())
            child._open_queue(st.rate)
            st.children = (*[c for c in st.children if c is not child], child)

    def detach(self, child: HubSource) -> None:
        with self._lock:
            st = child._st
            st.children = tuple(c for c in st.children if c is not child)
            if not st.children:
                self._close(st)

    def close(self) -> None:
        with self._lock:
            for st in self._streams.values():
                st.children = ()
                self._close(st)

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _channels_needed(st: _Stream, extra: HubSource | None = None) -> int:
        """Channels to open: up to the highest any machine on this device uses (all of them, so that
        machines starting one after the other share one opening)."""
        kids = [*st.members, *([extra] if extra is not None else [])]
        if any(c.channel is None for c in kids):
            return -1  # the mean of up to 2 channels (alone on its device: the configuration checks)
        return max(c.channel for c in kids) + 1

    def _open(self, st: _Stream, need: int, *, rescan: bool) -> None:
        sd = import_sounddevice()
        others = any(s.stream is not None for s in self._streams.values() if s is not st)
        rescanned = False
        if rescan and (not others or time.monotonic() - self._last_rescan >= self._rescan_wait):
            self._rescan(sd, keep=st)
            rescanned = others
        try:
            info = resolve_device(st.info["name"] if st.info else st.device)
        except AudioDeviceError:
            if rescanned:  # it cost the other machines a window and found nothing: wait longer next time
                self._rescan_wait = min(2 * self._rescan_wait, self.rescan_max_seconds)
            raise
        self._rescan_wait = self.rescan_seconds
        channels = min(2, info["channels"]) if need < 0 else need
        if channels > info["channels"]:
            raise AudioDeviceError(f"{info['name']} has {info['channels']} input channels, cannot use channel "
                                   f"{channels - 1} (0-based)")
        rate = int(st.samplerate or info["default_samplerate"])
        st.died.clear()
        st.generation += 1
        st.info = info
        try:
            stream = sd.InputStream(device=info["index"], channels=channels, samplerate=rate, dtype="float32",
                                    blocksize=max(1, int(round(self.block_seconds * rate))), latency="high",
                                    callback=st.callback, finished_callback=st.finished_for(st.generation))
            st.stream, st.channels, st.rate = stream, channels, rate
            stream.start()
        except sd.PortAudioError as exc:
            st.stream = None
            raise AudioDeviceError(f"cannot open {info['name']} at {rate} Hz, {channels} ch: {exc}") from None
        log.info("listening on %s at %d Hz, %d channel(s)", st.describe(), rate, channels)

    def _rescan(self, sd, *, keep: _Stream) -> None:
        """Re-initialise PortAudio (new device list); re-open every other running stream at once."""
        running = [s for s in self._streams.values() if s is not keep and s.stream is not None]
        for s in running:
            self._close(s)
        sd._terminate()
        sd._initialize()
        self._last_rescan = time.monotonic()
        self.rescans += 1
        for s in running:
            try:
                self._open(s, self._channels_needed(s), rescan=False)
            except AudioDeviceError as exc:  # it went away meanwhile: its machines report it
                log.warning("%s: %s", s.describe(), exc)
                s.died.set()

    @staticmethod
    def _close(st: _Stream) -> None:
        stream, st.stream = st.stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception as exc:  # a dead device may fail to close; nothing left to save
                log.debug("closing %s: %s", st.describe(), exc)


class HubSource(StallWatch, Source):
    """One machine's channel (or the mean of the first two) of a device opened by a :class:`DeviceHub`."""

    def __init__(self, hub: DeviceHub, st: _Stream, *, channel: int | None, stall_seconds: float,
                 start_seconds: float, block_seconds: float):
        super().__init__(channel=channel, block_seconds=block_seconds)
        self.hub = hub
        self._st = st
        self.stall_seconds = stall_seconds
        self.start_seconds = start_seconds
        self._attached = False
        self._last_block = 0.0
        self._got_block = False
        self._opened = 0

    @property
    def generation(self) -> int:
        """Changes whenever the stream was re-opened (the audio is not continuous across it)."""
        return self._st.generation

    def describe(self) -> str:
        where = self._st.describe()
        return where if self.channel is None else f"channel {self.channel} of {where}"

    def start(self) -> None:
        self.hub.attach(self)
        self._attached = True
        self._opened_now()

    def stop(self) -> None:
        if self._attached:
            self._attached = False
            self.hub.detach(self)

    def _check_alive(self) -> None:
        if self._st.died.is_set():
            raise SourceLost(f"{self.describe()} stopped (disconnected?)")
        self._check_stall()
