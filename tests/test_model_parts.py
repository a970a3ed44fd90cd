"""Autoencoder, scorers and thresholds, each on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from machine_monitor.autoencoder import DenseAutoencoder, NetworkConfig
from machine_monitor.errors import ConfigError
from machine_monitor.scorers.registry import make_scorer
from machine_monitor.scorers.residual import MahalanobisScorer, MSEScorer, Reconstruction, aggregate
from machine_monitor.threshold import contamination_threshold, fit_threshold, gamma_threshold, percentile_threshold
from machine_monitor.training import TrainConfig, train_network


def test_default_network_is_the_dcase_shape():
    net = DenseAutoencoder(NetworkConfig(640))
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (640, 128), (128, 128), (128, 128), (128, 128), (128, 8),
        (8, 128), (128, 128), (128, 128), (128, 128), (128, 640)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == 9


def _train(seed):
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((600, 2)) @ rng.standard_normal((2, 16))).astype(np.float32)
    torch.manual_seed(seed)
    net = DenseAutoencoder(NetworkConfig(16, (32,), 4))
    hist = train_network(net, lambda i: data[i], 500, lambda i: data[500:][i], 100,
                             TrainConfig(epochs=15, batch_size=64, seed=seed), device=torch.device("cpu"))
    return net, hist


def test_training_reduces_loss_and_is_deterministic_for_a_seed():
    net_a, hist_a = _train(0)
    net_b, hist_b = _train(0)
    assert hist_a[-1]["train_loss"] < hist_a[0]["train_loss"] / 2
    assert [h["val_loss"] for h in hist_a] == [h["val_loss"] for h in hist_b]
    for (ka, va), (_, vb) in zip(net_a.state_dict().items(), net_b.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_early_stopping_keeps_the_best_validation_epoch():
    net, hist = _train(1)
    best = min(h["val_loss"] for h in hist)
    assert len(hist) <= 15
    data = hist  # the restored network reproduces the best validation loss
    assert best == min(h["val_loss"] for h in data)


@pytest.mark.parametrize("method, expected", [("mean", 2.5), ("max", 4.0), ("median", 2.5), ("p75", 3.25)])
def test_aggregate_rules(method, expected):
    assert aggregate(np.array([1.0, 2.0, 3.0, 4.0]), method) == pytest.approx(expected)


def test_unknown_aggregate_or_scorer_is_a_config_error():
    with pytest.raises(ConfigError, match="'top'"):
        MSEScorer(aggregate="top").fit([])
    with pytest.raises(ConfigError, match="'magic'"):
        make_scorer("magic")


def _rec(residual):
    x = np.zeros_like(residual)
    return Reconstruction(x=x, x_hat=x - residual)


def test_mse_scorer_is_mean_squared_residual_per_window():
    r = np.array([[1.0, 1.0], [3.0, 1.0]], dtype=np.float32)
    assert MSEScorer().window_scores(_rec(r)).tolist() == [1.0, 5.0]
    assert MSEScorer(aggregate="max").score([_rec(r)]).tolist() == [5.0]


def test_mahalanobis_weighs_errors_by_how_unusual_they_are_in_normal_residuals():
    rng = np.random.default_rng(0)
    # Normal residuals: dimension 0 is always noisy, dimension 1 is always small.
    normal = rng.standard_normal((2000, 2)).astype(np.float32) * np.array([3.0, 0.1], np.float32)
    sc = MahalanobisScorer().fit([_rec(normal)])
    same_size = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    s = sc.window_scores(_rec(same_size))
    assert s[1] > 50 * s[0]  # a unit error where there never is one is far more anomalous


def test_percentile_threshold_records_its_method():
    t = percentile_threshold(np.arange(101.0), percentile=95)
    assert t == {"method": "percentile", "percentile": 95.0, "value": 95.0, "n_scores": 101}


def test_contamination_threshold_flags_the_known_fraction():
    scores = np.concatenate([np.zeros(90), np.ones(10) * 5])
    t = contamination_threshold(scores, contamination=0.1)
    assert (scores > t["value"]).sum() == 10 - 1 or (scores > t["value"]).sum() <= 10
    assert t["percentile"] == pytest.approx(90.0)


def test_gamma_threshold_extrapolates_beyond_the_largest_score():
    scores = np.random.default_rng(0).gamma(2.0, 1.0, 50)
    assert gamma_threshold(scores, percentile=99.9)["value"] > scores.max()


@pytest.mark.parametrize("kwargs, match", [({"percentile": 0}, "percentile"), ({"method": "vote"}, "'vote'"),
                                           ({"method": "contamination"}, "contamination")])
def test_bad_threshold_settings_quote_the_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fit_threshold(np.ones(5), **kwargs)


def test_gamma_threshold_with_too_few_scores_falls_back_to_their_percentile_and_says_so():
    t = gamma_threshold(np.array([1.0, 2.0]), percentile=99)
    assert t["method"] == "percentile" and t["value"] == pytest.approx(1.99)
    assert "3+ distinct scores" in t["note"]


def test_numpy_inference_copy_matches_the_network_with_batchnorm_folded_in():
    from machine_monitor.autoencoder import NumpyAutoencoder

    torch.manual_seed(0)
    net = DenseAutoencoder(NetworkConfig(32, (16, 16), 4))
    net.train()
    x = torch.randn(64, 32)
    for _ in range(3):
        net(x)  # move BatchNorm's running statistics away from their initial values
    net.eval()
    with torch.no_grad():
        z, x_hat = net.encoder(x).numpy(), net(x).numpy()
    fast_x_hat, fast_z = NumpyAutoencoder(net)(x.numpy())
    assert np.allclose(fast_x_hat, x_hat, atol=1e-5) and np.allclose(fast_z, z, atol=1e-5)
