"""Scan throughput against PyOD's AudioAE on the same clips, and peak memory against the number of files.

On the DCASE 2023 valve split (../shared/data): our default detector (``machine-monitor
train`` defaults, fewer epochs: scoring speed does not depend on them) and PyOD's
``AudioAE(n_mels=128, context=5, hop_length=512, sr=16000, epoch_num=40)``, both fitted
on the 50 training clips, score the same 150 test clips in the same run.

* ours: ``scan_files`` with ``--workers`` processes (one BLAS/torch thread each), pool
  started and model loaded before timing (a service keeps its pool warm); plus the cold
  ``machine-monitor scan`` command, start-up included;
* peer: ``AudioAE.decision_function`` on the file paths, with 1 and with 2 torch threads
  (its best is the figure compared).

Throughput = seconds of audio / wall seconds (x real time), median of ``--runs``. Peak
memory: the whole ``machine-monitor scan`` process tree (main + workers, RSS summed),
for the 150 clips and for 1,000 clips (links to the 150, distinct paths).

    taskset -c 0,1 python benchmarks/bench_scan.py [--runs 5] [--workers 2]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # set before numpy/torch load; the peer is given its threads explicitly

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT.parent / "shared" / "data" / "splits" / "dcase2023-valve.json"


def load_split():
    split = json.loads(SPLIT.read_text())
    base = SPLIT.parent / split["root"]
    return [base / p for p in split["train"]], [base / p for p, _, _ in split["test"]]


def audio_seconds(paths) -> float:
    import soundfile as sf

    return sum(sf.info(str(p)).duration for p in paths)


def cpu_seconds(pids=()) -> float:
    """CPU time (user + system) used so far by this process and the processes ``pids``."""
    import psutil

    total = time.process_time()
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def timed(fn, runs: int, pids=()) -> dict:
    """Median wall and CPU seconds of ``runs`` calls after a warm-up call.

    CPU seconds do not grow when other programs share the cores (wall seconds do), so
    ``x_real_time_per_cpu`` is the figure to compare on a busy machine.
    """
    fn()  # warm-up: page cache, lazy imports, first-call allocations
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = cpu_seconds(pids), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds(pids) - c0)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "runs_wall_s": walls}


def scan_tree_peak(model: Path, files: list[Path], workers: int, out: Path) -> dict:
    """Run ``machine-monitor scan`` and sample the RSS of its process tree every 20 ms."""
    import psutil

    cmd = [sys.executable, "-m", "machine_monitor", "-q", "scan", "--model", str(model), "--workers", str(workers),
           "--output", str(out), *map(str, files)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak_sum = peak_main = 0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            rss = [p.memory_info().rss for p in procs]
        except psutil.Error:
            continue
        peak_sum, peak_main = max(peak_sum, sum(rss)), max(peak_main, rss[0])
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"scan failed ({proc.returncode}): {err}")
    n_rows = sum(1 for _ in out.open())
    return {"files": len(files), "rows": n_rows, "wall_s": wall, "peak_tree_mb": peak_sum / 2**20,
            "peak_main_mb": peak_main / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per contender (median reported)")
    ap.add_argument("--workers", type=int, default=2, help="our worker processes (the issue: 2 cores)")
    ap.add_argument("--epochs", type=int, default=5, help="our training epochs (speed does not depend on it)")
    ap.add_argument("--model", type=Path, help="reuse this trained model directory instead of training one")
    ap.add_argument("--many", type=int, default=1000, help="clips in the large set for the memory figure")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--peer-cache", type=Path, help="pickle the fitted AudioAE here, or reuse it if present")
    args = ap.parse_args(argv)
    if not SPLIT.is_file():
        print(f"shared data not found at {SPLIT}", file=sys.stderr)
        return 2

    import torch
    from pyod.models.audio_ae import AudioAE

    from machine_monitor.detectors.registry import load_detector, make_detector
    from machine_monitor.scan import scan_files, worker_pool

    train, test = load_split()
    work = Path(tempfile.mkdtemp(prefix="bench_scan_"))
    model = args.model
    if model is None or not (model / "model.json").is_file():
        model = args.model or work / "valve"
        print(f"training our detector ({args.epochs} epochs) -> {model}", file=sys.stderr)
        make_detector(epochs=args.epochs).fit(train).save(model)
    det = load_detector(model, device="cpu")
    if args.peer_cache and args.peer_cache.is_file():
        peer = pickle.loads(args.peer_cache.read_bytes())  # our own file from an earlier run
    else:
        print("fitting PyOD AudioAE (40 epochs)", file=sys.stderr)
        torch.set_num_threads(1)  # 2 OpenMP threads collapse on a busy 2-core machine
        peer = AudioAE(n_mels=128, context=5, hop_length=512, sr=16000, epoch_num=40, device="cpu")
        peer.fit([str(p) for p in train])
        if args.peer_cache:
            args.peer_cache.write_bytes(pickle.dumps(peer))

    seconds = audio_seconds(test)
    res = {"clips": len(test), "audio_s": seconds, "workers": args.workers, "runs": args.runs,
           "cpus_visible": len(os.sched_getaffinity(0))}

    pool = worker_pool(args.workers, model)
    try:
        res["ours"] = timed(lambda: list(scan_files(det, test, model=model, workers=args.workers, executor=pool)),
                            args.runs, pids=list(pool._processes))  # the workers' pids (private attribute)
    finally:
        pool.shutdown()
    torch.set_num_threads(1)
    res["ours_1_process"] = timed(lambda: list(scan_files(det, test)), max(1, args.runs // 2))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        res[f"peer_{threads}_threads"] = timed(lambda: peer.decision_function([str(p) for p in test]), args.runs)
    for r in res.values():
        if isinstance(r, dict):
            r["x_real_time"] = seconds / r["wall_s"]
            r["x_real_time_per_cpu"] = seconds / r["cpu_s"]
    best_peer = min((res["peer_1_threads"], res["peer_2_threads"]), key=lambda r: r["wall_s"])
    res["ratio_to_peer_wall"] = best_peer["wall_s"] / res["ours"]["wall_s"]
    peer_cpu = min(res["peer_1_threads"]["cpu_s"], res["peer_2_threads"]["cpu_s"])
    res["ratio_to_peer_cpu"] = peer_cpu / res["ours"]["cpu_s"]

    many = work / "many"
    many.mkdir()
    big = []
    for i in range(args.many):
        link = many / f"{i:05d}_{test[i % len(test)].name}"
        link.symlink_to(test[i % len(test)])
        big.append(link)
    res["cli_150"] = scan_tree_peak(model, test, args.workers, work / "s150.jsonl")
    res["cli_many"] = scan_tree_peak(model, big, args.workers, work / "many.jsonl")
    for key in ("cli_150", "cli_many"):
        r = res[key]
        r["x_real_time"] = seconds * r["files"] / len(test) / r["wall_s"]

    print(f"{len(test)} clips, {seconds:.0f} s of audio, {args.workers} workers, median of {args.runs} runs; "
          f"{res['cpus_visible']} CPUs visible")
    print(f"  {'':34s} {'wall s':>7s} {'x real time':>12s} {'CPU s':>7s} {'x real time per CPU s':>22s}")
    for key, label in (("ours", f"ours, scan_files, {args.workers} warm workers"),
                       ("ours_1_process", "ours, one process"), ("peer_1_threads", "PyOD AudioAE, 1 torch thread"),
                       ("peer_2_threads", "PyOD AudioAE, 2 torch threads")):
        r = res[key]
        print(f"  {label:34s} {r['wall_s']:7.2f} {r['x_real_time']:12.0f} {r['cpu_s']:7.2f} "
              f"{r['x_real_time_per_cpu']:22.0f}")
    print(f"  ours vs best peer: {res['ratio_to_peer_wall']:.1f}x faster (wall), "
          f"{res['ratio_to_peer_cpu']:.1f}x less CPU")
    for key in ("cli_150", "cli_many"):
        r = res[key]
        print(f"  machine-monitor scan, {r['files']:5d} files (cold, start-up included): {r['wall_s']:6.1f} s "
              f"{r['x_real_time']:6.0f}x real time, peak RSS {r['peak_tree_mb']:.0f} MB all processes "
              f"({r['peak_main_mb']:.0f} MB main)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
