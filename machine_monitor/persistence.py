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


# -- model.json schema -------------------------------------------------------------
# Everything model.json may say is checked before any part of the model is built: a
# string threshold, a NaN, a hidden layer of 12,000 units or a 200,000-deep JSON must
# be a one-line ModelError, not a traceback, a model that never alarms, or 3.6 GB.
MAX_MANIFEST_BYTES = 32 << 20
MAX_JSON_DEPTH = 24
MAX_MODEL_FILE_BYTES = {NETWORK_FILE: 512 << 20, ARRAYS_FILE: 256 << 20, SKOPS_FILE: 256 << 20}
# A skops file is a zip: bound what its members expand to, and how many there are.
MAX_SKOPS_EXPANDED_BYTES = 1 << 30
MAX_SKOPS_MEMBERS = 200_000
MAX_SKOPS_RATIO = 200
MAX_LAYER_UNITS = 4096
MAX_NETWORK_PARAMETERS = 50_000_000
MAX_ENSEMBLE = 64
MAX_VALUES = 10_000_000


class _Invalid(Exception):
    """One schema violation (turned into a ModelError naming the file)."""


def _num(v, where: str, *, lo=None, hi=None, integer=False, optional=False, lo_open=False):
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(f"{where} must be a {'whole ' if integer else ''}number, not {v!r}"[:200])
    if integer and not float(v).is_integer():
        raise _Invalid(f"{where} must be a whole number, not {v!r}")
    if not np.isfinite(v):
        raise _Invalid(f"{where} must be finite, not {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise _Invalid(f"{where} must be {'>' if lo_open else '>='} {lo}, not {v!r}")
    if hi is not None and v > hi:
        raise _Invalid(f"{where} must be <= {hi}, not {v!r}")


def _dict(m, key: str, where: str, *, optional=False) -> dict:
    v = m.get(key)
    if v is None and optional:
        return {}
    if not isinstance(v, dict):
        raise _Invalid(f"{where}{key} must be an object, not {type(v).__name__}" if key in m
                       else f"{where}{key} is missing")
    return v


def _numbers(v, where: str, *, limit: int = MAX_VALUES) -> None:
    if not isinstance(v, list):
        raise _Invalid(f"{where} must be a list of numbers, not {type(v).__name__}")
    if len(v) > limit:
        raise _Invalid(f"{where} holds {len(v):,} values (at most {limit:,})")
    for x in v:
        _num(x, where)


def _depth_ok(obj, limit: int = MAX_JSON_DEPTH) -> bool:
    todo = [(obj, 1)]
    while todo:
        node, d = todo.pop()
        if d > limit:
            return False
        if isinstance(node, dict):
            todo.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            todo.extend((v, d + 1) for v in node)
    return True


def validate_manifest(m) -> None:
    """Check a parsed ``model.json`` against the schema; raises ``_Invalid`` with the first problem."""
    if not isinstance(m, dict):
        raise _Invalid(f"must be a JSON object, not {type(m).__name__}")
    if not _depth_ok(m):
        raise _Invalid(f"nested deeper than {MAX_JSON_DEPTH} levels")
    kind = m.get("detector", "ae")
    if not isinstance(kind, str):
        raise _Invalid(f"detector must be a name, not {kind!r}")
    _num(m.get("sample_rate"), "sample_rate", lo=1000, hi=384_000, integer=True)
    files = _dict(m, "files", "")
    if len(files) > 16:
        raise _Invalid(f"files lists {len(files)} entries (at most 16)")
    for name, digest in files.items():
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _Invalid(f"files[{name!r}] must be a sha256 hex digest")
    params = _dict(m, "params", "")
    for key, lo, hi in (("epochs", 1, 1_000_000), ("patience", 1, 1_000_000), ("batch_size", 1, 1 << 20),
                        ("folds", 1, MAX_ENSEMBLE), ("bottleneck", 1, MAX_LAYER_UNITS), ("seed", 0, 2**63),
                        ("channel", 0, 63)):
        if key in params:
            _num(params[key], f"params.{key}", lo=lo, hi=hi, integer=True, optional=True)
    for key, lo, hi, lo_open in (("lr", 0, 10, True), ("val_fraction", 0, 1, True), ("percentile", 0, 100, True)):
        if key in params:
            _num(params[key], f"params.{key}", lo=lo, hi=hi, lo_open=lo_open, optional=True)
    if "hidden" in params:
        _layers(params["hidden"], "params.hidden")
    features = _dict(m, "features", "")
    for key, hi in (("sr", 384_000), ("n_fft", 1 << 16), ("hop_length", 1 << 16), ("n_mels", 1024),
                    ("context", 1 << 20), ("stride", 1 << 20)):
        if key in features:
            _num(features[key], f"features.{key}", lo=1, hi=hi, integer=True)
    if "fmax" in features:
        _num(features["fmax"], "features.fmax", lo=0, hi=192_000, lo_open=True, optional=True)
    net = m.get("network")
    if net is not None:
        if not isinstance(net, dict):
            raise _Invalid("network must be an object")
        _num(net.get("input_dim"), "network.input_dim", lo=1, hi=1 << 20, integer=True)
        _num(net.get("bottleneck"), "network.bottleneck", lo=1, hi=MAX_LAYER_UNITS, integer=True)
        _num(net.get("ensemble", 1), "network.ensemble", lo=1, hi=MAX_ENSEMBLE, integer=True)
        hidden = _layers(net.get("hidden"), "network.hidden")
        sizes = [int(net["input_dim"]), *hidden, int(net["bottleneck"]), *hidden[::-1], int(net["input_dim"])]
        n_params = sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * int(net.get("ensemble", 1))
        if n_params > MAX_NETWORK_PARAMETERS:
            raise _Invalid(f"network has {n_params:,} weights (at most {MAX_NETWORK_PARAMETERS:,})")
    thr = _dict(m, "threshold", "")
    _num(thr.get("value"), "threshold.value")
    if not isinstance(thr.get("method"), str):
        raise _Invalid(f"threshold.method must be a name, not {thr.get('method')!r}")
    for key in ("n", "n_scores"):
        if key in thr:
            _num(thr[key], f"threshold.{key}", lo=0, integer=True, optional=True)
    for key in ("percentile", "contamination", "expected_false_alarm_rate"):
        if key in thr:
            _num(thr[key], f"threshold.{key}", lo=0, hi=100, optional=True)
    scores = _dict(m, "scores", "", optional=True)
    for key in ("train_values", "validation_values"):
        if key in scores:
            _numbers(scores[key], f"scores.{key}")
    training = _dict(m, "training", "", optional=True)
    if "history" in training and not isinstance(training["history"], list):
        raise _Invalid("training.history must be a list")
    if "clip_seconds" in training:
        _num(training["clip_seconds"], "training.clip_seconds", lo=0, optional=True)


def _layers(v, where: str) -> list[int]:
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 16:
        raise _Invalid(f"{where} must be a list of 1-16 layer sizes, not {v!r}"[:200])
    for x in v:
        _num(x, where, lo=1, hi=MAX_LAYER_UNITS, integer=True)
    return [int(x) for x in v]


# Entries that make a folder with a model.json someone's data rather than a model.
_DATA_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".csv", ".jsonl"}


def check_model_destination(dest: str | os.PathLike) -> Path:
    """Refuse to write a model over anything but a model directory (or nothing, or an empty folder).

    A model directory is recognised by its ``model.json`` (a machine-monitor manifest).
    A file, a link, a folder without one, or a model folder that also holds subfolders or
    recordings is refused: replacing it would destroy someone's data.
    """
    dest = Path(dest)
    if dest.is_symlink():
        raise ModelError(f"{dest}: is a symbolic link; refusing to replace it with a model (give the real folder)")
    if not dest.exists():
        return dest
    if not dest.is_dir():
        raise ModelError(f"{dest}: exists and is not a model directory; refusing to replace it")
    entries = sorted(p.name for p in dest.iterdir())
    if not entries:
        return dest
    mpath = dest / MANIFEST
    try:
        if not mpath.is_file() or mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError
        m = json.loads(mpath.read_text())
        if not isinstance(m, dict) or "schema_version" not in m or not isinstance(m.get("files", {}), dict):
            raise ValueError
    except (OSError, ValueError, RecursionError, UnicodeDecodeError):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ModelError(f"{dest}: exists and is not a model directory (no machine-monitor {MANIFEST}; holds "
                         f"{shown}); refusing to replace it") from None
    # A stray file of an older model may go; folders and recordings are someone's data.
    others = [e for e in entries if e != MANIFEST and e not in m.get("files", {})
              and ((dest / e).is_dir() or Path(e).suffix.lower() in _DATA_SUFFIXES)]
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ModelError(f"{dest}: holds folders or recordings that are not part of its model ({shown}); "
                         "refusing to replace it")
    return dest


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
    dest = check_model_destination(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        write_files(tmp)
        full = {"schema_version": SCHEMA_VERSION, "format": "machine-monitor detector",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **manifest, "versions": package_versions()}
        full["files"] = {p.name: sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=_json_default) + "\n")
        check_model_destination(dest)  # again: it may have changed while the parts were written
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
    size = mpath.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ModelError(f"{mpath}: {size:,} bytes, larger than any model description ({MAX_MANIFEST_BYTES:,})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{mpath}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ModelError(f"{mpath}: nested deeper than any model description") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise ModelError(f"{mpath}: schema version {version!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        validate_manifest(manifest)
    except _Invalid as exc:
        raise ModelError(f"{mpath}: invalid model description: {exc}") from None
    files = manifest["files"]
    for name in required:
        if name not in files:
            raise ModelError(f"{mpath}: lists no {name}")
    for name, digest in files.items():
        f = root / name
        if Path(name).name != name:
            raise ModelError(f"{mpath}: file entry {name!r} is not a plain file name")
        if not f.is_file():
            raise ModelError(f"{f}: missing from the model directory")
        limit = MAX_MODEL_FILE_BYTES.get(name, 64 << 20)
        if f.stat().st_size > limit:
            raise ModelError(f"{f}: {f.stat().st_size:,} bytes, larger than a model part may be ({limit:,})")
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
        arrays = dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read arrays ({exc})") from None
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise ModelError(f"{path}: array {name} holds NaN or infinite values")
    return arrays


def save_tensors(path: Path, tensors: dict) -> None:
    """Named torch tensors (network weights) to a safetensors file."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict:
    """Named torch tensors from a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read weights ({exc})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise ModelError(f"{path}: weights {name} hold NaN or infinite values")
    return tensors


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
        infos = z.infolist()
        expanded = sum(i.file_size for i in infos)
        if len(infos) > MAX_SKOPS_MEMBERS or expanded > MAX_SKOPS_EXPANDED_BYTES or \
                expanded > MAX_SKOPS_RATIO * max(path.stat().st_size, 1 << 20):
            raise ModelError(f"{path}: expands to {expanded:,} bytes in {len(infos):,} parts, more than "
                             f"scikit-learn parts of a model hold (at most {MAX_SKOPS_EXPANDED_BYTES:,})")
        with z.open("schema.json") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ModelError(f"{path}: its schema is larger than {MAX_MANIFEST_BYTES:,} bytes")
        schema = json.loads(raw)
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
