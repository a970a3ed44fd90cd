"""Shared fixtures: small synthetic clips, the demo recordings, the shared real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

# One compute thread per xdist worker: two workers on two cores, not two workers each running
# two BLAS and two torch threads (oversubscribed, the suite ran ~1.3x slower). The variables are
# set before numpy loads, and the CLI subprocesses the tests start inherit them; the limits
# cover a numpy a plugin may have loaded before this file, and torch's own pool.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = ROOT / "recordings"
SHARED_DATA = ROOT.parent / "shared" / "data"
VALVE_SPLIT = SHARED_DATA / "splits" / "dcase2023-valve.json"
SR = 16_000

# Few epochs for frame models: tests check behaviour, benchmarks check accuracy.
FAST = {"epochs": 8, "patience": 3, "batch_size": 128, "seed": 0}
# The default (peak) detector trains fully: one small vector per clip makes that cheap,
# and an undertrained one raises false alarms on normal sound.
PEAK = {"seed": 0}


def hum(seconds: float = 1.0, *, seed: int = 0, f0: float = 120.0, level: float = 0.1) -> np.ndarray:
    """A steady 'machine': a harmonic hum plus a little noise, as float32 at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = rng.uniform(0, 2 * np.pi, 4)
    y = sum(level / (k + 1) * np.sin(2 * np.pi * f0 * (k + 1) * t + phase[k]) for k in range(4))
    return (y + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def clicks(seconds: float = 1.0, *, seed: int = 0) -> np.ndarray:
    """The same hum with sharp broadband clicks: an obvious fault."""
    y = hum(seconds, seed=seed)
    y[:: SR // 20] += 0.8
    return y


@pytest.fixture(scope="session")
def normal_arrays() -> list[np.ndarray]:
    return [hum(1.0, seed=s) for s in range(15)]


@pytest.fixture(scope="session")
def fitted_detector(normal_arrays):
    from machine_monitor import Detector

    return Detector(**PEAK).fit(normal_arrays)


@pytest.fixture(scope="session")
def recordings() -> Path:
    if not (RECORDINGS / "normal").is_dir():
        pytest.skip("recordings/ is missing: run `python -m machine_monitor.synth recordings`")
    return RECORDINGS


@pytest.fixture(scope="session")
def valve_split() -> dict:
    if not VALVE_SPLIT.is_file():
        pytest.skip(f"real-audio test: shared data not found at {SHARED_DATA} (it sits beside the checkout)")
    split = json.loads(VALVE_SPLIT.read_text())
    base = VALVE_SPLIT.parent / split.get("root", "..")
    return {
        "train": [base / p for p in split["train"]],
        "test": [base / p for p, _, _ in split["test"]],
        "labels": np.array([label for _, label, _ in split["test"]]),
    }
