"""Scanning in worker processes and on a dask.distributed cluster gives the rows of a scan in one process."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.scan import scan_files, worker_pool
from tests.conftest import SR, clicks, hum


@pytest.fixture(scope="module")
def model_dir(fitted_detector, tmp_path_factory):
    return fitted_detector.save(tmp_path_factory.mktemp("model") / "hum")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    out = []
    for i in range(24):
        y = clicks(1.0, seed=i) if i % 6 == 0 else hum(1.0 + (i % 3), seed=i)
        sf.write(d / f"f{i:02d}.wav", y, SR)
        out.append(d / f"f{i:02d}.wav")
    (d / "broken.wav").write_text("x")
    return [*out, d / "broken.wav", d / "missing.wav"]


@pytest.fixture(scope="module")
def reference(fitted_detector, files):
    return {r.path: r for r in scan_files(fitted_detector, files)}


def same_rows(rows, reference, files):
    got = {r.path: r for r in rows}
    assert sorted(got) == sorted(str(f) for f in files)
    for path, r in got.items():
        ref = reference[path]
        assert r.index == [str(f) for f in files].index(path)
        assert (r.error, r.n_segments, r.worst_offset) == (ref.error, ref.n_segments, ref.worst_offset), path
        assert r.score == pytest.approx(ref.score, rel=1e-5) if ref.score is not None else r.score is None


def test_worker_processes_give_the_same_rows(fitted_detector, model_dir, files, reference, monkeypatch):
    import machine_monitor.scan

    monkeypatch.setattr(machine_monitor.scan, "MIN_BYTES_PER_WORKER", 1)  # these few files would stay in-process
    rows = list(scan_files(fitted_detector, files, model=model_dir, workers=2, chunk_size=3))
    same_rows(rows, reference, files)


def test_a_small_scan_stays_in_this_process(fitted_detector, model_dir, files, reference, monkeypatch):
    # A worker costs about 2 s to start: less audio than MIN_BYTES_PER_WORKER is scored here.
    import machine_monitor.scan

    monkeypatch.setattr(machine_monitor.scan, "_scan_pool", None)  # calling it would fail
    same_rows(list(scan_files(fitted_detector, files, model=model_dir, workers=8)), reference, files)


def test_a_warm_pool_is_reused_across_scans(fitted_detector, model_dir, files, reference):
    with worker_pool(2, model_dir) as pool:
        for _ in range(2):
            rows = list(scan_files(fitted_detector, files, model=model_dir, workers=2, executor=pool))
            same_rows(rows, reference, files)
        assert sorted(pool.map(_loads, range(8))) == [1] * 8  # each worker loaded the model once


def _loads(_) -> int:
    import machine_monitor.scan

    return machine_monitor.scan.models_loaded()


def test_a_dask_cluster_gives_the_same_rows_and_loads_the_model_once_per_worker(fitted_detector, model_dir, files,
                                                                                 reference):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        rows = list(scan_files(fitted_detector, files, model=model_dir, dask_address=cluster.scheduler_address,
                               chunk_size=1))
        loads = client.run(lambda: __import__("machine_monitor.scan").scan.models_loaded())
    same_rows(rows, reference, files)
    assert len(loads) == 2 and all(n == 1 for n in loads.values()), loads  # 26 tasks, two model loads


def test_workers_need_the_model_directory(fitted_detector, files):
    from machine_monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the model directory"):
        list(scan_files(fitted_detector, files, workers=2))
    assert np.isfinite(next(scan_files(fitted_detector, files[:1])).score)  # one process needs no directory
