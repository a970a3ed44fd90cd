"""Does the default rank well on any machine? Members alone vs the fused default vs PyOD.

For every shared split (``../shared/data/splits/*.json``: dcase2023-valve, sensiml-fan, the
five dcase2020-<type> sanity checks) and every SYNTHETIC machine kind x fault mechanism
(``machine_monitor.synth.mechanism_sound``: written once to ``--synth-dir``), each seed:

* fit the default multi-view detector once on the training clips; its members are the
  single-view detectors (a member alone is seeded by its view, so it is the same model as
  inside the bank: ``tests/test_multiview.py``), so the rows ``peak``, ``mean``, ``std`` and
  ``frame`` are the members' standardised scores, ``default`` their fusion (``whitened-max``:
  decorrelated, then the maximum), and ``fuse max`` (no decorrelation) / ``fuse top2`` /
  ``fuse mean`` the other fusion rules on the very same members;
* PyOD's AudioAE (same front-end as the DCASE baseline, 40 epochs) in the same run;
* score the test files as ``scan`` / ``evaluate`` do: a file up to 1.25 clip lengths whole,
  a longer one in clip-length segments, its score the worst segment's;
* AUC and pAUC (``roc_auc_score(max_fpr=0.1)``); for SYNTHETIC kinds, per mechanism: that
  mechanism's anomalies against the kind's normal test clips.

``fit s``: the members' own fit seconds for member rows, the whole multi-view fit for the
fused rows (calibration excluded: it does not change the ranking), AudioAE's fit.

    python benchmarks/bench_generalisation.py                         # everything, seeds 0 1 2
    python benchmarks/bench_generalisation.py --seeds 0 --only-synthetic --kinds hum
    python benchmarks/bench_generalisation.py --json /tmp/gen.json --threads 1
    python benchmarks/bench_generalisation.py --costs          # fit, scan and floor timings (valve split)

``--costs`` (valve split, one process, ``--threads``): the default's fit on the 50 training
clips with and without its out-of-fold calibration (or ``--model DIR``: a saved valve model,
fit not timed); then, interleaved in the same process,
median of ``--runs`` passes over the 150 test clips: the *floor* (read the file and compute
its log-mel, nothing else), our ``score_file`` (what ``scan`` does per file), our
``score_files`` (the same rows, 16 short files per pass through the networks), and PyOD's
AudioAE ``decision_function`` (fitted on the same 50 clips).

Threads: OMP / OPENBLAS / MKL and torch intra-op threads are set to ``--threads`` (default 1:
the machine is shared) before numpy and torch load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS_DIR = ROOT.parent / "shared" / "data" / "splits"
MEMBERS = ("peak", "mean", "std", "frame")
FUSED = {"default": "whitened-max", "fuse max": "max", "fuse top2": "top2", "fuse mean": "mean"}
PYOD_ROW = "pyod AudioAE"
BATCHED = "ours (score_files, 16)"
PYOD_KWARGS = {"n_mels": 128, "context": 5, "hop_length": 512, "sr": 16000, "epoch_num": 40}
ROWS = (*MEMBERS, *FUSED, PYOD_ROW)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--splits", type=Path, nargs="*", help=f"split files (default: every *.json in {SPLITS_DIR})")
    ap.add_argument("--kinds", nargs="*", help="SYNTHETIC machine kinds (default: all)")
    ap.add_argument("--only-synthetic", action="store_true")
    ap.add_argument("--only-real", action="store_true")
    ap.add_argument("--no-pyod", action="store_true", help="leave out PyOD's AudioAE")
    ap.add_argument("--synth-dir", type=Path, default=Path("/tmp/mm_synthetic_mechanisms"),
                    help="where the SYNTHETIC sets are written (reused when present)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, metavar="OUT")
    ap.add_argument("--costs", action="store_true", help="measure fit / scan / floor costs instead (valve split)")
    ap.add_argument("--runs", type=int, default=3, help="--costs: timed passes per contender (median)")
    ap.add_argument("--save-model", type=Path, metavar="DIR", help="--costs: save the calibrated valve model here")
    ap.add_argument("--model", type=Path, metavar="DIR",
                    help="--costs: time the scan with this saved valve model (no fit timings)")
    ap.add_argument("--matrix", type=Path, metavar="JSON", help="print the compact table of an earlier --json run")
    return ap.parse_args(argv)


def costs(args) -> int:
    """Fit seconds, and scan throughput against the floor and PyOD, on the valve split."""
    import numpy as np

    from machine_monitor.detectors.multiview import MultiViewDetector
    from machine_monitor.features import frames
    from machine_monitor.filescore import score_file, score_files

    ds = real_sets([SPLITS_DIR / "dcase2023-valve.json"])[0]
    train, test = ds["train"], [p for p, _, _ in ds["test"]]
    fit_bare = fit_full = None
    if args.model:
        from machine_monitor.detectors.registry import load_detector

        det = load_detector(args.model)
        print(f"model {args.model} (fit not timed)")
    else:
        t0 = time.perf_counter()
        bare = MultiViewDetector(seed=0)
        bare.calibrate_on_fit = False
        bare.fit(train)
        fit_bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        det = MultiViewDetector(seed=0).fit(train)
        fit_full = time.perf_counter() - t0
        print(f"fit on {len(train)} clips: {fit_bare:.1f} s members only "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in bare.member_fit_seconds_.items())}); "
              f"{fit_full:.1f} s with the out-of-fold calibration (goal <= 30 s)")
    if args.save_model:
        det.save(args.save_model)
    from pyod.models.audio_ae import AudioAE

    peer = AudioAE(**PYOD_KWARGS, random_state=0)
    peer.fit([str(p) for p in train])
    cfg = det.feature_config

    def floor():
        for p in test:
            frames(det.load_signal(p), cfg)

    def ours():
        for p in test:
            score_file(det, p)

    def ours_batched():
        for _ in score_files(det, test):
            pass

    def pyod():
        peer.decision_function([str(p) for p in test])

    contenders = {"floor (read + log-mel)": floor, "ours (score_file)": ours, BATCHED: ours_batched, PYOD_ROW: pyod}
    floor(), ours(), ours_batched()  # warm caches (mel basis, numpy copies of the networks)
    times = {k: [] for k in contenders}
    for _ in range(args.runs):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    audio = sum(det.load_signal(p).size for p in test) / cfg.sr
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k, v in med.items():
        print(f"  {k:<26} {v:6.2f} s  {audio / v:7.0f}x real time  ({v / len(test) * 1000:.2f} ms a clip)")
    fl = med["floor (read + log-mel)"]
    for name in ("ours (score_file)", BATCHED):
        print(f"  {name}: / floor throughput {fl / med[name]:.2f} (goal >= 0.5); "
              f"/ PyOD {med[PYOD_ROW] / med[name]:.1f}x (goal >= 4); "
              f"beyond the floor {(med[name] - fl) / len(test) * 1000:.2f} ms a clip")
    print(f"  load average {os.getloadavg()[0]:.1f}, {args.threads} thread(s)")
    if args.json:
        args.json.write_text(json.dumps({"fit_bare_s": fit_bare, "fit_full_s": fit_full, "median_s": med,
                                         "runs": times, "audio_s": audio, "threads": args.threads,
                                         "load_average": os.getloadavg()}, indent=1))
    return 0


def set_threads(n: int) -> None:
    for var in THREAD_VARS:
        os.environ[var] = str(n)


# -- data ----------------------------------------------------------------------------
def real_sets(paths) -> list[dict]:
    out = []
    for path in sorted(paths or SPLITS_DIR.glob("*.json")):
        split = json.loads(path.read_text())
        base = path.parent / split.get("root", "..")
        test = [(str(base / p), int(lab), "all") for p, lab, *_ in split["test"]]
        out.append({"name": split.get("name", path.stem), "train": [str(base / p) for p in split["train"]],
                    "test": test, "synthetic": False})
    return out


def synthetic_sets(root: Path, kinds) -> list[dict]:
    from machine_monitor.synth import MACHINE_KINDS, write_mechanism_set

    out = []
    for kind in kinds or MACHINE_KINDS:
        index = root / f"{kind}.json"
        if index.is_file():
            split = json.loads(index.read_text())
        else:
            print(f"writing the SYNTHETIC {kind} set to {root} ...", file=sys.stderr)
            split = write_mechanism_set(root, kind=kind)
            index.write_text(json.dumps(split))
        out.append({"name": f"SYNTHETIC {kind}", "train": split["train"],
                    "test": [(p, int(lab), mech) for p, lab, mech in split["test"]], "synthetic": True})
    return out


# -- scoring -------------------------------------------------------------------------
def file_member_z(det, path: str) -> dict[str, float]:
    """Each member's standardised score of a file, scored as ``scan`` scores it (worst segment).

    Returns the members' z and the fused scores per rule, each the worst segment's.
    """
    import numpy as np

    from machine_monitor.detectors.multiview import fuse
    from machine_monitor.filescore import WHOLE_FILE_TOLERANCE, _segment_samples, segment_starts
    from machine_monitor.scorers.residual import aggregate

    y = det.load_signal(path)
    segment = _segment_samples(det, None)
    starts = [0] if y.size <= WHOLE_FILE_TOLERANCE * segment else segment_starts(y.size, segment, segment)
    per_segment = []
    for s in starts:
        part = y if len(starts) == 1 else y[s:s + segment]
        z = det.member_z(det.logmel(part))
        names = list(z)
        zs = np.stack([z[n] for n in names])  # (members, spans)
        row = {n: aggregate(zs[i], det.aggregate) for i, n in enumerate(names)}
        for rowname, rule in FUSED.items():
            row[rowname] = aggregate(fuse(zs, rule, whitening=det.whitening_), det.aggregate)
        per_segment.append(row)
    return {k: max(r[k] for r in per_segment) for k in per_segment[0]}


def run_multiview(ds: dict, seed: int) -> dict[str, tuple[list[float], float]]:
    from machine_monitor.detectors.multiview import MultiViewDetector

    det = MultiViewDetector(seed=seed)
    det.calibrate_on_fit = False  # the ranking does not depend on it (bench_alarms.py measures the alarms)
    det.fit(ds["train"])
    scores = [file_member_z(det, p) for p, _, _ in ds["test"]]
    out = {m: ([s[m] for s in scores], det.member_fit_seconds_[m]) for m in det.members_}
    out.update({r: ([s[r] for s in scores], det.fit_seconds_) for r in FUSED})
    return out, member_spread(det, ds, scores)


def member_spread(det, ds: dict, scores: list[dict]) -> dict[str, float]:
    """Each member's z spread on the normal test files over its spread out of fold (sd ratio).

    The threshold and the standardisation rest on out-of-fold scores (one network blind to
    the clip); new audio is scored by the mean of every fold network. 1 means new normal
    sound spreads as the calibration assumed; below 1, that member's z is squeezed on new
    audio and rarely wins the fused maximum (a diagnosis, not a goal).
    """
    import numpy as np

    normal = [i for i, (_, lab, _) in enumerate(ds["test"]) if lab == 0]
    out = {}
    for name in det.members_:
        oof = oof_clip_z(det, name)
        new = np.array([scores[i][name] for i in normal])
        out[name] = float(np.std(new) / max(np.std(oof), 1e-12)) if len(new) > 1 and len(oof) > 1 else float("nan")
    return out


def oof_clip_z(det, name: str):
    """Member ``name``'s out-of-fold standardised score of every training clip (its spans pooled
    as the clip score pools them): what its standardisation and the threshold rest on."""
    import numpy as np

    from machine_monitor.scorers.residual import aggregate

    m = det.members_[name]
    z = m.oof_z()
    bounds = np.cumsum([0] + [len(o) for o in m.oof_scores_])
    return np.array([aggregate(z[a:b], det.aggregate) for a, b in zip(bounds[:-1], bounds[1:])])


def run_pyod(ds: dict, seed: int) -> tuple[list[float], float]:
    from pyod.models.audio_ae import AudioAE

    model = AudioAE(**PYOD_KWARGS, random_state=seed)
    t0 = time.perf_counter()
    model.fit([str(p) for p in ds["train"]])
    fit_s = time.perf_counter() - t0
    return list(model.decision_function([str(p) for p, _, _ in ds["test"]])), fit_s


def metrics(ds: dict, scores) -> dict[str, tuple[float, float]]:
    """``{subset: (auc, pauc)}``: the whole set, and for SYNTHETIC kinds each mechanism."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    labels = np.array([lab for _, lab, _ in ds["test"]])
    groups = np.array([g for _, _, g in ds["test"]])
    s = np.asarray(scores, dtype=np.float64)
    subsets = {"all": np.ones(len(labels), bool)}
    if ds["synthetic"]:
        subsets = {m: (groups == m) | (labels == 0) for m in dict.fromkeys(groups[labels == 1])}
    return {k: (float(roc_auc_score(labels[m], s[m])), float(roc_auc_score(labels[m], s[m], max_fpr=0.1)))
            for k, m in subsets.items()}


def matrix(summary: list[dict]) -> list[str]:
    """One line per set/subset: AUC (mean ± sd) of every row, the default's pAUC and fit seconds."""
    cols = [r for r in ROWS if any(s["row"] == r for s in summary)]
    short = {"fuse max": "max", "fuse top2": "top2", "fuse mean": "mean-fuse", PYOD_ROW: "PyOD AE"}
    lines = [f"{'set':<20} {'subset':<11} " + " ".join(f"{short.get(c, c):>11}" for c in cols)
             + f" {'pAUC dflt':>11} {'fit s dflt':>10}"]
    for key in dict.fromkeys((s["set"], s["subset"]) for s in summary):
        by = {s["row"]: s for s in summary if (s["set"], s["subset"]) == key}
        cells = [mean_sd(by[c]["auc"], ".2f") if c in by else "-" for c in cols]
        d = by.get("default")
        lines.append(f"{key[0].replace('SYNTHETIC ', 'SYN '):<20} {key[1]:<11} " + " ".join(f"{c:>11}" for c in cells)
                     + (f" {mean_sd(d['pauc'], '.2f'):>11} {mean_sd(d['fit_seconds'], '.0f'):>10}" if d else ""))
    return lines


def mean_sd(values: list[float], fmt: str = ".3f") -> str:
    m = statistics.fmean(values)
    return f"{m:{fmt}}" if len(values) < 2 else f"{m:{fmt}} ± {statistics.stdev(values):{fmt}}"


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.costs:
        return costs(args)
    if args.matrix:
        print("\n".join(matrix(json.loads(args.matrix.read_text())["summary"])))
        return 0
    sets = [] if args.only_synthetic else real_sets(args.splits)
    if not args.only_real:
        sets += synthetic_sets(args.synth_dir, args.kinds)
    runs = []  # one record per (set, subset, row, seed)
    spreads = []  # one record per (set, seed): member_spread
    t_all = time.perf_counter()
    for ds in sets:
        for seed in args.seeds:
            t0 = time.perf_counter()
            results, spread = run_multiview(ds, seed)
            spreads.append({"set": ds["name"], "seed": seed, **spread})
            if not args.no_pyod:
                results[PYOD_ROW] = run_pyod(ds, seed)
            for row, (scores, fit_s) in results.items():
                for subset, (auc, pauc) in metrics(ds, scores).items():
                    runs.append({"set": ds["name"], "subset": subset, "row": row, "seed": seed, "auc": auc,
                                 "pauc": pauc, "fit_seconds": fit_s})
            print(f"{ds['name']} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    print(f"SYNTHETIC sets are generated (machine_monitor.synth), not recordings. Seeds {args.seeds}, "
          f"{args.threads} thread(s), {time.perf_counter() - t_all:.0f} s in all.")
    header = f"{'set':<28} {'subset':<12} {'row':<13} {'AUC':<14} {'pAUC (FPR<=0.1)':<16} {'fit s':<12}"
    print(header)
    print("-" * len(header))
    summary = []
    for key in dict.fromkeys((r["set"], r["subset"]) for r in runs):
        best_member = None
        for row in ROWS:
            rs = [r for r in runs if (r["set"], r["subset"], r["row"]) == (*key, row)]
            if not rs:
                continue
            auc = [r["auc"] for r in rs]
            rec = {"set": key[0], "subset": key[1], "row": row, "auc": auc, "pauc": [r["pauc"] for r in rs],
                   "fit_seconds": [r["fit_seconds"] for r in rs]}
            summary.append(rec)
            if row in MEMBERS and (best_member is None or statistics.fmean(auc) > best_member[1]):
                best_member = (row, statistics.fmean(auc))
            print(f"{key[0]:<28} {key[1]:<12} {row:<13} {mean_sd(auc):<14} {mean_sd(rec['pauc']):<16} "
                  f"{mean_sd(rec['fit_seconds'], '.1f'):<12}")
        default = [s for s in summary if (s["set"], s["subset"], s["row"]) == (*key, "default")]
        if default and best_member:
            gap = statistics.fmean(default[0]["auc"]) - best_member[1]
            print(f"{'':<28} {'':<12} default - best member ({best_member[0]}): {gap:+.3f}")
    print("(mean ± sample standard deviation over seeds)")
    print()
    print("\n".join(matrix(summary)))
    print()
    print("z spread of each member on the normal test files / out of fold (sd ratio, mean over seeds):")
    for name in dict.fromkeys(r["set"] for r in spreads):
        rs = [r for r in spreads if r["set"] == name]
        cells = [f"{m} {statistics.fmean(r[m] for r in rs):.2f}" for m in MEMBERS if m in rs[0]]
        print(f"{name:<22} " + "  ".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary, "spreads": spreads, "seeds": args.seeds,
                                         "threads": args.threads}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
