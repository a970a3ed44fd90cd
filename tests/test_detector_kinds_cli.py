"""Every detector kind and post-classifier from the command line: train, scan, evaluate."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from machine_monitor.cli import main
from tests.conftest import SR, clicks, hum


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    for name, n, make, seed0 in [("normal", 10, hum, 0), ("faults", 4, clicks, 100)]:
        (root / name).mkdir()
        for i in range(n):
            sf.write(root / name / f"{name}_{i:02d}.wav", make(2.0, seed=seed0 + i), SR)
    (root / "test" / "normal").mkdir(parents=True)
    (root / "test" / "abnormal").mkdir()
    for i in range(3):
        sf.write(root / "test" / "normal" / f"n{i}.wav", hum(2.0, seed=200 + i), SR)
        sf.write(root / "test" / "abnormal" / f"a{i}.wav", clicks(2.0, seed=300 + i), SR)
    return root


CASES = {
    "hist-rf": ["--anomalies", "{faults}", "--features", "logmel", "--epochs", "5"],
    "diff-rf": ["--post", "diff-rf", "--anomalies", "{faults}", "--epochs", "20"],
    "ae-iforest": ["--post", "iforest", "--features", "logmel", "--epochs", "5"],
    "aegmm": ["--detector", "aegmm", "--epochs", "10"],
    "vaegmm": ["--detector", "vaegmm", "--epochs", "10"],
    "ocsvm": ["--detector", "ocsvm"],
    "iforest": ["--detector", "iforest"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_scan_and_evaluate(case, folders, tmp_path, capsys):
    model = tmp_path / case
    extra = [a.format(faults=folders / "faults") for a in CASES[case]]
    assert main(["-q", "train", str(folders / "normal"), "-o", str(model), "--seed", "0", *extra]) == 0
    manifest = json.loads((model / "model.json").read_text())
    kind = {"aegmm": "aegmm", "vaegmm": "vaegmm", "ocsvm": "ocsvm", "iforest": "iforest"}.get(case, "ae")
    assert manifest["detector"] == kind
    if kind == "ae":
        assert manifest["scorer"]["name"] == {"ae-iforest": "iforest"}.get(case, case)
    capsys.readouterr()
    code = main(["-q", "scan", "-r", "-m", str(model), str(folders / "test")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.endswith(("ANOMALY", "normal"))]
    assert len(rows) == 6 and code in (0, 1)
    assert main(["-q", "evaluate", "-m", str(model), str(folders / "test"), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["auc"] >= 0.8


def test_options_that_do_not_fit_the_detector_are_usage_errors(folders, tmp_path, capsys):
    normal = str(folders / "normal")
    assert main(["train", normal, "-o", str(tmp_path / "x"), "--detector", "ocsvm", "--post", "hist-rf"]) == 2
    assert "apply to --detector ae" in capsys.readouterr().err
    assert main(["train", normal, "-o", str(tmp_path / "x"), "--post", "hist-rf"]) == 2
    assert "labelled anomalies" in capsys.readouterr().err
    assert main(["train", normal, "-o", str(tmp_path / "x"), "--anomalies", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
