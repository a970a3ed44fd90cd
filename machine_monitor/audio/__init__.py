"""Audio front-end: everything becomes 16 kHz mono float32 here."""

from machine_monitor.audio.io import (
    AUDIO_EXTENSIONS,
    SAMPLE_RATE,
    check_signal,
    find_audio_files,
    load_audio,
    read_blocks,
    to_mono,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "SAMPLE_RATE",
    "check_signal",
    "find_audio_files",
    "load_audio",
    "read_blocks",
    "to_mono",
]
