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
    "load_detector",
    "make_detector",
]


def __getattr__(name: str):
    # Lazy: `machine-monitor --help` must not pay for numpy/soundfile/torch imports.
    if name == "Detector":
        from machine_monitor.detectors.detector import Detector

        return Detector
    if name in ("make_detector", "load_detector"):
        from machine_monitor.detectors import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'machine_monitor' has no attribute {name!r}")
