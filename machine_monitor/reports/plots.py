"""Pictures of an evaluation: ROC, precision-recall, score distributions, per-clip scores.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas: no pyplot, no
GUI backend, no global state, so this works on a headless server and in threads. Import
this module lazily (it imports matplotlib).

Every function takes ``labels`` (1 = anomaly), ``scores`` (higher = more anomalous) and
the alarm ``threshold`` (clips *above* it are flagged) and writes one PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from machine_monitor.reports.evidence import short_name

NORMAL_COLOR, ANOMALY_COLOR, THRESHOLD_COLOR = "#1f77b4", "#d62728", "#333333"
DOMAIN_STYLES = {"source": ":", "target": "-."}
PLOT_FILES = ("roc.png", "pr.png", "score_distribution.png", "instance_scores.png")
#: Up to this many clips, every clip is named on the instance plot's axis.
MAX_TICK_NAMES = 40


def _figure(width: float = 6.4, height: float = 4.8) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def _title(ax, text: str, subtitle: str | None) -> None:
    ax.set_title(text if not subtitle else f"{text}\n{subtitle}", fontsize=11)


def plot_roc(labels, scores, threshold: float, path, *, domains: Sequence[str | None] | None = None,
             max_fpr: float = 0.1, subtitle: str | None = None) -> Path:
    """ROC curve with AUC, the pAUC region (FPR <= ``max_fpr``) shaded, the operating point at
    the threshold, and one curve per domain (its normals against all anomalies) when known."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fig, ax = _figure(6.0, 5.6)
    fpr, tpr, _ = roc_curve(y, s)
    ax.axvspan(0, max_fpr, color="#f2c14e", alpha=0.25, lw=0,
               label=f"pAUC region, FPR \u2264 {max_fpr:g} (pAUC {roc_auc_score(y, s, max_fpr=max_fpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance (AUC 0.5)")
    ax.plot(fpr, tpr, color=ANOMALY_COLOR, lw=2, drawstyle="steps-post",
            label=f"all clips (AUC {roc_auc_score(y, s):.3f})")
    dom = np.array([d or "" for d in domains]) if domains is not None else np.array([""] * y.size)
    for d in sorted(set(dom) - {""}):
        keep = (y == 1) | (dom == d)
        if np.unique(y[keep]).size == 2:
            f, t, _ = roc_curve(y[keep], s[keep])
            ax.plot(f, t, lw=1.3, ls=DOMAIN_STYLES.get(d, "--"), drawstyle="steps-post",
                    label=f"{d} normals vs all anomalies (AUC {roc_auc_score(y[keep], s[keep]):.3f})")
    flagged = s > threshold
    op_fpr, op_tpr = flagged[y == 0].mean(), flagged[y == 1].mean()
    ax.plot(op_fpr, op_tpr, "o", ms=9, mfc="white", mec=THRESHOLD_COLOR, mew=2,
            label=f"model threshold {threshold:.4g}: FPR {op_fpr:.2f}, TPR {op_tpr:.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
           xlabel="false-positive rate (normal clips flagged)", ylabel="true-positive rate (anomalies caught)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _title(ax, "ROC curve", subtitle)
    return _save(fig, path)


def plot_pr(labels, scores, threshold: float, path, *, subtitle: str | None = None) -> Path:
    """Precision-recall curve with average precision, the chance level (share of anomalies)
    and the operating point at the threshold."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fig, ax = _figure(6.0, 5.0)
    prec, rec, _ = precision_recall_curve(y, s)
    prevalence = y.mean()
    ax.axhline(prevalence, color="grey", lw=1, ls="--", label=f"chance (share of anomalies {prevalence:.2f})")
    ax.plot(rec, prec, color=ANOMALY_COLOR, lw=2, drawstyle="steps-post",
            label=f"detector (average precision {average_precision_score(y, s):.3f})")
    flagged = s > threshold
    tp = int(np.count_nonzero(flagged & (y == 1)))
    op_prec = tp / flagged.sum() if flagged.any() else 1.0
    ax.plot(tp / max(1, (y == 1).sum()), op_prec, "o", ms=9, mfc="white", mec=THRESHOLD_COLOR, mew=2,
            label=f"model threshold {threshold:.4g}: precision {op_prec:.2f}, recall {tp / max(1, (y == 1).sum()):.2f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.02), xlabel="recall (anomalies caught)",
           ylabel="precision (flagged clips that are anomalies)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    _title(ax, "Precision-recall curve", subtitle)
    return _save(fig, path)


def _log_scale(s: np.ndarray) -> bool:
    """Scores spanning more than two decades read better on a log axis."""
    return bool(s.min() > 0 and s.max() / s.min() > 100)


def plot_score_distribution(labels, scores, threshold: float, path, *, subtitle: str | None = None) -> Path:
    """Histogram of scores by true label (left) and a box plot with every clip (right),
    both with the threshold line."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    fig = Figure(figsize=(9.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax, bx = fig.subplots(1, 2, width_ratios=(2.2, 1))
    log = _log_scale(np.append(s, threshold))
    lo, hi = min(s.min(), threshold), max(s.max(), threshold)
    bins = np.geomspace(lo, hi, 31) if log else np.linspace(lo, hi, 31)
    groups = [(s[y == 0], "normal", NORMAL_COLOR), (s[y == 1], "anomaly", ANOMALY_COLOR)]
    for vals, name, color in groups:
        ax.hist(vals, bins=bins, color=color, alpha=0.45, label=f"{name} ({vals.size} clips)")
        ax.hist(vals, bins=bins, color=color, histtype="step", lw=1.5)
    ax.axvline(threshold, color=THRESHOLD_COLOR, lw=2, ls="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="anomaly score (higher = more anomalous)", ylabel="number of clips",
           xscale="log" if log else "linear")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _title(ax, "Score distribution by true label", subtitle)

    bx.boxplot([g[0] for g in groups], widths=0.5, showfliers=False, medianprops={"color": "black"})
    bx.set_xticks([1, 2], [g[1] for g in groups])
    rng = np.random.default_rng(0)  # horizontal jitter only, so overlapping clips stay visible
    for k, (vals, _, color) in enumerate(groups, start=1):
        bx.plot(k + rng.uniform(-0.12, 0.12, vals.size), vals, "o", ms=3.5, color=color, alpha=0.6)
    bx.axhline(threshold, color=THRESHOLD_COLOR, lw=2, ls="--")
    bx.set(ylabel="anomaly score", yscale="log" if log else "linear", xlabel="true label")
    bx.grid(alpha=0.3, axis="y")
    bx.set_title("Box plot, every clip shown", fontsize=11)
    return _save(fig, path)


def plot_instance_scores(labels, scores, threshold: float, path, *, names: Sequence[str] | None = None,
                         subtitle: str | None = None) -> Path:
    """Each clip's score against the threshold (alibi-detect's instance-score plot).

    Clips are grouped by true label (normal first) in their given order; colour = true
    label, filled marker = flagged by the threshold. Missed anomalies and false alarms are
    counted in the legend. With ``names``, clips are named on the axis (up to
    ``MAX_TICK_NAMES``), else the false alarms and missed anomalies are named beside their points.
    """
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    order = np.argsort(y, kind="stable")
    y, s = y[order], s[order]
    x = np.arange(s.size)
    flagged = s > threshold
    fig, ax = _figure(max(6.4, min(14.0, 4 + s.size * 0.05)), 4.6)
    for lab, name, color in ((0, "normal", NORMAL_COLOR), (1, "anomaly", ANOMALY_COLOR)):
        m = y == lab
        ax.scatter(x[m & flagged], s[m & flagged], color=color, s=28, zorder=3,
                   label=f"{name}, flagged ({np.count_nonzero(m & flagged)})")
        ax.scatter(x[m & ~flagged], s[m & ~flagged], facecolors="white", edgecolors=color, s=28, zorder=3,
                   label=f"{name}, not flagged ({np.count_nonzero(m & ~flagged)})")
    ax.axhline(threshold, color=THRESHOLD_COLOR, lw=2, ls="--", label=f"threshold {threshold:.4g}")
    n_normal = int(np.count_nonzero(y == 0))
    if 0 < n_normal < y.size:
        ax.axvline(n_normal - 0.5, color="grey", lw=1)
    ax.set(xlabel=f"clip (normal: 0-{n_normal - 1}, anomaly: {n_normal}-{y.size - 1})",
           ylabel="anomaly score", yscale="log" if _log_scale(np.append(s, threshold)) else "linear",
           xlim=(-1, s.size))
    if names is not None and s.size <= MAX_TICK_NAMES:
        ax.set_xticks(x, [short_name(Path(str(names[i])).stem, max_chars=28) for i in order], rotation=90,
                      fontsize=6)
    elif names is not None:
        _name_wrong_verdicts(ax, x, s, y, threshold, [names[i] for i in order])
    ax.grid(alpha=0.3)
    # Outside the axes: inside, it hides the highest-scoring clips, the ones that matter.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="true label, verdict",
              title_fontsize=8)
    _title(ax, "Score of each clip against the threshold", subtitle)
    return _save(fig, path)


def _name_wrong_verdicts(ax, x, s, y, threshold: float, names: Sequence[str], *, most: int = 15) -> None:
    """Too many clips to name on the axis: name the ones the threshold gets wrong (false alarms and
    missed anomalies), the ``most`` farthest on the wrong side first."""
    wrong = np.flatnonzero((s > threshold) != (y == 1))
    if wrong.size == 0:
        return
    log_axis = ax.get_yscale() == "log"
    far = np.abs(np.log(s[wrong] / threshold)) if log_axis and (s[wrong] > 0).all() else np.abs(s[wrong] - threshold)
    shown = wrong[np.argsort(-far)[:most]]
    for k, i in enumerate(sorted(shown)):
        ax.annotate(short_name(Path(str(names[i])).stem, max_chars=26), (x[i], s[i]), xytext=(4, 6 if k % 2 else -9),
                    textcoords="offset points", fontsize=6, color=ANOMALY_COLOR if y[i] == 1 else NORMAL_COLOR,
                    rotation=20)
    more = f", {shown.size} of {wrong.size} shown" if shown.size < wrong.size else ""
    ax.set_xlabel(f"{ax.get_xlabel()}; named: clips on the wrong side of the threshold{more}")


def write_plots(outdir: str | os.PathLike, labels, scores, threshold: float, *,
                domains: Sequence[str | None] | None = None, names: Sequence[str] | None = None,
                max_fpr: float = 0.1, subtitle: str | None = None) -> list[Path]:
    """Write every plot (``PLOT_FILES``) into ``outdir`` (created); returns their paths."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_roc(labels, scores, threshold, out / PLOT_FILES[0], domains=domains, max_fpr=max_fpr,
                 subtitle=subtitle),
        plot_pr(labels, scores, threshold, out / PLOT_FILES[1], subtitle=subtitle),
        plot_score_distribution(labels, scores, threshold, out / PLOT_FILES[2], subtitle=subtitle),
        plot_instance_scores(labels, scores, threshold, out / PLOT_FILES[3], names=names, subtitle=subtitle),
    ]
