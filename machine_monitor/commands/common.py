"""Argument helpers shared by several commands (no heavy imports here)."""

from __future__ import annotations

import argparse
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
