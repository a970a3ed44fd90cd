"""machine-monitor: acoustic condition monitoring for factory machines.

>>> from machine_monitor import Detector
>>> det = Detector().fit(["normal_000.wav", "normal_001.wav", ...])   # doctest: +SKIP
>>> det.score(["suspect.wav"])                                        # doctest: +SKIP

Importing the package is light: torch loads only when a detector fits or loads.
"""

from __future__ import annotations

from machine_monitor.errors import (
    AudioDeviceError,
    AudioReadError,
    ConfigError,
    MachineMonitorError,
    ModelError,
    NotFittedError,
    SilentAudioError,
)

__version__ = "0.1.0"

__all__ = [
    "AudioDeviceError",
    "AudioReadError",
    "ConfigError",
    "Detector",
    "MachineMonitorError",
    "ModelError",
    "NotFittedError",
    "SilentAudioError",
    "__version__",
]


def __getattr__(name: str):
    # Lazy: `machine-monitor --help` must not pay for numpy/soundfile/torch imports.
    if name == "Detector":
        from machine_monitor.detector import Detector

        return Detector
    raise AttributeError(f"module 'machine_monitor' has no attribute {name!r}")
