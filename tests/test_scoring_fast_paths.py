"""The scan's fast paths give the numbers of the plain computations they replace.

Reading (16-bit PCM scaled in numpy, one opening of a file for its length and its samples),
the log-mel (torch's FFT, a sparse mel product) and the frame member's distance (the last
layer folded into the Cholesky factor of the precision matrix) are each compared with the
direct computation: the same samples exactly, the same features and distances to float32
rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import soundfile as sf

from machine_monitor.audio.io import load_audio, load_audio_if_short, read_blocks
from machine_monitor.detectors.multiview import _mahalanobis, _Stack
from machine_monitor.features import LOG_EPS, _hann, _mel_basis, logmel_frames


def _dense_logmel(y, *, sr=16_000, n_fft=1024, hop_length=512, n_mels=128, fmax=None):
    """The textbook computation: windowed frames, FFT, power, dense mel product, dB."""
    frames = np.lib.stride_tricks.sliding_window_view(y.astype(np.float64), n_fft)[::hop_length]
    spec = scipy.fft.rfft(frames * _hann(n_fft), axis=1)
    mel = (spec.real**2 + spec.imag**2) @ _mel_basis(sr, n_fft, n_mels, fmax).T.astype(np.float64)
    return 10 * np.log10(mel + LOG_EPS)


@pytest.mark.parametrize("kw", [{}, {"fmax": 7400.0}, {"n_fft": 512, "hop_length": 256, "n_mels": 64},
                                {"sr": 8_000, "n_fft": 256, "hop_length": 128, "n_mels": 40}])
def test_logmel_equals_the_dense_float64_computation(kw):
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(20_000) + 0.5 * np.sin(np.arange(20_000) * 0.05)).astype(np.float32)
    ours = logmel_frames(y, **kw)
    ref = _dense_logmel(y, **kw)
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"] and ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-3  # dB: float32 rounding (a few 1e-5 dB typically)
    # A read-only signal (a memory-mapped file) and a strided one give the same frames.
    ro = y.copy()
    ro.flags.writeable = False
    assert np.array_equal(logmel_frames(ro, **kw), ours)
    assert np.array_equal(logmel_frames(np.repeat(y, 2)[::2], **kw), ours)


@pytest.mark.parametrize("sr, n_fft, n_mels, fmax", [(16_000, 1024, 128, None), (16_000, 1024, 128, 7400.0),
                                                     (44_100, 2048, 64, 999.0), (8_000, 256, 40, 4000)])
def test_mel_basis_is_librosas_without_importing_it(sr, n_fft, n_mels, fmax):
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmax=fmax).astype(np.float32)
    assert np.array_equal(_mel_basis.__wrapped__(sr, n_fft, n_mels, fmax), ref)


def test_pcm16_is_read_exactly_as_libsndfile_scales_it(tmp_path):
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((40_000, 2)) * 0.3).clip(-1, 1)
    path = tmp_path / "s16.wav"
    sf.write(path, stereo, 16_000, subtype="PCM_16")
    ref = sf.read(path, dtype="float32", always_2d=True)[0]  # libsndfile's own float conversion
    assert np.array_equal(load_audio(path), ref.mean(axis=1, dtype=np.float32))
    assert np.array_equal(load_audio(path, channel=1), ref[:, 1])
    mono = tmp_path / "m16.wav"
    sf.write(mono, stereo[:, 0], 16_000, subtype="PCM_16")
    ref = sf.read(mono, dtype="float32")[0]
    assert np.array_equal(load_audio(mono), ref)
    assert np.array_equal(np.concatenate(list(read_blocks(mono, block_seconds=0.3))), ref)


def test_load_audio_if_short_reads_short_files_and_leaves_long_ones(tmp_path):
    path = tmp_path / "a.wav"
    y = (0.2 * np.sin(np.arange(48_000) * 0.01)).astype(np.float32)
    sf.write(path, y, 16_000, subtype="FLOAT")
    assert np.array_equal(load_audio_if_short(path, max_samples=48_000), load_audio(path))
    assert load_audio_if_short(path, max_samples=47_999) is None
    # At another rate the length is judged at the target rate, as the scan compares it.
    sf.write(tmp_path / "b.wav", y, 48_000, subtype="FLOAT")  # 1 s -> 16,000 samples at 16 kHz
    assert load_audio_if_short(tmp_path / "b.wav", max_samples=16_000).size == 16_000
    assert load_audio_if_short(tmp_path / "b.wav", max_samples=15_999) is None


def _nets(seed: int, dims: int = 24):
    import torch

    from machine_monitor.autoencoder import DenseAutoencoder, NetworkConfig

    torch.manual_seed(seed)
    return [DenseAutoencoder(NetworkConfig(dims, (16, 12), 4)).eval() for _ in range(3)]


def test_folded_frame_distance_equals_the_direct_mahalanobis():
    rng = np.random.default_rng(2)
    stack = _Stack(_nets(0))
    a = rng.standard_normal((200, 24))
    precision = np.linalg.inv(np.cov(a, rowvar=False) + 0.1 * np.eye(24)).astype(np.float32)
    mean = rng.standard_normal(24).astype(np.float32) * 0.1
    x = rng.standard_normal((30, 24)).astype(np.float32)
    direct = _mahalanobis(x[None] - stack(x), mean, precision).mean(axis=0)
    np.testing.assert_allclose(stack.mean_distance(x, mean, precision), direct, rtol=1e-5)
    # A precision that is not positive definite (a corrupt model) takes the direct route.
    bad = -precision
    np.testing.assert_allclose(stack.mean_distance(x, mean, bad),
                               _mahalanobis(x[None] - stack(x), mean, bad).mean(axis=0), rtol=1e-6)


def test_score_files_gives_score_file_rows_in_batches(tmp_path):
    """``score_files`` scores short files a batch at a time (each network once for the batch)
    and gives the rows ``score_file`` gives, in input order: long files, unreadable files and
    short ones mixed."""
    from machine_monitor.detectors.multiview import MultiViewDetector
    from machine_monitor.filescore import score_file, score_files
    from machine_monitor.synth import mechanism_sound

    def clip(seed, mechanism=None):
        return mechanism_sound(3.0, kind="hum", mechanism=mechanism, seed=seed)

    det = MultiViewDetector(folds=2, epochs=20, patience=5, frame_epochs=2, frame_patience=1, seed=0)
    det.fit([clip(100 + i) for i in range(6)])
    paths = []
    for i, mech in enumerate([None, "knocks", None, "level", None, "squeal", None]):
        paths.append(tmp_path / f"c{i}.wav")
        sf.write(paths[-1], clip(200 + i, mech), 16_000, subtype="FLOAT")
    sf.write(tmp_path / "long.wav", np.concatenate([clip(300), clip(301, "knocks"), clip(302)]), 16_000)
    (tmp_path / "junk.wav").write_bytes(b"not audio")
    paths[2:2] = [tmp_path / "long.wav", tmp_path / "junk.wav"]
    one_by_one = [score_file(det, p) for p in paths]
    batched = list(score_files(det, paths, batch=4))
    assert [r.path for r in batched] == [str(p) for p in paths]
    for a, b in zip(one_by_one, batched):
        assert (a.error, a.n_segments, a.duration) == (b.error, b.n_segments, b.duration)
        assert a.worst_offset == b.worst_offset
        if a.error is None:
            assert b.score == pytest.approx(a.score, rel=1e-5, abs=1e-6)
            assert b.members == pytest.approx(a.members, abs=1.01e-4)  # 4-decimal z: at most the last digit
    assert batched[3].error and batched[2].n_segments == 3
    assert [r.score for r in score_files(det, paths, batch=1)] == [r.score for r in one_by_one]
