"""One error hierarchy for everything a user can get wrong.

The CLI turns each of these into a one-line message and an exit code of 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MachineMonitorError(Exception):
    """Base class of every error machine-monitor raises on purpose."""


class AudioReadError(MachineMonitorError):
    """An audio file (or array) cannot be used: missing, unreadable, too short, ..."""


class SilentAudioError(AudioReadError):
    """The audio is digitally silent: scoring it would say nothing about the machine."""


class AudioDeviceError(MachineMonitorError):
    """A live input device is missing, busy, or PortAudio is not installed."""


class ModelError(MachineMonitorError):
    """A model directory is missing, incomplete, tampered with, or incompatible."""


class NotFittedError(MachineMonitorError, ValueError):
    """A detector was used before ``fit`` (or ``load``)."""


class ConfigError(MachineMonitorError, ValueError):
    """A parameter has a value that cannot work; the message quotes it."""
