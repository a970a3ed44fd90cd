"""AEGMM and VAEGMM: energy of a Gaussian mixture over latent code + reconstruction features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from machine_monitor import Detector, ModelError
from machine_monitor.detectors.gmm import AEGMMDetector, GMMNetwork, VAEGMMDetector, gmm_params, sample_energy
from tests.conftest import clicks, hum

TINY = {"hidden": (64, 16), "latent": 2, "n_gmm": 2, "est_hidden": 8, "epochs": 15, "batch_size": 64, "seed": 0}


def test_energy_is_the_negative_log_density_of_the_mixture():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.standard_normal((200, 3)))
    gamma = torch.softmax(torch.from_numpy(rng.standard_normal((200, 2))), dim=1)
    phi, mu, cov = gmm_params(feats, gamma)
    assert torch.allclose(phi.sum(), torch.tensor(1.0, dtype=phi.dtype))
    energy, _ = sample_energy(feats[:5], phi, mu, cov, eps=0.0)
    density = sum(float(phi[k]) * multivariate_normal(mu[k].numpy(), cov[k].numpy()).pdf(feats[:5].numpy())
                  for k in range(2))
    assert np.allclose(energy.numpy(), -np.log(density), rtol=1e-6)


def test_network_gives_reconstruction_latent_plus_two_features_and_memberships():
    net = GMMNetwork(40, (16,), latent=3, n_gmm=4, est_hidden=8).eval()
    x_hat, feats, gamma, kl = net(torch.randn(7, 40))
    assert x_hat.shape == (7, 40) and feats.shape == (7, 5) and gamma.shape == (7, 4)
    assert torch.allclose(gamma.sum(1), torch.ones(7)) and float(kl) == 0.0
    assert (feats[:, 3] >= 0).all() and (feats[:, 4].abs() <= 1 + 1e-6).all()  # rel. distance, cosine


@pytest.fixture(scope="module", params=[AEGMMDetector, VAEGMMDetector], ids=["aegmm", "vaegmm"])
def fitted(request):
    return request.param(**TINY).fit([hum(1.0, seed=s) for s in range(8)])


def test_higher_energy_means_more_anomalous(fitted):
    normal = fitted.score([hum(1.0, seed=s) for s in range(20, 24)])
    faulty = fitted.score([clicks(1.0, seed=s) for s in range(20, 24)])
    assert faulty.min() > normal.max()
    assert fitted.predict([clicks(1.0, seed=30)]).tolist() == [1]
    assert fitted.window_scores(hum(1.0, seed=31)).shape == (26,)  # 30 log-mel frames, windows of 5
    assert fitted.threshold_["method"] == "percentile" and fitted.threshold_["n_scores"] == 2


def test_save_load_round_trip_gives_identical_scores(fitted, tmp_path):
    clips = [hum(1.0, seed=50), clicks(1.0, seed=51)]
    path = fitted.save(tmp_path / "m")
    assert sorted(p.name for p in path.iterdir()) == ["arrays.safetensors", "model.json", "network.safetensors"]
    m = json.loads((path / "model.json").read_text())
    assert m["detector"] == fitted.kind and m["model"]["latent"] == 2
    loaded = Detector.load(path)  # dispatches on "detector"
    assert type(loaded) is type(fitted)
    assert np.array_equal(loaded.score(clips), fitted.score(clips))
    assert loaded.threshold_ == fitted.threshold_


def test_a_tampered_weight_file_is_refused(fitted, tmp_path):
    path = fitted.save(tmp_path / "m")
    with open(path / "network.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(ModelError, match="sha256"):
        Detector.load(path)


@pytest.mark.realaudio
@pytest.mark.slow
@pytest.mark.parametrize("cls", [AEGMMDetector, VAEGMMDetector], ids=["aegmm", "vaegmm"])
def test_trains_on_the_valve_split_and_reloads_identically(cls, valve_split, tmp_path):
    det = cls(epochs=3, seed=0).fit(valve_split["train"])
    scores = det.score(valve_split["test"][:30])
    assert scores.shape == (30,) and np.isfinite(scores).all() and np.isfinite(det.threshold_value_)
    assert np.array_equal(Detector.load(det.save(tmp_path / "m")).score(valve_split["test"][:5]), scores[:5])
