"""Every detector kind by the name ``model.json`` and ``--detector`` use: one explicit table.

Kinds are imported when asked for (torch loads only when a detector is made or loaded);
nothing registers itself as an import side effect.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from machine_monitor.errors import ConfigError, ModelError

#: kind -> "module:class". ``ae`` is also the kind of a model.json without a ``detector`` field.
DETECTOR_KINDS = {
    "ae": "machine_monitor.detectors.detector:Detector",
    "aegmm": "machine_monitor.detectors.gmm:AEGMMDetector",
    "vaegmm": "machine_monitor.detectors.gmm:VAEGMMDetector",
    "ocsvm": "machine_monitor.detectors.baselines:OCSVMDetector",
    "iforest": "machine_monitor.detectors.baselines:IForestDetector",
    "multiview": "machine_monitor.detectors.multiview:MultiViewDetector",
}
#: The kind ``train`` uses unless told otherwise.
DEFAULT_KIND = "multiview"


def detector_class(kind: str, *, source: object = "detector"):
    """The class of a detector kind (see ``DETECTOR_KINDS``)."""
    try:
        module, name = DETECTOR_KINDS[kind].split(":")
    except (KeyError, TypeError, AttributeError):
        raise ConfigError(f"{source}: detector must be one of {', '.join(DETECTOR_KINDS)}, not {kind!r}") from None
    return getattr(importlib.import_module(module), name)


def make_detector(kind: str = DEFAULT_KIND, **params):
    """A new, unfitted detector of ``kind`` with its keyword parameters."""
    cls = detector_class(kind)
    try:
        return cls(**params)
    except TypeError as exc:  # a parameter this kind does not have
        raise ConfigError(f"detector {kind!r}: {exc}") from None


def load_detector(path: str | os.PathLike, *, device: str | None = None):
    """Rebuild a fitted detector of whatever kind a verified model directory holds."""
    from machine_monitor.persistence import MANIFEST, read_manifest  # numpy: not for `--help`

    root = Path(path)
    m = read_manifest(root)
    kind = m.get("detector", "ae")
    if kind not in DETECTOR_KINDS:
        raise ModelError(f"{root / MANIFEST}: unknown detector kind {kind!r}")
    return detector_class(kind, source=root / MANIFEST)._from_model_dir(root, m, device=device)
