"""Scanning files into rows: windowed scoring of long files and a corpus of broken inputs.

The corpus is made by the tests: every kind of file an archive really holds. Each gives
a correct row or a one-line error in its row; the scan never aborts and never loses the
rows of good files.
"""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from machine_monitor.filescore import iter_segments, score_file, segment_starts
from machine_monitor.scan import scan_files
from tests.conftest import SR, clicks, hum

# -- segments --------------------------------------------------------------------


def test_segments_tile_the_signal_and_the_last_one_ends_at_the_end():
    assert segment_starts(1000, 1000, 1000).tolist() == [0]
    assert segment_starts(500, 1000, 1000).tolist() == [0]  # shorter: one (short) segment
    assert segment_starts(3000, 1000, 1000).tolist() == [0, 1000, 2000]
    assert segment_starts(3500, 1000, 1000).tolist() == [0, 1000, 2000, 2500]
    assert segment_starts(3500, 1000, 500).tolist() == [0, 500, 1000, 1500, 2000, 2500]


@pytest.mark.parametrize("n, block, hop",
                         [(3500, 300, 1000), (3500, 1000, 500), (10_000, 4096, 1000), (999, 250, 1000)])
def test_streamed_segments_equal_the_segments_of_the_whole_signal(n, block, hop):
    y = np.arange(n, dtype=np.float32)
    blocks = (y[i:i + block] for i in range(0, n, block))
    got = list(iter_segments(blocks, segment=1000, hop=hop))
    starts = segment_starts(n, 1000, hop)
    assert [s for s, _ in got] == starts.tolist()
    for s, seg in got:
        assert np.array_equal(seg, y[s:s + 1000])


# -- one file --------------------------------------------------------------------


def test_a_clip_long_file_is_scored_whole_like_score_signal(fitted_detector, tmp_path):
    path = tmp_path / "clip.wav"
    sf.write(path, clicks(1.0, seed=3), SR)
    row = score_file(fitted_detector, path)
    expected = fitted_detector.score_signal(fitted_detector.load_signal(path))
    assert row.score == expected
    assert (row.n_segments, row.worst_offset, row.duration, row.error) == (1, 0.0, 1.0, None)
    assert row.verdict == "ANOMALY" and row.n_anomalous == 1


def test_a_long_file_is_scored_per_window_and_its_score_is_the_worst_window(fitted_detector, tmp_path):
    # 6 s of normal hum with a faulty second from 3.5 s; the model's clips are 1 s long.
    y = hum(6.0, seed=42)
    y[int(3.5 * SR):int(4.5 * SR)] = clicks(1.0, seed=42)
    path = tmp_path / "long.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    assert fitted_detector.clip_seconds_ == 1.0

    row = score_file(fitted_detector, path)
    windows = [fitted_detector.score_signal(y[s:s + SR]) for s in range(0, 6 * SR, SR)]
    assert row.n_segments == 6 and row.duration == 6.0
    assert row.score == pytest.approx(max(windows), rel=1e-5)
    assert row.worst_offset in (3.0, 4.0)  # the two windows the fault overlaps
    assert row.n_anomalous == sum(w > row.threshold for w in windows) >= 1
    assert row.verdict == "ANOMALY"

    overlapping = score_file(fitted_detector, path, hop_seconds=0.5)
    assert overlapping.n_segments == 11 and overlapping.worst_offset == 3.5  # exactly on the fault


def test_a_long_multichannel_48k_file_is_streamed_like_its_16k_mono_mix(fitted_detector, tmp_path):
    import soxr

    sr = 48_000
    left = soxr.resample(hum(4.0, seed=1), SR, sr)
    right = left.copy()
    right[2 * sr:3 * sr] += np.where(np.arange(sr) % (sr // 20) == 0, 0.8, 0.0)  # clicks in one channel
    stereo = np.stack([left, right], axis=1).astype(np.float32)
    path = tmp_path / "stereo48k.wav"
    sf.write(path, stereo, sr, subtype="PCM_24")

    row = score_file(fitted_detector, path)
    mono16 = soxr.resample(stereo.mean(axis=1), sr, SR, quality="HQ")
    windows = [fitted_detector.score_signal(mono16[s:s + SR]) for s in range(0, 4 * SR, SR)]
    assert (row.n_segments, row.duration) == (4, 4.0)
    assert row.worst_offset == float(np.argmax(windows))
    assert row.score == pytest.approx(max(windows), rel=1e-3)


def test_silent_stretches_of_a_long_file_are_skipped_not_errors(fitted_detector, tmp_path):
    y = hum(4.0, seed=5)
    y[SR:3 * SR] = 0.0  # the machine was off for two seconds
    path = tmp_path / "pause.wav"
    sf.write(path, y, SR)
    row = score_file(fitted_detector, path)
    assert row.error is None and row.n_segments == 2 and row.worst_offset in (0.0, 3.0)


def _switched_off(seconds: float, *, seed: int = 0) -> np.ndarray:
    """Room noise with the machine switched off: ~30 dB below the training hum (-21 dBFS)."""
    return (0.002 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def test_a_recording_of_the_stopped_machine_is_a_stopped_row_not_an_anomaly(fitted_detector, tmp_path):
    path = tmp_path / "off.wav"
    sf.write(path, _switched_off(1.0), SR)
    row = score_file(fitted_detector, path)
    assert row.stopped and row.verdict == "stopped" and not row.anomalous
    assert (row.score, row.error, row.n_segments, row.n_stopped, row.duration) == (None, None, 0, 1, 1.0)
    # Why: the networks never heard a silent machine, so scored it tops every ranking.
    blind = copy.copy(fitted_detector)
    blind.calibration_ = {k: v for k, v in fitted_detector.calibration_.items() if k != "levels"}
    scored = score_file(blind, path)
    assert scored.verdict == "ANOMALY" and scored.n_stopped == 0


def test_a_long_file_is_judged_on_the_windows_where_the_machine_runs(fitted_detector, tmp_path):
    y = np.concatenate([hum(2.0, seed=8), _switched_off(2.0, seed=8), hum(1.0, seed=9)])
    path = tmp_path / "run_stop_run.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    row = score_file(fitted_detector, path)
    running = [fitted_detector.score_signal(y[s:s + SR]) for s in (0, SR, 4 * SR)]
    assert (row.n_segments, row.n_stopped, row.duration) == (3, 2, 5.0)
    assert row.score == pytest.approx(max(running), rel=1e-5) and row.worst_offset in (0.0, 1.0, 4.0)
    assert row.threshold == pytest.approx(fitted_detector.long_file_threshold(3))
    assert row.verdict == "normal"
    assert type(row).from_record(row.to_record(flat=True)).n_stopped == 2  # kept through CSV / --resume


# -- the corpus ------------------------------------------------------------------

HOUR = 3600.0
FAULT_AT = 1800.0  # 30 s of clicks half-way through the hour


def _write_hour(path):
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        for k in range(60):
            block = hum(60.0, seed=1000 + k)
            if k == int(FAULT_AT // 60):
                block[: 30 * SR] = clicks(30.0, seed=7)
            f.write(block)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    good = hum(1.0, seed=11)
    files = {"missing": d / "missing.wav"}
    (d / "empty.wav").write_bytes(b"")
    files["empty"] = d / "empty.wav"
    (d / "text.wav").write_text("this is a text file, not a recording\n")
    files["text"] = d / "text.wav"
    sf.write(d / "full.wav", hum(2.0, seed=12), SR)
    data = (d / "full.wav").read_bytes()
    (d / "truncated.wav").write_bytes(data[: len(data) // 2])  # header says 2 s, half the data is there
    files["truncated"] = d / "truncated.wav"
    sf.write(d / "header_only.wav", np.zeros(0, np.float32), SR)
    files["header_only"] = d / "header_only.wav"
    sf.write(d / "eight_channels.wav", np.tile(good[:, None], (1, 8)), SR, subtype="FLOAT")
    files["eight_channels"] = d / "eight_channels.wav"
    for sr in (44_100, 48_000):
        t = np.arange(sr) / sr
        sf.write(d / f"rate_{sr}.wav", (0.1 * np.sin(2 * np.pi * 120 * t) + 0.05 * np.sin(2 * np.pi * 240 * t)
                                        + 0.01 * np.random.default_rng(0).standard_normal(sr)), sr)
        files[f"rate_{sr}"] = d / f"rate_{sr}.wav"
    sf.write(d / "pcm24.wav", good, SR, subtype="PCM_24")
    files["pcm24"] = d / "pcm24.wav"
    sf.write(d / "float.wav", good, SR, subtype="FLOAT")
    files["float"] = d / "float.wav"
    nan = good.copy()
    nan[100:110] = np.nan
    sf.write(d / "nan.wav", nan, SR, subtype="FLOAT")
    files["nan"] = d / "nan.wav"
    sf.write(d / "silence.wav", np.zeros(SR, np.float32), SR)
    files["silence"] = d / "silence.wav"
    sf.write(d / "too_short.wav", good[: SR // 10], SR)
    files["too_short"] = d / "too_short.wav"
    _write_hour(d / "one_hour.wav")
    files["one_hour"] = d / "one_hour.wav"
    return files


@pytest.fixture(scope="module")
def hour_detector(fitted_detector):
    """The test detector with 10-second clips and a threshold well clear of its normal scores."""
    det = copy.deepcopy(fitted_detector)
    det.clip_seconds_ = 10.0
    normal = [det.score_signal(hum(10.0, seed=s)) for s in range(200, 205)]
    return det.set_threshold(scores=[2 * max(normal)], method="percentile", percentile=100)


@pytest.fixture(scope="module")
def corpus_scan(hour_detector, corpus):
    names = list(corpus)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        rows = list(scan_files(hour_detector, [corpus[n] for n in names]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {names[r.index]: r for r in rows}, peak


@pytest.fixture(scope="module")
def corpus_rows(corpus_scan):
    return corpus_scan[0]


def test_every_file_in_the_corpus_gets_exactly_one_row(corpus, corpus_rows):
    assert sorted(corpus_rows) == sorted(corpus)
    for name, row in corpus_rows.items():
        assert row.path == str(corpus[name])
        assert (row.score is None) == (row.error is not None), name
        if row.error is not None:
            assert "\n" not in row.error and row.error, name
            assert not row.error.startswith(str(corpus[name])), "the path is in its own column"


@pytest.mark.parametrize("name, reason", [
    ("missing", "no such file"),
    ("empty", "not a readable audio file"),
    ("text", "not a readable audio file"),
    ("header_only", "contains no audio samples (header only)"),
    ("nan", "contains 10 non-finite samples (NaN or inf)"),
    ("silence", "is digitally silent"),
    ("too_short", "shorter than one feature window"),
])
def test_unusable_files_are_error_rows_with_the_reason(corpus_rows, name, reason):
    row = corpus_rows[name]
    assert row.verdict == "error" and reason in row.error
    assert row.n_segments == 0 and row.worst_offset is None


def test_readable_formats_score_like_the_same_sound_at_16k(hour_detector, corpus_rows):
    reference = hour_detector.score_signal(hum(1.0, seed=11))
    for name in ("eight_channels", "pcm24", "float"):
        assert corpus_rows[name].score == pytest.approx(reference, rel=1e-3), name
    for name in ("rate_44100", "rate_48000"):
        row = corpus_rows[name]
        assert row.error is None and row.duration == pytest.approx(1.0, abs=1e-3) and row.n_segments == 1


def test_a_truncated_wav_keeps_the_audio_that_is_there(corpus_rows):
    row = corpus_rows["truncated"]
    assert row.error is None and 0.5 < row.duration < 2.0 and row.n_segments == 1


def test_a_one_hour_file_is_scanned_in_windows_and_the_bad_half_minute_found(corpus_rows):
    row = corpus_rows["one_hour"]
    assert row.error is None and row.duration == HOUR
    assert row.n_segments == 360  # ten-second windows: the model's clip length
    assert row.verdict == "ANOMALY"
    assert row.worst_offset in (FAULT_AT, FAULT_AT + 10, FAULT_AT + 20)
    assert row.n_anomalous == 3  # the 30 faulty seconds, not the whole hour


def test_the_scan_runs_in_bounded_memory(corpus_scan):
    # The hour alone is 230 MB as float32; streaming holds one window and one block.
    assert corpus_scan[1] < 30e6, f"peak {corpus_scan[1] / 1e6:.0f} MB"
