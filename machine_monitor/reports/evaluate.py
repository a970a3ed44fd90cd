"""How good is a detector? Labels for test clips, and the metrics the field reports.

Two jobs, both free of audio and torch:

* **labels**: from DCASE-style file names (``..._normal_...`` / ``anomaly_...``), from
  folders named ``normal`` / ``abnormal`` / ``anomaly``, or from a split file
  (``{"root": "..", "test": [[path, label, domain], ...]}``, label 1 = anomaly);
* **metrics**: pure functions over score and label arrays. ROC AUC and pAUC
  (``roc_auc_score(..., max_fpr=0.1)``, as the DCASE baselines compute it), precision,
  recall, F1 and the confusion matrix at a threshold (a clip is flagged when its score is
  *above* the threshold, as ``Detector.predict`` does), and DCASE-style AUC per domain:
  the normal clips of one domain against *all* anomalous clips.

Scores follow the project convention: higher = more anomalous.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from machine_monitor.errors import ConfigError

DEFAULT_MAX_FPR = 0.1
NORMAL, ANOMALY = 0, 1
# Name tokens and folder names that carry a label. DCASE uses "normal" / "anomaly";
# MIMII-style folders use "abnormal"; some copies use "anomalous".
LABEL_TOKENS = {"normal": NORMAL, "anomaly": ANOMALY, "anomalous": ANOMALY, "abnormal": ANOMALY}
DOMAIN_TOKENS = ("source", "target")
_TOKEN = re.compile(r"[^a-z0-9]+")


# -- labels ------------------------------------------------------------------
def _tokens(name: str) -> list[str]:
    return [t for t in _TOKEN.split(name.lower()) if t]


def _label_of_tokens(tokens: Iterable[str]) -> int | None:
    found = {LABEL_TOKENS[t] for t in tokens if t in LABEL_TOKENS}
    return found.pop() if len(found) == 1 else None  # none, or contradictory


def infer_label(path: str | os.PathLike) -> int | None:
    """The label a clip's name or folders carry: 0 normal, 1 anomaly, ``None`` unknown.

    The file name's tokens (split on ``_``, ``-``, ``.``, ...) decide first, e.g.
    ``section_00_source_test_anomaly_0003_pat_01.wav`` or ``normal_id_00_00000032.wav``;
    otherwise the nearest enclosing folder named ``normal``, ``abnormal``, ``anomaly``
    or ``anomalous``. A name with both a normal and an anomaly token has no label.
    """
    p = Path(path)
    label = _label_of_tokens(_tokens(p.stem))
    if label is not None:
        return label
    for folder in p.parent.parts[::-1]:
        if folder.lower() in LABEL_TOKENS:
            return LABEL_TOKENS[folder.lower()]
    return None


def infer_domain(path: str | os.PathLike) -> str | None:
    """``"source"`` or ``"target"`` when a DCASE 2022+ file name says so, else ``None``."""
    found = [t for t in _tokens(Path(path).stem) if t in DOMAIN_TOKENS]
    return found[0] if len(set(found)) == 1 else None


@dataclass
class LabelledClips:
    """Test clips with their labels (1 = anomaly) and domains (``None`` when unknown)."""

    paths: list[Path]
    labels: np.ndarray  # (n,) int64
    domains: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def label_paths(paths: Sequence[str | os.PathLike]) -> LabelledClips:
    """Label clips from their names and folders.

    Raises
    ------
    ConfigError
        No path given, or some paths carry no label (all of them are named, up to ten):
        a clip without a label cannot be counted, and dropping it silently would
        change the metrics.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("no audio files to evaluate")
    labels = [infer_label(p) for p in paths]
    missing = [str(p) for p, lab in zip(paths, labels) if lab is None]
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ConfigError(
            f"no label for {len(missing)} of {len(paths)} files: name them with a 'normal' or 'anomaly' "
            f"token, put them in normal/ and anomaly/ folders, or give a split file: "
            f"{', '.join(missing[:10])}{more}")
    return LabelledClips(paths, np.array(labels, dtype=np.int64), [infer_domain(p) for p in paths])


def read_split(path: str | os.PathLike, *, part: str = "test") -> LabelledClips:
    """The labelled ``part`` of a split file.

    The file is JSON: ``"root"`` (a folder relative to the split file's own folder,
    default ``".."``) and ``"test"``: a list of ``[path relative to root, label
    (1 = anomaly), domain]`` (the domain may be missing or null).
    """
    path = Path(path)
    try:
        split = json.loads(path.read_text())
        rows = split[part]
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such split file") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a split file with a {part!r} list ({type(exc).__name__}: {exc})") from None
    base = path.parent / split.get("root", "..")
    paths, labels, domains = [], [], []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) < 2 or row[1] not in (0, 1):
            raise ConfigError(f"{path}: {part}[{i}] must be [path, label 0/1, domain], not {row!r}")
        paths.append(base / row[0])
        labels.append(int(row[1]))
        domains.append(row[2] if len(row) > 2 else None)
    if not paths:
        raise ConfigError(f"{path}: the {part!r} list is empty")
    return LabelledClips(paths, np.array(labels, dtype=np.int64), domains)


# -- metrics -----------------------------------------------------------------
def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ConfigError(f"labels and scores must be 1-D and of equal length, got {y.shape} and {s.shape}")
    if not np.isin(y, (NORMAL, ANOMALY)).all():
        raise ConfigError("labels must be 0 (normal) or 1 (anomaly)")
    if not np.isfinite(s).all():
        raise ConfigError(f"{int(np.count_nonzero(~np.isfinite(s)))} scores are not finite")
    if np.unique(y).size < 2:
        kind = "normal" if y.size and y[0] == NORMAL else "anomalous"
        raise ConfigError(f"AUC needs both normal and anomalous clips, got {y.size} clips, all {kind}")
    return y, s


def ranking_metrics(labels, scores, *, max_fpr: float = DEFAULT_MAX_FPR) -> dict:
    """Threshold-free metrics: ROC AUC and pAUC.

    Parameters
    ----------
    labels : array-like [shape=(n,)]
        1 = anomaly, 0 = normal; both must occur.
    scores : array-like [shape=(n,)]
        Higher = more anomalous.
    max_fpr : float
        pAUC covers false-positive rates up to this; it is McClish-standardised by
        scikit-learn (0.5 = chance, 1 = perfect), which is what the DCASE baselines report.

    Returns
    -------
    dict with ``auc``, ``pauc``, ``max_fpr``.
    """
    from sklearn.metrics import roc_auc_score

    if not 0 < max_fpr <= 1:
        raise ConfigError(f"max_fpr must be in (0, 1], not {max_fpr!r}")
    y, s = _check(labels, scores)
    return {"auc": float(roc_auc_score(y, s)), "pauc": float(roc_auc_score(y, s, max_fpr=max_fpr)),
            "max_fpr": float(max_fpr)}


def threshold_metrics(labels, scores, threshold: float, *, per_clip=None) -> dict:
    """Precision, recall, F1 and the confusion matrix when clips above ``threshold`` are flagged.

    ``per_clip``: each clip's own threshold instead (a long file is judged by its worst
    window against the long-file threshold for its number of windows, as ``scan`` does);
    ``threshold`` is then only reported.

    Returns
    -------
    dict with ``threshold``, ``precision``, ``recall``, ``f1`` (0 where undefined, e.g.
    nothing flagged) and ``confusion_matrix``: ``[[tn, fp], [fn, tp]]`` (rows: true
    normal, anomaly; columns: predicted normal, anomaly).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y, s = _check(labels, scores)
    thr = threshold if per_clip is None else np.asarray(per_clip, dtype=np.float64)
    pred = (s > thr).astype(np.int64)
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    cm = confusion_matrix(y, pred, labels=[NORMAL, ANOMALY])
    return {"threshold": float(threshold), "precision": float(p), "recall": float(r), "f1": float(f),
            "confusion_matrix": cm.astype(int).tolist()}


def domain_auc(labels, scores, domains: Sequence[str | None]) -> dict[str, dict]:
    """DCASE-style AUC per domain: the normal clips of a domain against all anomalies.

    Clips whose domain is ``None`` count only as anomalies. Returns
    ``{domain: {"auc", "n_normal", "n_anomaly"}}``, sorted by domain, empty when no
    clip has a domain.
    """
    y, s = _check(labels, scores)
    dom = np.array([d if d is not None else "" for d in domains], dtype=object)
    if dom.shape != y.shape:
        raise ConfigError(f"got {dom.size} domains for {y.size} clips")
    out = {}
    for d in sorted({d for d in domains if d is not None}):
        keep = (y == ANOMALY) | (dom == d)
        if np.count_nonzero(y[keep] == NORMAL) == 0:
            continue  # a domain with anomalies only has no AUC of its own
        out[d] = {"auc": ranking_metrics(y[keep], s[keep])["auc"], "n_normal": int(np.count_nonzero(y[keep] == 0)),
                  "n_anomaly": int(np.count_nonzero(y[keep] == 1))}
    return out


def evaluate_scores(labels, scores, threshold: float, *, domains: Sequence[str | None] | None = None,
                    max_fpr: float = DEFAULT_MAX_FPR, per_clip_thresholds=None) -> dict:
    """Every metric at once: counts, ranking metrics, metrics at the threshold, per-domain AUC.

    Parameters
    ----------
    labels : array-like [shape=(n,)]
        1 = anomaly, 0 = normal.
    scores : array-like [shape=(n,)]
        Higher = more anomalous.
    threshold : float
        The model's alarm threshold.
    domains : sequence of str or None [len=n], optional
    per_clip_thresholds : array-like [shape=(n,)], optional
        The threshold each clip was judged against (long files: the long-file threshold).

    Returns
    -------
    dict (JSON-serialisable): ``n``, ``n_normal``, ``n_anomaly``, ``auc``, ``pauc``,
    ``max_fpr``, ``threshold``, ``precision``, ``recall``, ``f1``, ``confusion_matrix``,
    ``domains``.
    """
    y, s = _check(labels, scores)
    out = {"n": int(y.size), "n_normal": int(np.count_nonzero(y == NORMAL)),
           "n_anomaly": int(np.count_nonzero(y == ANOMALY))}
    out.update(ranking_metrics(y, s, max_fpr=max_fpr))
    out.update(threshold_metrics(y, s, threshold, per_clip=per_clip_thresholds))
    out["domains"] = domain_auc(y, s, domains) if domains is not None else {}
    return out
