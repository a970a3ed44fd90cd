"""Save and load a :class:`Detector` as a self-describing model directory.

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
# Detector.__init__ parameters saved with the model (device and progress are per run).
SAVED_PARAMS = ("features", "scorer", "aggregate", "percentile", "threshold_method", "val_fraction", "epochs",
                "batch_size", "lr", "patience", "hidden", "bottleneck", "seed", "channel", "scorer_params",
                "folds")
# model.json "detector" field -> the class that loads it ("ae" = Detector, also when the field is absent).
DETECTOR_KINDS = {
    "ae": "machine_monitor.detector:Detector",
    "aegmm": "machine_monitor.gmm:AEGMMDetector",
    "vaegmm": "machine_monitor.gmm:VAEGMMDetector",
    "ocsvm": "machine_monitor.baselines:OCSVMDetector",
    "iforest": "machine_monitor.baselines:IForestDetector",
}


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


def save_detector(det, path: str | os.PathLike) -> Path:
    """Write ``det`` to ``path`` atomically (replacing an existing model there)."""
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file as save_torch

    from machine_monitor.detector import score_stats

    nets = getattr(det, "networks_", None) or [det.network_]
    estimators = getattr(det.scorer_, "get_estimators", lambda: {})()

    def write_files(tmp: Path) -> None:
        # One network: its state dict as is; an ensemble: network k's tensors under "k.".
        state = {(f"{k}.{name}" if len(nets) > 1 else name): v.detach().cpu().contiguous()
                 for k, net in enumerate(nets) for name, v in net.state_dict().items()}
        save_torch(state, tmp / NETWORK_FILE)
        arrays = {"feature_mean": det.feature_mean_, "feature_std": det.feature_std_}
        arrays.update({f"scorer.{k}": np.ascontiguousarray(v) for k, v in det.scorer_.get_arrays().items()})
        save_np(arrays, tmp / ARRAYS_FILE)
        if estimators:
            import skops.io as sio

            sio.dump(estimators, tmp / SKOPS_FILE)

    manifest = {
        "detector": "ae",
        "sample_rate": det.feature_config_.sr,
        "params": {k: getattr(det, k) for k in SAVED_PARAMS},
        "features": det.feature_config_.to_dict(),
        "network": {**det.network_config_.to_dict(), "ensemble": len(nets)},
        "training": {
            **{k: v for k, v in vars(det.train_config_).items()},
            "epochs_run": len(det.history_),
            "best_val_loss": min(h["val_loss"] for h in det.history_),
            "history": det.history_,
            "fit_seconds": det.fit_seconds_,
            "n_clips": det.n_clips_,
            "skipped_clips": getattr(det, "skipped_clips_", []),
            "n_anomalies": getattr(det, "n_anomalies_", 0),
            "val_clips": det.val_clips_,
            "clip_seconds": det.clip_seconds_,
        },
        "scorer": {"name": det.scorer_.name, "params": det.scorer_.get_params(), "estimators": sorted(estimators)},
        "threshold": det.threshold_,
        "scores": {"train": score_stats(det.train_scores_), "validation": score_stats(det.val_scores_),
                   "train_values": det.train_scores_, "validation_values": det.val_scores_},
    }
    return write_model_dir(path, manifest, write_files)


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


def read_manifest(path: str | os.PathLike, *, required: tuple[str, ...] = (NETWORK_FILE, ARRAYS_FILE)) -> dict:
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


def load_detector(path: str | os.PathLike, *, device: str | None = None):
    """Rebuild a fitted :class:`Detector` from a verified model directory."""
    import torch
    from safetensors import SafetensorError
    from safetensors.numpy import load_file as load_np
    from safetensors.torch import load_file as load_torch

    from machine_monitor.autoencoder import DenseAutoencoder, NetworkConfig, TrainConfig, default_device
    from machine_monitor.detector import Detector
    from machine_monitor.errors import ConfigError
    from machine_monitor.features import FeatureConfig
    from machine_monitor.scoring import make_scorer

    root = Path(path)
    m = read_manifest(root, required=())
    kind = m.get("detector", "ae")
    if kind not in DETECTOR_KINDS:
        raise ModelError(f"{root / MANIFEST}: unknown detector kind {kind!r}")
    if kind != "ae":
        return detector_class(kind, source=root / MANIFEST)._from_model_dir(root, m, device=device)
    m = read_manifest(root)
    try:
        det = Detector(**{k: m["params"][k] for k in SAVED_PARAMS if k in m["params"]}, device=device)
        det.feature_config_ = FeatureConfig(**m["features"])
        det.network_config_ = NetworkConfig.from_dict(m["network"])
        train = m["training"]
        det.train_config_ = TrainConfig(**{k: train[k] for k in TrainConfig.__dataclass_fields__})
        scorer = make_scorer(m["scorer"]["name"], **m["scorer"]["params"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ModelError(f"{root / MANIFEST}: incomplete or invalid model description ({exc})") from None

    cfg, net_cfg = det.feature_config_, det.network_config_
    if m.get("sample_rate") != cfg.sr:
        raise ModelError(f"{root / MANIFEST}: sample_rate {m.get('sample_rate')} disagrees with features.sr {cfg.sr}")
    if net_cfg.input_dim != cfg.window_dims:
        raise ModelError(f"{root / MANIFEST}: network input {net_cfg.input_dim} does not match the features "
                         f"({cfg.kind}: {cfg.context} x {cfg.frame_dims} = {cfg.window_dims} dims)")
    try:
        arrays = load_np(str(root / ARRAYS_FILE))
        state = load_torch(str(root / NETWORK_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{root}: cannot read weights ({exc})") from None
    set_standardisation(det, arrays, root)

    n_nets = int(m["network"].get("ensemble", 1))
    nets = []
    for k in range(n_nets):
        prefix = f"{k}." if n_nets > 1 else ""
        net = DenseAutoencoder(net_cfg)
        try:
            net.load_state_dict({name[len(prefix):]: v for name, v in state.items() if name.startswith(prefix)})
        except RuntimeError as exc:
            raise ModelError(f"{root / NETWORK_FILE}: weights do not fit the network in model.json ({exc})") from None
        nets.append(net.to(torch.device(device) if device else default_device()).eval())
    det.networks_, det.network_ = nets, nets[0]

    scorer.set_arrays({k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("scorer.")})
    if m["scorer"].get("estimators"):
        scorer.set_estimators(_load_skops(root / SKOPS_FILE))
    det.scorer_ = scorer
    det.n_anomalies_ = train.get("n_anomalies", 0)
    return restore_fit_record(det, m, root)


def set_standardisation(det, arrays: dict, root: Path) -> None:
    """Restore ``feature_mean_``/``feature_std_``, refusing arrays that do not fit the features."""
    cfg = det.feature_config_
    for key in ("feature_mean", "feature_std"):
        if arrays.get(key) is None or arrays[key].shape != (cfg.frame_dims,):
            raise ModelError(f"{root / ARRAYS_FILE}: {key} does not match {cfg.frame_dims} feature dims")
    det.feature_mean_, det.feature_std_ = arrays["feature_mean"], arrays["feature_std"]


def restore_fit_record(det, m: dict, root: Path):
    """Restore the threshold and what ``fit`` recorded (history, clips, scores) from ``model.json``."""
    train = m.get("training", {})
    det.threshold_ = m["threshold"]
    det.history_ = train.get("history", [])
    det.fit_seconds_ = train.get("fit_seconds")
    det.n_clips_ = train.get("n_clips")
    det.val_clips_ = np.asarray(train.get("val_clips", []), dtype=np.int64)
    det.clip_seconds_ = train.get("clip_seconds")
    det.train_scores_ = np.asarray(m["scores"].get("train_values", []), dtype=np.float64)
    det.val_scores_ = np.asarray(m["scores"].get("validation_values", []), dtype=np.float64)
    det.manifest_ = m
    det.model_dir_ = root
    return det


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


def detector_class(kind: str, *, source: object = "detector"):
    """The class of a detector kind (``ae``, ``aegmm``, ``vaegmm``, ``ocsvm``, ``iforest``)."""
    import importlib

    from machine_monitor.errors import ConfigError

    try:
        module, name = DETECTOR_KINDS[kind].split(":")
    except (KeyError, TypeError):
        raise ConfigError(f"{source}: detector must be one of {', '.join(DETECTOR_KINDS)}, not {kind!r}") from None
    return getattr(importlib.import_module(module), name)


def make_detector(kind: str = "ae", **params):
    """A new, unfitted detector of ``kind`` with its keyword parameters."""
    return detector_class(kind)(**params)


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
