"""Same sound, same score: the recording chain (rate, format, channels) alone must not raise an alarm."""

from __future__ import annotations

import copy
import logging

import pytest
import soundfile as sf
import soxr

from machine_monitor.filescore import score_file
from machine_monitor.scan import chain_differences
from tests.conftest import hum


@pytest.fixture(scope="module")
def demo(fitted_detector):
    """The suite's detector (15 hum clips) as if trained on 16 kHz mono WAVs, and two unseen hums."""
    det = copy.deepcopy(fitted_detector)
    det.screening_ = {"chain": {"sample_rate": 16_000, "format": "WAV", "channels": 1}}
    return det, [hum(1.0, seed=200), hum(1.0, seed=201)]


def test_same_audio_as_16k_44k_48k_wav_and_ogg_scores_normal(demo, tmp_path):
    # Issue 14: as 44.1/48 kHz WAV the same audio scored 1,839 and as OGG 432 against 143 (threshold 185).
    det, held_out = demo
    sr = 16_000
    for y in held_out:
        versions = {"16k.wav": (y, 16_000, {}), "44k.wav": (soxr.resample(y, sr, 44_100), 44_100, {}),
                    "48k.wav": (soxr.resample(y, sr, 48_000), 48_000, {}),
                    "hq.ogg": (y, 16_000, {"format": "OGG", "subtype": "VORBIS", "compression_level": 0.0})}
        scores = {}
        for name, (data, rate, kw) in versions.items():
            sf.write(tmp_path / name, data, rate, **kw)
            row = score_file(det, tmp_path / name)
            assert row.verdict == "normal", (name, row.score, row.threshold)
            scores[name] = row.score
        for name in ("44k.wav", "48k.wav"):  # the analysed band stops below the resampler's transition
            assert scores[name] == pytest.approx(scores["16k.wav"], rel=0.02)


def test_inputs_from_another_chain_are_warned_about_once_per_scan(demo, tmp_path, caplog):
    from machine_monitor.cli import main

    det, held_out = demo
    y, sr = held_out[0], 16_000
    sf.write(tmp_path / "same.wav", y, sr)
    assert chain_differences(det, [str(tmp_path / "same.wav")]) is None
    sf.write(tmp_path / "phone.ogg", soxr.resample(y, sr, 44_100), 44_100, format="OGG", subtype="VORBIS")
    sf.write(tmp_path / "other.flac", soxr.resample(y, sr, 48_000), 48_000)
    msg = chain_differences(det, [str(p) for p in sorted(tmp_path.iterdir())])
    assert msg.startswith("2 of 3 inputs come through another recording chain than the model's training clips "
                          "(16000 Hz, WAV, 1 ch)")
    model = det.save(tmp_path / "m")
    with caplog.at_level(logging.WARNING):
        main(["scan", "--model", str(model), str(tmp_path / "phone.ogg"), str(tmp_path / "other.flac"),
              str(tmp_path / "same.wav"), "-j", "1"])
    assert caplog.text.count("inputs come through another recording chain") == 1


def test_a_lossy_copy_is_judged_against_thresholds_calibrated_on_lossily_coded_training_audio(demo, tmp_path):
    # Issue 14: as OGG (libsndfile's default Vorbis quality) every normal demo clip scored 4 times
    # the threshold. The codec changes what the model hears; the model also calibrates on its
    # training audio coded that way, and lossy files are judged against that.
    from machine_monitor.detectors.base import BaseDetector
    from tests.conftest import clicks

    det, held_out = demo
    lossy = det.calibration_["lossy"]
    assert lossy["value"] >= det.threshold_value_ and lossy["n"] == 15  # one unit of each training clip
    assert det.judges_lossy_apart()
    ogg = {"format": "OGG", "subtype": "VORBIS"}
    for i, y in enumerate(held_out):
        sf.write(tmp_path / f"n{i}.ogg", y, 16_000, **ogg)
        sf.write(tmp_path / f"n{i}.wav", y, 16_000)
        row = score_file(det, tmp_path / f"n{i}.ogg")
        assert row.verdict == "normal" and row.threshold == pytest.approx(lossy["value"])
        assert score_file(det, tmp_path / f"n{i}.wav").threshold == det.threshold_value_
    sf.write(tmp_path / "fault.ogg", clicks(1.0, seed=300), 16_000, **ogg)
    assert score_file(det, tmp_path / "fault.ogg").verdict == "ANOMALY"
    # Kept in the model; a model trained on lossy audio judges lossy files as its own chain.
    back = BaseDetector.load(det.save(tmp_path / "m"))
    assert back.calibration_["lossy"]["value"] == pytest.approx(lossy["value"]) and back.judges_lossy_apart()
    trained_on_ogg = copy.deepcopy(det)
    trained_on_ogg.screening_ = {"chain": {"sample_rate": 16_000, "format": "OGG", "channels": 1}}
    assert not trained_on_ogg.judges_lossy_apart()
    assert score_file(trained_on_ogg, tmp_path / "n0.ogg").threshold == det.threshold_value_
