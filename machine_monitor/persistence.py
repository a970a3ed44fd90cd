"""Model-directory I/O: the files, their hashes and the allow-lists (imports no detector).

Layout (the contract in DESIGN.md)::

    models/<name>/
      model.json           schema, every parameter, threshold, score statistics,
                           package versions, sha256 of every other file
      network.safetensors  autoencoder weights and BatchNorm buffers
      arrays.safetensors   feature standardisation and scorer arrays
      scorer.skops         scikit-learn parts, when a scorer has any

Nothing here unpickles: safetensors holds plain tensors, skops loads only types
on an explicit allow-list. A directory is written next to its destination and
renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from machine_monitor.errors import ModelError

SCHEMA_VERSION = 1
MANIFEST = "model.json"
NETWORK_FILE = "network.safetensors"
ARRAYS_FILE = "arrays.safetensors"
SKOPS_FILE = "scorer.skops"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("machine-monitor", "numpy", "torch", "scikit-learn", "librosa", "soundfile", "safetensors", "skops"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _swap_into_place(tmp: Path, dest: Path) -> None:
    # The old model survives until the new one is complete.
    os.chmod(tmp, 0o755)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_model_dir(dest: str | os.PathLike, manifest: dict, write_files) -> Path:
    """Write a model directory atomically: ``write_files(tmp)`` writes the parts, then
    ``model.json`` (``manifest`` plus schema, creation time, versions and every file's sha256)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        write_files(tmp)
        full = {"schema_version": SCHEMA_VERSION, "format": "machine-monitor detector",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **manifest, "versions": package_versions()}
        full["files"] = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=_json_default) + "\n")
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def read_manifest(path: str | os.PathLike, *, required: tuple[str, ...] = (ARRAYS_FILE,)) -> dict:
    """Parse and verify ``model.json``: schema, and the sha256 of every listed file."""
    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise ModelError(f"{root}: no such model directory")
    if not mpath.is_file():
        raise ModelError(f"{root}: not a model directory (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{mpath}: not valid JSON ({exc})") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise ModelError(f"{mpath}: schema version {version!r} is not supported (expected {SCHEMA_VERSION})")
    files = manifest.get("files") or {}
    for name in required:
        if name not in files:
            raise ModelError(f"{mpath}: lists no {name}")
    for name, digest in files.items():
        f = root / name
        if Path(name).name != name:
            raise ModelError(f"{mpath}: file entry {name!r} is not a plain file name")
        if not f.is_file():
            raise ModelError(f"{f}: missing from the model directory")
        if sha256(f) != digest:
            raise ModelError(f"{f}: sha256 does not match model.json (file changed or tampered with)")
    return manifest


# Types the scikit-learn parts may contain (forests of the post-classifiers, the
# OC-SVM / isolation-forest baselines); a file holding anything else is refused.
TRUSTED_SKOPS_TYPES = [
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.ensemble._iforest.IsolationForest",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._classes.ExtraTreeRegressor",
    "sklearn.tree._tree.Tree",
    "sklearn.svm._classes.OneClassSVM",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.pipeline.Pipeline",
    "builtins.dict",
]
# Containers and numbers any fitted estimator holds.
PLAIN_SKOPS_TYPES = ["builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
                     "builtins.bool", "numpy.ndarray", "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32"]


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Named numpy arrays to a safetensors file."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Named numpy arrays from a safetensors file (plain tensors: nothing is executed)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read arrays ({exc})") from None


def save_tensors(path: Path, tensors: dict) -> None:
    """Named torch tensors (network weights) to a safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict:
    """Named torch tensors from a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read weights ({exc})") from None


def save_estimators(path: Path, estimators: dict) -> None:
    import skops.io as sio

    sio.dump(estimators, path)


def load_estimators(path: Path) -> dict:
    """Scikit-learn parts from a skops file, refusing any type outside the trusted list."""
    return _load_skops(path)


def _skops_types(path: Path) -> set[str]:
    """Every ``module.class`` named anywhere in a skops file's schema."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        schema = json.loads(z.read("schema.json"))
    found, todo = set(), [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "__class__" in node:
                found.add(f"{node.get('__module__', '')}.{node['__class__']}")
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return found


def _load_skops(path: Path):
    import skops.io as sio

    try:
        # skops trusts every scikit-learn class by default; this list is narrower: walk
        # every node of the file's schema and refuse a type that is not on it.
        found = _skops_types(path) | set(sio.get_untrusted_types(file=path))
        untrusted = sorted(found - set(TRUSTED_SKOPS_TYPES) - set(PLAIN_SKOPS_TYPES))
        if untrusted:
            raise ModelError(f"{path}: contains types outside the trusted list: {', '.join(untrusted)}")
        return sio.load(path, trusted=TRUSTED_SKOPS_TYPES)
    except ModelError:
        raise
    except Exception as exc:  # skops raises many kinds on a corrupt file
        raise ModelError(f"{path}: cannot load scikit-learn parts ({exc})") from None
