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
