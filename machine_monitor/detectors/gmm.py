"""AEGMM and VAEGMM (DAGMM, Zong et al. 2018; the structure of alibi-detect's OutlierAEGMM / OutlierVAEGMM) in torch.

An autoencoder compresses each standardised log-mel window to a small latent code;
the code plus two reconstruction features (relative Euclidean distance and cosine
similarity between ``x`` and ``x_hat``) feed an estimation network that assigns
each window soft memberships ``gamma`` to ``n_gmm`` Gaussian components. The
mixture's parameters are the gamma-weighted moments of the features, and a window's
score is its **sample energy** ``-log p(features)``: higher = more anomalous.
All parts are trained together on

    MSE(x, x_hat) [+ beta * KL for the VAE] + w_energy * mean energy + w_cov_diag * sum(1 / diag(cov))

The last term keeps covariances from collapsing. After training, the mixture is
re-estimated over every training window and saved with the weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from machine_monitor.detectors.windowed import WindowedDetector, WindowSampler


def _mlp(dims: list[int], *, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(dims) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class GMMNetwork(nn.Module):
    """Encoder, decoder and estimation network of (V)AEGMM.

    Parameters
    ----------
    input_dim : int
    hidden : tuple of int
        Encoder widths (the decoder mirrors them).
    latent : int
        Size of the latent code.
    n_gmm : int
        Mixture components.
    est_hidden : int
        Width of the estimation network's hidden layer.
    variational : bool
        VAEGMM: the encoder gives a mean and a log-variance, the code is sampled
        while training and is the mean when scoring.
    """

    def __init__(self, input_dim: int, hidden=(128, 64), latent: int = 4, n_gmm: int = 4, est_hidden: int = 16,
                 variational: bool = False, dropout: float = 0.5):
        super().__init__()
        self.variational = variational
        out = latent * 2 if variational else latent
        self.encoder = _mlp([input_dim, *hidden, out], last_activation=False)
        self.decoder = _mlp([latent, *reversed(hidden), input_dim], last_activation=False)
        self.estimation = nn.Sequential(nn.Linear(latent + 2, est_hidden), nn.Tanh(), nn.Dropout(dropout),
                                        nn.Linear(est_hidden, n_gmm), nn.Softmax(dim=1))

    def forward(self, x: torch.Tensor):
        """Returns ``x_hat``, GMM features ``(n, latent + 2)``, ``gamma`` ``(n, n_gmm)``, and the KL term."""
        h = self.encoder(x)
        kl = x.new_zeros(())
        if self.variational:
            mean, logvar = h.chunk(2, dim=1)
            logvar = logvar.clamp(-10.0, 10.0)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if self.training else mean
            kl = -0.5 * torch.mean(torch.sum(1 + logvar - mean**2 - logvar.exp(), dim=1))
        else:
            z = h
        x_hat = self.decoder(z)
        rel_euclid = (x - x_hat).norm(dim=1) / (x.norm(dim=1) + 1e-8)
        cos = nn.functional.cosine_similarity(x, x_hat, dim=1)
        feats = torch.cat([z, rel_euclid[:, None], cos[:, None]], dim=1)
        return x_hat, feats, self.estimation(feats), kl


def gmm_params(feats: torch.Tensor, gamma: torch.Tensor):
    """Mixture weights ``phi`` ``(k,)``, means ``mu`` ``(k, d)``, covariances ``cov`` ``(k, d, d)``."""
    n_k = gamma.sum(dim=0) + 1e-12
    phi = n_k / gamma.shape[0]
    mu = gamma.T @ feats / n_k[:, None]
    diff = feats[:, None, :] - mu[None]  # (n, k, d)
    cov = torch.einsum("nk,nki,nkj->kij", gamma, diff, diff) / n_k[:, None, None]
    return phi, mu, cov


def sample_energy(feats: torch.Tensor, phi, mu, cov, eps: float = 1e-3):
    """Sample energy ``-log sum_k phi_k N(feats | mu_k, cov_k)`` ``(n,)`` and the cov-diagonal penalty."""
    d = feats.shape[1]
    cov = cov + eps * torch.eye(d, dtype=feats.dtype, device=feats.device)
    chol = torch.linalg.cholesky(cov)  # (k, d, d)
    diff = (feats[:, None, :] - mu[None]).permute(1, 2, 0)  # (k, d, n)
    sol = torch.linalg.solve_triangular(chol, diff, upper=False)  # (k, d, n)
    maha = (sol**2).sum(dim=1).T  # (n, k)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(dim=1)  # (k,)
    log_p = torch.log(phi + 1e-12)[None] - 0.5 * (maha + logdet[None] + d * math.log(2 * math.pi))
    energy = -torch.logsumexp(log_p, dim=1)
    cov_diag = (1.0 / torch.diagonal(cov, dim1=1, dim2=2)).sum()
    return energy, cov_diag


class AEGMMDetector(WindowedDetector):
    """AEGMM on standardised log-mel windows; window score = sample energy.

    Parameters
    ----------
    hidden, latent, n_gmm, est_hidden : network shape (see :class:`GMMNetwork`).
    epochs, batch_size, lr : training (Adam); the network of the last epoch is kept.
    w_energy, w_cov_diag : loss weights (alibi-detect's defaults).
    beta : weight of the KL term (VAEGMM only).
    Other parameters as :class:`~machine_monitor.detectors.windowed.WindowedDetector`.
    """

    kind = "aegmm"
    NETWORK = True
    VARIATIONAL = False

    def __init__(self, *, hidden=(128, 64), latent: int = 4, n_gmm: int = 4, est_hidden: int = 16,
                 epochs: int = 30, batch_size: int = 256, lr: float = 1e-3, w_energy: float = 0.1,
                 w_cov_diag: float = 0.005, beta: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.latent = latent
        self.n_gmm = n_gmm
        self.est_hidden = est_hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.w_energy = w_energy
        self.w_cov_diag = w_cov_diag
        self.beta = beta

    def _model_config(self) -> dict:
        return {"input_dim": self.feature_config_.window_dims, "hidden": [int(h) for h in self.hidden],
                "latent": int(self.latent), "n_gmm": int(self.n_gmm), "est_hidden": int(self.est_hidden),
                "variational": self.VARIATIONAL}

    def _build_network(self, config: dict) -> GMMNetwork:
        return GMMNetwork(int(config["input_dim"]), tuple(config["hidden"]), int(config["latent"]),
                          int(config["n_gmm"]), int(config["est_hidden"]), variational=bool(config["variational"]))

    def _loss(self, net: GMMNetwork, x: torch.Tensor) -> torch.Tensor:
        """Per-window loss: reconstruction + weighted sample energy (+ KL), plus the batch's covariance penalty."""
        x_hat, feats, gamma, kl = net(x)
        energy, cov_diag = sample_energy(feats, *gmm_params(feats, gamma))
        # KL per input dimension, so beta means the same whatever the window size.
        return (((x_hat - x) ** 2).mean(dim=1) + self.beta * kl / x.shape[1]
                + self.w_energy * energy + self.w_cov_diag * cov_diag)

    def _fit_model(self, train: WindowSampler, val: WindowSampler) -> list[dict]:
        from machine_monitor.training import TrainConfig, default_device, train_network

        device = torch.device(self.device) if self.device else default_device()
        torch.manual_seed(self.seed)
        self.network_ = net = self._build_network(self._model_config())
        # No early stopping (the mixture is refitted on the last network): alibi-detect's recipe.
        config = TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size), lr=self.lr, seed=self.seed)
        history = train_network(net, train, len(train), None, 0, config, loss=self._loss, device=device,
                                progress=self.progress)
        self._fit_mixture(train, device)
        return history

    @torch.no_grad()
    def _fit_mixture(self, train: WindowSampler, device, chunk: int = 8192) -> None:
        # The mixture of the whole training set, from gamma-weighted sums (float64).
        net = self.network_.eval()
        d = self.latent + 2
        s_g = torch.zeros(self.n_gmm, dtype=torch.float64)
        s_gz = torch.zeros(self.n_gmm, d, dtype=torch.float64)
        s_gzz = torch.zeros(self.n_gmm, d, d, dtype=torch.float64)
        for s in range(0, len(train), chunk):
            x = torch.from_numpy(train(np.arange(s, min(len(train), s + chunk)))).to(device)
            _, feats, gamma, _ = net(x)
            f, g = feats.double().cpu(), gamma.double().cpu()
            s_g += g.sum(0)
            s_gz += g.T @ f
            s_gzz += torch.einsum("nk,ni,nj->kij", g, f, f)
        n_k = s_g + 1e-12
        mu = s_gz / n_k[:, None]
        cov = s_gzz / n_k[:, None, None] - mu[:, :, None] * mu[:, None, :]
        self.phi_ = (n_k / n_k.sum()).float().numpy()
        self.mu_ = mu.float().numpy()
        self.cov_ = cov.float().numpy()

    @torch.no_grad()
    def _window_scores(self, windows: np.ndarray, chunk: int = 8192) -> np.ndarray:
        net = self.network_.eval()
        device = next(net.parameters()).device
        params = [torch.from_numpy(a).to(device) for a in (self.phi_, self.mu_, self.cov_)]
        out = []
        for s in range(0, len(windows), chunk):
            _, feats, _, _ = net(torch.from_numpy(np.ascontiguousarray(windows[s:s + chunk])).to(device))
            out.append(sample_energy(feats, *params)[0].cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def _window_model_arrays(self) -> dict[str, np.ndarray]:
        return {"phi": self.phi_, "mu": self.mu_, "cov": self.cov_}

    def _set_model_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.phi_, self.mu_, self.cov_ = arrays["phi"], arrays["mu"], arrays["cov"]


class VAEGMMDetector(AEGMMDetector):
    """VAEGMM: AEGMM with a variational encoder (KL term weighted by ``beta``)."""

    kind = "vaegmm"
    VARIATIONAL = True
