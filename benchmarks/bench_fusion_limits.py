"""How close can a label-free fusion come to the best single member? A bound and a measurement.

Issue 11 asks the fused default to be no more than 0.02 AUC below the best single member on
every set. The best member is chosen *with* the labels, after the fact; the fusion must work
without knowing which view will see the fault. Two parts:

**The bound** (``--bound``, seconds, no data): ``M`` members whose standardised scores are
independent N(0, 1) on normal sound; a fault shifts one of them by ``d`` (that member alone
reaches ``AUC = Phi(d / sqrt 2)``). Against it: the maximum (the default's rule, after
decorrelation), and the Bayes rule for "one of the ``M``, nobody knows which", the mean of
``exp(d z - d^2 / 2)`` given the true ``d``: no label-free rule ranks better on this problem.
Then the same on a benchmark-sized list (20 normal, 20 fault clips, 2,000 lists): the best
member *on the list* (the largest of ``M`` sample AUCs, as the benchmark picks it) minus the
maximum's sample AUC, and how often that gap is within 0.02.

**The measurement** (SYNTHETIC sets, seeds 0-2): the default fitted as in
``bench_generalisation.py``; every member's and the default's AUC against the set's 20 normal
test clips *and* against ``--extra`` more normal clips of the same machine (written once to
``<synth-dir>/<kind>/extra/``, clip seeds disjoint from the set's); the spread of each member's
z on new normal clips over its out-of-fold spread (what the standardisation assumed); and the
share of fault clips above the member's own 95th percentile of out-of-fold clip z (what an
honestly calibrated alarm from that member alone could catch at 5 % false alarms).

    python benchmarks/bench_fusion_limits.py --bound
    python benchmarks/bench_fusion_limits.py --json /tmp/limits.json       # the bound and three sets
    python benchmarks/bench_fusion_limits.py --sets valve:drift --seeds 0 --extra 40
    python benchmarks/bench_fusion_limits.py --sets hum fan valve texture     # every SYNTHETIC set
    python benchmarks/bench_fusion_limits.py --promise --sets hum fan valve texture

``--promise``: does the calibrated clip threshold keep its promise (1 % of normal clips) on
new normal audio of each SYNTHETIC kind? The default fitted *with* its calibration, as
``train`` fits it, then the share of the ``--extra`` clips and the 20 listed normal clips that
``scan`` (``score_files``) flags, per seed. The spread ratios above say where to look: a member
whose new normal audio spreads wider than out of fold is the one that would break it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalisation import file_member_z, oof_clip_z, set_threads, synthetic_sets  # noqa: E402

#: The SYNTHETIC sets the default misses a goal on (benchmarks/README.md, issue 11).
DEFAULT_SETS = ("valve:drift", "hum:knocks", "texture:weak_clicks")
#: Seeds of the extra normal clips: below the set's normal test seeds (2**18 + i).
EXTRA_SEED = 2**17


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bound", action="store_true", help="the simulated bound only")
    ap.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), metavar="KIND[:MECHANISM]",
                    help="a kind alone: every mechanism of it (one fit per kind and seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--extra", type=int, default=80, help="more normal clips per kind (default 80)")
    ap.add_argument("--synth-dir", type=Path, default=Path("/tmp/mm_synthetic_mechanisms"))
    ap.add_argument("--promise", action="store_true",
                    help="the share of new normal clips the calibrated clip threshold flags, per kind")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, metavar="OUT")
    return ap.parse_args(argv)


def bound(members: int = 4, separations=(2.0, 2.5, 3.0, 3.5, 4.0), n: int = 100_000, seed: int = 0,
          lists: int = 2000, list_size: int = 20) -> list[dict]:
    """AUC of the oracle member, the maximum and the Bayes rule, ``members`` independent views;
    on ``lists`` lists of ``list_size`` normal and fault clips: the mean gap of the maximum to
    the best member on the list, and the share of lists where it is within 0.02."""
    import numpy as np
    from scipy.special import logsumexp
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n), np.ones(n)]
    rows = []
    for d in separations:
        normal = rng.standard_normal((n, members))
        fault = rng.standard_normal((n, members))
        fault[:, 0] += d
        z = np.concatenate([normal, fault])
        rows.append({"members": members, "d": d, "oracle": float(norm.cdf(d / np.sqrt(2))),
                     "max": float(roc_auc_score(labels, z.max(axis=1))),
                     "bayes": float(roc_auc_score(labels, logsumexp(d * z, axis=1)))})
        small = rng.standard_normal((lists, 2 * list_size, members))
        small[:, list_size:, 0] += d
        # Sample AUC = share of (normal, fault) pairs ranked right, for every list and member at once.
        auc = (small[:, None, :list_size] < small[:, list_size:, None]).mean(axis=(1, 2))
        top = small.max(axis=2)
        fused = (top[:, None, :list_size] < top[:, list_size:, None]).mean(axis=(1, 2))
        gap = fused - auc.max(axis=1)
        rows[-1].update({"list_gap": float(gap.mean()), "list_within_0.02": float((gap >= -0.02).mean())})
    return rows


def extra_normals(root: Path, kind: str, count: int) -> list[str]:
    """``count`` more normal clips of a SYNTHETIC kind (written once)."""
    import soundfile as sf

    from machine_monitor.synth import mechanism_sound

    paths = []
    for i in range(count):
        path = root / kind / "extra" / f"normal_{i:03d}.wav"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, mechanism_sound(10.0, kind=kind, seed=EXTRA_SEED + i), 16000, subtype="PCM_16")
        paths.append(str(path))
    return paths


def measure(ds: dict, mechanisms: list[str], extra: list[str], seed: int) -> dict[str, dict]:
    """Per mechanism, per member and the default: AUC vs the list's normals and vs ``extra``;
    each member's spread on new normals over out of fold, and its honest catch."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from machine_monitor.detectors.multiview import MultiViewDetector

    det = MultiViewDetector(seed=seed)
    det.calibrate_on_fit = False
    det.fit(ds["train"])
    normal = [file_member_z(det, p) for p, lab, _ in ds["test"] if lab == 0]
    more = [file_member_z(det, p) for p in extra]
    oof = {name: oof_clip_z(det, name) for name in det.members_}

    def auc(neg, pos):
        return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))

    out = {}
    for mechanism in mechanisms:
        faults = [file_member_z(det, p) for p, lab, m in ds["test"] if lab == 1 and m == mechanism]
        out[mechanism] = {}
        for name in [*det.members_, "default"]:
            a, b, c = (np.array([s[name] for s in rows]) for rows in (normal, faults, more))
            row = out[mechanism][name] = {"auc_list": auc(a, b), "auc_extra": auc(c, b)}
            if name in oof:
                row.update({"sd_ratio_extra": float(c.std() / max(oof[name].std(), 1e-12)),
                            "faults_above_oof95": float((b > np.percentile(oof[name], 95)).mean())})
    return out


def promise(ds: dict, extra: list[str], seed: int) -> dict:
    """The calibrated default's clip threshold against new normal clips (``extra`` and the listed ones)."""
    import numpy as np

    from machine_monitor.detectors.multiview import MultiViewDetector
    from machine_monitor.filescore import score_files

    det = MultiViewDetector(seed=seed).fit(ds["train"])
    clips = [*extra, *(p for p, lab, _ in ds["test"] if lab == 0)]
    scores = np.array([row.score for row in score_files(det, clips)])
    return {"threshold": float(det.threshold_value_), "clips": len(clips),
            "flagged": int((scores > det.threshold_value_).sum()), "max_score": float(scores.max())}


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    result = {"bound": [row for m in (2, 4) for row in bound(m)]}
    print("bound: one of M independent views sees the fault at separation d")
    print(f"{'M':>2} {'d':>4} {'oracle':>7} {'max':>6} {'Bayes':>6} {'gap (Bayes)':>12} {'list gap (max)':>15} "
          f"{'lists within 0.02':>18}")
    for r in result["bound"]:
        print(f"{r['members']:>2} {r['d']:>4.1f} {r['oracle']:>7.3f} {r['max']:>6.3f} {r['bayes']:>6.3f} "
              f"{r['bayes'] - r['oracle']:>+12.3f} {r['list_gap']:>+15.3f} {r['list_within_0.02']:>18.0%}")
    if not args.bound:
        import torch

        torch.set_num_threads(args.threads)
    if args.promise:
        result["promise"] = {}
        print("\nclip threshold on new normal clips (promise: 1 % flagged)")
        for kind in dict.fromkeys(spec.partition(":")[0] for spec in args.sets):
            ds = synthetic_sets(args.synth_dir, [kind])[0]
            runs = result["promise"][kind] = [promise(ds, extra_normals(args.synth_dir, kind, args.extra), seed)
                                              for seed in args.seeds]
            flagged, clips = sum(r["flagged"] for r in runs), sum(r["clips"] for r in runs)
            print(f"SYNTHETIC {kind:<8} " + " / ".join(f"{r['flagged'] / r['clips']:.0%}" for r in runs)
                  + f"  (seeds {args.seeds}; {flagged} of {clips}: {flagged / clips:.1%}; thresholds "
                  + ", ".join(f"{r['threshold']:.2f}" for r in runs) + ")")
    elif not args.bound:
        result["sets"] = {}
        from machine_monitor.synth import mechanism_pairs

        wanted: dict[str, list[str]] = {}
        for spec in args.sets:  # "kind:mechanism", or "kind" for every mechanism of that kind
            kind, _, mechanism = spec.partition(":")
            wanted.setdefault(kind, []).extend([mechanism] if mechanism else
                                               [m for k, m in mechanism_pairs() if k == kind])
        for kind, mechanisms in wanted.items():
            ds = synthetic_sets(args.synth_dir, [kind])[0]
            extra = extra_normals(args.synth_dir, kind, args.extra)
            runs = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                runs.append(measure(ds, mechanisms, extra, seed))
                print(f"{kind} seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            for mechanism in mechanisms:
                per_seed = [r[mechanism] for r in runs]
                result["sets"][f"{kind}:{mechanism}"] = per_seed
                print(f"\nSYNTHETIC {kind} {mechanism}, seeds {args.seeds}: mean over seeds "
                      f"(20 listed normals; {args.extra} more)")
                print(f"{'row':<8} {'AUC list':>9} {'AUC more':>9} {'sd new/oof':>11} {'faults > oof p95':>17}")
                for name in per_seed[0]:
                    cell = {k: statistics.fmean(r[name][k] for r in per_seed) for k in per_seed[0][name]}
                    print(f"{name:<8} {cell['auc_list']:>9.3f} {cell['auc_extra']:>9.3f} "
                          + (f"{cell['sd_ratio_extra']:>11.2f} {cell['faults_above_oof95']:>16.0%}"
                             if "sd_ratio_extra" in cell else ""))
    if args.json:
        args.json.write_text(json.dumps({**result, "load_average": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
