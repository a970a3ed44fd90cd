"""The live stream's memory and its health check: a ring buffer addressed by absolute sample
index, and why a window cannot be scored (dropout, digital silence, NaN)."""

from __future__ import annotations

import numpy as np

from machine_monitor.audio.io import SILENCE_PEAK

#: Samples per silence check (16 ms at 16 kHz).
SILENCE_CHUNK = 256


def signal_problem(y: np.ndarray, *, chunk: int = SILENCE_CHUNK) -> str | None:
    """Why a window cannot be scored, or ``None``.

    A window is refused when it holds NaN/inf or when any ``chunk`` of it is
    digitally silent (no sample above -96 dBFS): a dropout of even one feature
    frame would score as a huge anomaly, and says nothing about the machine.
    """
    if not np.isfinite(y).all():
        return "non-finite samples in the input"
    n = y.size // chunk * chunk
    peaks = np.abs(y[:n].reshape(-1, chunk)).max(axis=1) if n else np.abs(y).max(keepdims=True)
    if n < y.size:
        peaks = np.append(peaks, np.abs(y[n:]).max())
    silent = int(np.count_nonzero(peaks < SILENCE_PEAK))
    if silent:
        return f"digitally silent input ({silent} of {peaks.size} frames of a window below -96 dBFS)"
    return None


class RingBuffer:
    """The last ``capacity`` samples of a stream, addressed by absolute sample index."""

    def __init__(self, capacity: int):
        self._buf = np.zeros(int(capacity), dtype=np.float32)
        self.total = 0  # samples written since creation

    @property
    def capacity(self) -> int:
        return self._buf.size

    def extend(self, y: np.ndarray) -> None:
        y = np.asarray(y, dtype=np.float32)
        skip = max(0, y.size - self.capacity)  # older samples would be overwritten at once
        self.total += skip
        y = y[skip:]
        i = self.total % self.capacity
        first = min(y.size, self.capacity - i)
        self._buf[i:i + first] = y[:first]
        self._buf[:y.size - first] = y[first:]
        self.total += y.size

    def get(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` of the stream (a copy)."""
        if not self.total - self.capacity <= start <= stop <= self.total:
            raise IndexError(f"samples [{start}, {stop}) are not in the buffer "
                             f"[{max(0, self.total - self.capacity)}, {self.total})")
        i, n = start % self.capacity, stop - start
        if i + n <= self.capacity:
            return self._buf[i:i + n].copy()
        return np.concatenate([self._buf[i:], self._buf[:n - (self.capacity - i)]])
