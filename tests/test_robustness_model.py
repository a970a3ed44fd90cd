"""Model directories: a write never destroys someone's files; a tampered model.json is a ModelError, never a
traceback, a NaN threshold, or gigabytes allocated."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from machine_monitor.detectors.registry import load_detector
from machine_monitor.errors import ModelError
from machine_monitor.persistence import check_model_destination, sha256
from tests.conftest import hum


@pytest.fixture()
def model(fitted_detector, tmp_path):
    return fitted_detector.save(tmp_path / "model")


def edit_manifest(model, change):
    m = json.loads((model / "model.json").read_text())
    change(m)
    (model / "model.json").write_text(json.dumps(m))


# -- writes ------------------------------------------------------------------------
def test_a_model_is_never_written_over_a_folder_of_recordings(fitted_detector, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "clip.wav").write_bytes(b"RIFF....")
    (data / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match=r"data: exists and is not a model directory .*refusing to replace it"):
        fitted_detector.save(data)
    assert sorted(p.name for p in data.iterdir()) == ["clip.wav", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary or .old leftovers


def test_a_model_is_never_written_over_a_file(fitted_detector, tmp_path):
    f = tmp_path / "report.csv"
    f.write_text("path,score\n")
    with pytest.raises(ModelError, match=r"report\.csv: exists and is not a model directory"):
        fitted_detector.save(f)
    assert f.read_text() == "path,score\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv"]


def test_a_model_folder_that_also_holds_recordings_is_refused(model, fitted_detector):
    (model / "clip_0001.wav").write_bytes(b"RIFF")
    with pytest.raises(ModelError, match=r"holds folders or recordings that are not part of its model \(clip_0001"):
        fitted_detector.save(model)


def test_a_model_replaces_a_model_and_fills_an_empty_folder(model, fitted_detector, tmp_path):
    assert fitted_detector.save(model) == model
    empty = tmp_path / "empty"
    empty.mkdir()
    fitted_detector.save(empty)
    assert (empty / "model.json").is_file()


def test_a_symlink_is_not_followed_into_replacement(model, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(ModelError, match="is a symbolic link"):
        check_model_destination(link)


# -- model.json schema -------------------------------------------------------------
BREAKAGES = [
    (lambda m: m["threshold"].update(value="185"), "threshold.value must be a number"),
    (lambda m: m["threshold"].pop("value"), "threshold.value must be a number, not None"),
    (lambda m: m["threshold"].update(value=float("nan")), "threshold.value must be finite"),
    (lambda m: m.pop("threshold"), "threshold is missing"),
    (lambda m: m["network"].update(ensemble=0), "network.ensemble must be >= 1"),
    (lambda m: m.update(files=list(m["files"])), "files must be an object"),
    (lambda m: m["network"].update(bottleneck=-3), "network.bottleneck must be >= 1"),
    (lambda m: m["network"].update(hidden=[12000] * 4), "network.hidden must be <= 4096"),
    (lambda m: m["network"].update(hidden=[4096] * 16), "weights"),
    (lambda m: m["params"].update(lr=float("inf")), "params.lr must be finite"),
    (lambda m: m["params"].update(epochs=-5), "params.epochs must be >= 1"),
    (lambda m: m["features"].update(n_mels="128"), "features.n_mels must be a whole number"),
    (lambda m: m.update(sample_rate=1), "sample_rate must be >= 1000"),
    (lambda m: m["scores"].update(train_values=[1.0, float("nan")]), "scores.train_values must be finite"),
    (lambda m: m["files"].update({"arrays.safetensors": "x"}), "must be a sha256 hex digest"),
]


@pytest.mark.parametrize("change, match", BREAKAGES, ids=[b[1][:30] for b in BREAKAGES])
def test_invalid_model_descriptions_are_refused_naming_the_field(model, change, match):
    edit_manifest(model, change)
    with pytest.raises(ModelError, match=r"model\.json: invalid model description: .*" + match.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
        load_detector(model)


def test_deeply_nested_json_is_refused(model):
    (model / "model.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelError, match=r"model\.json: nested deeper"):
        load_detector(model)
    (model / "model.json").write_text('{"schema_version": 1, "x": ' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(ModelError, match=r"nested deeper than 24 levels"):
        load_detector(model)


def test_oversized_model_json_is_refused_before_parsing(model, monkeypatch):
    import machine_monitor.persistence as per

    monkeypatch.setattr(per, "MAX_MANIFEST_BYTES", 100)
    with pytest.raises(ModelError, match="larger than any model description"):
        load_detector(model)


def _rehash(model, name):
    edit_manifest(model, lambda m: m["files"].update({name: sha256(model / name)}))


def test_nan_arrays_are_refused_even_with_matching_hashes(model):
    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(model / "arrays.safetensors"))
    key = next(k for k in arrays if k.startswith("scorer."))
    arrays[key] = np.full_like(arrays[key], np.nan)
    save_file(arrays, str(model / "arrays.safetensors"))
    _rehash(model, "arrays.safetensors")
    with pytest.raises(ModelError, match=rf"arrays\.safetensors: array {key} holds NaN"):
        load_detector(model)


def test_nan_weights_are_refused_even_with_matching_hashes(model):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model / "network.safetensors"))
    key = next(iter(tensors))
    tensors[key] = tensors[key].float() * float("nan")
    save_file(tensors, str(model / "network.safetensors"))
    _rehash(model, "network.safetensors")
    with pytest.raises(ModelError, match=r"network\.safetensors: weights .* hold NaN"):
        load_detector(model)


def test_skops_expansion_is_bounded_before_loading(tmp_path, monkeypatch):
    import skops.io

    import machine_monitor.persistence as per

    bomb = tmp_path / "scorer.skops"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("schema.json", json.dumps({"__class__": "dict", "__module__": "builtins", "content": {}}))
        z.writestr("a.npy", b"\0" * (8 << 20))  # 8 MB of zeros: ~8 KB compressed
    monkeypatch.setattr(per, "MAX_SKOPS_EXPANDED_BYTES", 4 << 20)
    monkeypatch.setattr(skops.io, "load", lambda *a, **k: pytest.fail("skops.load reached"))
    with pytest.raises(ModelError, match=r"scorer\.skops: expands to 8,388,\d+ bytes in 2 parts"):
        per.load_estimators(bomb)
    # The ratio bound (a 2.6 MB file may not expand to 3.5 GB), scaled down: 16 MB from ~16 KB.
    monkeypatch.setattr(per, "MAX_SKOPS_EXPANDED_BYTES", 1 << 30)
    monkeypatch.setattr(per, "MAX_SKOPS_RATIO", 10)
    big = tmp_path / "big.skops"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("schema.json", "{}")
        z.writestr("a.npy", b"\0" * (16 << 20))
    with pytest.raises(ModelError, match="expands to"):
        per.load_estimators(big)


def test_a_valid_model_still_loads_and_scores_alike(model, fitted_detector):
    y = hum(1.0, seed=99)
    assert load_detector(model).score([y])[0] == pytest.approx(fitted_detector.score([y])[0])
