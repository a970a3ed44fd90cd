"""Argument helpers shared by several commands (no heavy imports here)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

DEFAULT_MODELS_DIR = Path("models")
# Folder names that say nothing about the machine: `recordings/normal` -> "recordings".
GENERIC_NAMES = {"normal", "train", "training", "data", "clips", "audio", "wav", "wavs", "test", "dev", "source",
                 "target"}


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", required=True, metavar="MODEL",
                   help="model directory, or a name under ./models (e.g. models/pump-3 or pump-3)")


def resolve_model(model: str) -> Path:
    """A model given as a directory, or as a bare name under ``./models``."""
    p = Path(model)
    if not p.exists() and len(p.parts) == 1 and (DEFAULT_MODELS_DIR / p).exists():
        return DEFAULT_MODELS_DIR / p
    return p


def default_model_name(folder: str | Path) -> str:
    """A model name from a training folder, skipping generic folder names."""
    p = Path(folder).resolve()
    for part in [p, *p.parents]:
        if part.name and part.name.lower() not in GENERIC_NAMES:
            return part.name
    return "detector"


def existing_audio_files(inputs: list[str], *, recursive: bool = False) -> list[Path]:
    """The audio files in ``inputs``; a missing input or no audio at all is a usage error."""
    from machine_monitor.audio.io import find_audio_files
    from machine_monitor.errors import ConfigError

    for item in inputs:
        if not Path(item).exists():
            raise ConfigError(f"{item}: no such file or folder")
    found = find_audio_files(inputs, recursive=recursive)
    if not found:
        raise ConfigError(f"no audio files in {', '.join(inputs)}")
    return found


def positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def add_channel_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", type=int, default=None, metavar="C",
                   help="use channel C (0-based) of multichannel audio instead of the mean of all channels")


# -- argument types: a bad value is a usage error (exit 2) naming the option, never a traceback --
def _whole_number_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return v

    parse.__name__ = parse.__qualname__ = f"{'positive' if minimum == 1 else 'nonnegative'}_int"
    parse.__doc__ = f"An integer >= {minimum} ({what})."
    return parse


positive_int = _whole_number_at_least(1, "epochs, batch size, folds, workers, ...")
nonnegative_int = _whole_number_at_least(0, "seed, ...")


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    v = _finite(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return v


def percentile(text: str) -> float:
    """A percentile in (0, 100]."""
    v = _finite(text)
    if not 0 < v <= 100:
        raise argparse.ArgumentTypeError(f"must be in (0, 100], got {text}")
    return v


def nonnegative_float(text: str) -> float:
    v = _finite(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def torch_device(text: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``; checked against the machine when the command runs."""
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def check_device(device: str | None) -> None:
    """Refuse a torch device this machine does not have (a one-line error, exit 2)."""
    from machine_monitor.errors import ConfigError

    if device is None or device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is available on this machine (use --device cpu)")
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple's Metal backend is not available on this machine")


def check_output_file(path: str | os.PathLike | None, option: str) -> None:
    """An output file must be creatable: its folder exists, and it is not a folder itself."""
    from machine_monitor.errors import ConfigError

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p}: is a directory; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{option} {p}: folder {parent} does not exist")
    if p.exists() and not p.is_file():
        raise ConfigError(f"{option} {p}: is not a regular file")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ConfigError(f"{option} {p}: not writable")


def check_output_dir(path: str | os.PathLike | None, option: str) -> None:
    """An output folder must be a folder (or creatable): not an existing file."""
    from machine_monitor.errors import ConfigError

    if path is None:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {p}: is a file, not a folder")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help when it has a real default and does not say it already.

    (argparse's ``ArgumentDefaultsHelpFormatter`` prints ``(default: None)`` on required
    options and repeats defaults the help already names.)
    """

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or action.required
                or not action.option_strings or "default" in text or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)"


class LibraryDefault:
    """An option whose default the library owns: ``--help`` shows the library's value, and a
    command passes on only what the user gave (:func:`given`), so defaults live in the library once.

    ``where`` is ``"module:Class.param"`` (a keyword default of ``Class.__init__``; several
    joined by ``+`` for an option of several values), or ``"module:CONSTANT"``; it is
    imported only when ``--help`` is printed, so building the parser stays light.
    """

    def __init__(self, where: str):
        self.where = where

    def value(self):
        import importlib
        import inspect

        module, _, name = self.where.partition(":")
        obj_name, _, param = name.partition(".")
        obj = getattr(importlib.import_module(module), obj_name)
        if not param:
            return obj
        values = tuple(inspect.signature(obj).parameters[p].default for p in param.split("+"))
        return values if len(values) > 1 else values[0]

    def __str__(self) -> str:
        v = self.value()
        return " ".join(map(str, v)) if isinstance(v, tuple) else str(v)

    __repr__ = __str__


def given(args, *names: str, rename: dict | None = None) -> dict:
    """The options in ``names`` that the user set (library defaults left out), as keyword arguments."""
    rename = rename or {}
    return {rename.get(n, n): getattr(args, n) for n in names
            if getattr(args, n, None) is not None and not isinstance(getattr(args, n), LibraryDefault)}


class RawDescriptionDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """:class:`DefaultsHelpFormatter` that keeps the description's own line breaks."""
