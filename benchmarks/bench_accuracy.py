"""Accuracy and speed of our detectors against PyOD's AudioAE on every shared split.

For each split in ``../shared/data/splits/*.json`` (train: normal clips; test: [path,
label 1 = anomaly, domain]), each row below and each seed: fit on the training clips, score
the test clips, and record ROC AUC, pAUC (FPR <= 0.1, ``roc_auc_score(max_fpr=0.1)`` as the
DCASE baselines), DCASE-style AUC per domain, fit seconds, and scoring throughput in
x real time (seconds of test audio scored per wall-clock second, file reading included).
Prints one table: mean ± sample standard deviation over the seeds.

Supervised post-classifier rows (``SUPERVISED``: forests on the reconstruction
difference, which learn from labelled anomalies) are scored by 5-fold stratified,
seeded cross-validation over the labelled test clips: the autoencoder trains on the
split's training list once per seed; for each fold a forest learns from the other
folds' reconstructions and scores the held-out fold, so every clip is scored by a
forest that never saw it. Their "fit s" is the autoencoder's; their scoring time
includes the five forests' training.

    python benchmarks/bench_accuracy.py                       # 3 seeds, every row, every split
    python benchmarks/bench_accuracy.py --seeds 0 --only default --json /tmp/acc.json

Threads: OMP / OPENBLAS / MKL_NUM_THREADS and torch's intra-op threads are all set to
``--threads`` (default 2) before numpy or torch load, whatever the environment says, so
numbers from different machines and runs are comparable; say so when you change it.
Nothing is cached or written except ``--json OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS_DIR = ROOT.parent / "shared" / "data" / "splits"

# Our rows: name -> keyword arguments of machine_monitor.Detector (seed is added per run).
# "default" is whatever Detector() does today, so the table follows the shipped defaults.
# A "detector" key picks another kind (detectors.registry.DETECTOR_KINDS) with the other keys as its parameters.
DETECTORS: dict[str, dict] = {
    "default": {},
    "ae-peak": {"detector": "ae"},
    "ae-mahalanobis": {"scorer": "mahalanobis"},
    "ae-iforest": {"scorer": "iforest"},
    "aegmm": {"detector": "aegmm"},
    "vaegmm": {"detector": "vaegmm"},
    "ocsvm": {"detector": "ocsvm"},
    "iforest": {"detector": "iforest"},
}
# Supervised post-classifiers: Detector kwargs of the autoencoder + the scorer that is cross-validated.
SUPERVISED: dict[str, dict] = {
    "hist-rf (5-fold CV)": {"scorer": "hist-rf"},
    "diff-rf (5-fold CV)": {"scorer": "diff-rf"},
    "hist-rf logmel (5-fold CV)": {"scorer": "hist-rf", "features": "logmel"},
}
CV_FOLDS = 5
# The peer: PyOD's DCASE-style autoencoder (written outside this project), on the same
# front-end as our default (16 kHz, 128 mels, hop 512, 5 stacked frames), 40 epochs.
PYOD_ROW = "pyod AudioAE"
PYOD_KWARGS = {"n_mels": 128, "context": 5, "hop_length": 512, "sr": 16000, "epoch_num": 40}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None) -> argparse.Namespace:
    rows = [*DETECTORS, *SUPERVISED, PYOD_ROW]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=rows, metavar="NAME",
                    help=f"run only this row (repeatable); one of: {', '.join(rows)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    ap.add_argument("--splits", type=Path, nargs="+", help=f"split files (default: every *.json in {SPLITS_DIR})")
    ap.add_argument("--threads", type=int, default=2, help="OMP/OPENBLAS/MKL and torch threads (default: 2)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write every run and the summary here")
    args = ap.parse_args(argv)
    args.rows = args.only or rows
    return args


def set_threads(n: int) -> None:
    """Pin the BLAS/OpenMP pools before numpy or torch create them."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)


def read_train_test(split_path: Path) -> tuple[list[Path], object]:
    from machine_monitor.reports.evaluate import read_split

    split = json.loads(split_path.read_text())
    base = split_path.parent / split.get("root", "..")
    return [base / p for p in split["train"]], read_split(split_path)


def cross_validated_scores(row: str, seed: int, train: list[Path], test: list[Path], labels):
    """A supervised row: AE on ``train``, forest scores of ``test`` by stratified k-fold CV."""
    from machine_monitor import Detector
    from machine_monitor.scorers.postclassifiers import out_of_fold_scores
    from machine_monitor.scorers.registry import make_scorer

    kwargs = dict(SUPERVISED[row])
    scorer = make_scorer(kwargs.pop("scorer"), seed=seed, **kwargs.pop("scorer_params", {}))
    model = Detector(**kwargs, seed=seed)
    t0 = time.perf_counter()
    model.fit(train)  # normal clips only; the network never sees a test clip
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    recons = [model.reconstruct_signal(model.load_signal(p)) for p in test]
    scorer.context = model.network_config_.input_dim // model.feature_config_.frame_dims
    scores = out_of_fold_scores(scorer, recons, labels, n_splits=CV_FOLDS, seed=seed)
    return scores, fit_s, time.perf_counter() - t0, len(model.history_)


def fit_and_score(row: str, seed: int, train: list[Path], test: list[Path]):
    """Fit one row on ``train``, score ``test``; returns (scores, fit s, score s, epochs trained)."""
    if row == PYOD_ROW:
        from pyod.models.audio_ae import AudioAE

        model = AudioAE(**PYOD_KWARGS, random_state=seed)
        t0 = time.perf_counter()
        model.fit([str(p) for p in train])  # AudioAE takes str paths, not Path objects
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = model.decision_function([str(p) for p in test])
    else:
        from machine_monitor.detectors.registry import DEFAULT_KIND, make_detector

        kwargs = dict(DETECTORS[row])
        # No "detector" key: the shipped default kind ("default"), or the autoencoder for ae-* rows.
        kind = kwargs.pop("detector", DEFAULT_KIND if row == "default" else "ae")
        model = make_detector(kind, **kwargs, seed=seed)
        t0 = time.perf_counter()
        model.fit(train)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = model.score(test)
    epochs = model.history_[-1].get("epoch", 0) if getattr(model, "history_", None) else PYOD_KWARGS["epoch_num"]
    return scores, fit_s, time.perf_counter() - t0, epochs


def mean_sd(values: list[float], fmt: str) -> str:
    m = statistics.fmean(values)
    return f"{m:{fmt}}" if len(values) < 2 else f"{m:{fmt}} ± {statistics.stdev(values):{fmt}}"


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys((r["split"], r["row"]) for r in runs):
        rs = [r for r in runs if (r["split"], r["row"]) == key]
        out.append({"split": key[0], "row": key[1], "seeds": [r["seed"] for r in rs],
                    **{k: [r[k] for r in rs] for k in ("auc", "pauc", "fit_seconds", "x_realtime")}})
    return out


def format_table(summary: list[dict], n_seeds: int) -> str:
    head = ("split", "detector", "AUC", "pAUC (FPR<=0.1)", "fit s", "scoring x real time")
    rows = [(s["split"], s["row"], mean_sd(s["auc"], ".3f"), mean_sd(s["pauc"], ".3f"),
             mean_sd(s["fit_seconds"], ".1f"), mean_sd(s["x_realtime"], ".0f")) for s in summary]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    note = f"(mean ± sample standard deviation over {n_seeds} seeds)" if n_seeds > 1 else "(one seed)"
    if any(s["row"] in SUPERVISED for s in summary):
        note += (f"\n(5-fold CV) rows: supervised forests, {CV_FOLDS}-fold stratified cross-validation (seeded) over "
                 "the labelled test clips; each clip scored by a forest that never saw it; AE trained on the "
                 "training list")
    return "\n".join(s.rstrip() for s in [line.format(*head), line.format(*("-" * w for w in widths)),
                                           *(line.format(*r) for r in rows), note])


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import numpy as np
    import soundfile as sf
    import torch

    from machine_monitor.reports.evaluate import domain_auc, ranking_metrics

    torch.set_num_threads(args.threads)
    splits = args.splits or sorted(SPLITS_DIR.glob("*.json"))
    if not splits:
        print(f"no split files in {SPLITS_DIR} (the shared data sits beside the checkout)", file=sys.stderr)
        return 2
    import pyod

    settings = {"threads": args.threads, "seeds": args.seeds, "rows": args.rows,
                "detectors": {r: DETECTORS[r] for r in args.rows if r in DETECTORS},
                "supervised": {r: SUPERVISED[r] for r in args.rows if r in SUPERVISED}, "cv_folds": CV_FOLDS,
                "pyod_audioae": PYOD_KWARGS, "torch": torch.__version__, "pyod": pyod.__version__,
                "cuda": torch.cuda.is_available(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"threads {args.threads}, torch {torch.__version__}, pyod {pyod.__version__}, "
          f"{'CUDA' if settings['cuda'] else 'CPU only'}, {os.cpu_count()} CPUs", file=sys.stderr)
    runs = []
    t_start = time.perf_counter()
    for split_path in splits:
        train, test = read_train_test(split_path)
        audio_s = sum(sf.info(p).duration for p in test.paths)
        name = split_path.stem
        print(f"{name}: {len(train)} training clips, {len(test)} test clips ({int(test.labels.sum())} anomalous, "
              f"{audio_s:.0f} s)", file=sys.stderr)
        for seed in args.seeds:
            for row in args.rows:
                if row in SUPERVISED:
                    scores, fit_s, score_s, epochs = cross_validated_scores(row, seed, train, test.paths,
                                                                            test.labels)
                else:
                    scores, fit_s, score_s, epochs = fit_and_score(row, seed, train, test.paths)
                scores = np.asarray(scores, dtype=np.float64)
                m = ranking_metrics(test.labels, scores)
                run = {"split": name, "row": row, "seed": seed, "auc": m["auc"], "pauc": m["pauc"],
                       "domain_auc": {d: v["auc"] for d, v in domain_auc(test.labels, scores, test.domains).items()},
                       "fit_seconds": fit_s, "epochs": epochs, "score_seconds": score_s,
                       "x_realtime": audio_s / score_s}
                runs.append(run)
                print(f"  seed {seed} {row:<26} AUC {m['auc']:.3f}  pAUC {m['pauc']:.3f}  fit {fit_s:6.1f} s  "
                      f"({epochs} epochs)  scoring {run['x_realtime']:.0f}x real time", file=sys.stderr)
    summary = summarise(runs)
    print(format_table(summary, len(args.seeds)))
    total = time.perf_counter() - t_start
    print(f"total {total:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "total_seconds": total, "summary": summary,
                                         "runs": runs}, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
