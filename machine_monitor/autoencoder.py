"""Dense autoencoder over stacked feature windows (networks only; training is in ``training.py``).

The default is the DCASE Task 2 baseline shape: 640 -> 128x4 -> 8 -> 128x4 -> 640,
Linear + BatchNorm + ReLU. Scoring runs a numpy copy of a trained network with
BatchNorm folded in (:func:`numpy_inference`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Shape of the autoencoder (saved with a model)."""

    input_dim: int
    hidden: tuple[int, ...] = (128, 128, 128, 128)
    bottleneck: int = 8

    def to_dict(self) -> dict:
        return {"input_dim": self.input_dim, "hidden": list(self.hidden), "bottleneck": self.bottleneck}

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        return cls(int(d["input_dim"]), tuple(int(h) for h in d["hidden"]), int(d["bottleneck"]))


def _block(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU()]


class DenseAutoencoder(nn.Module):
    """Symmetric dense autoencoder; ``forward`` returns the reconstruction."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        dims = [config.input_dim, *config.hidden]
        enc: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            enc += _block(a, b)
        enc += _block(dims[-1], config.bottleneck)
        dec: list[nn.Module] = []
        back = [config.bottleneck, *reversed(config.hidden)]
        for a, b in zip(back[:-1], back[1:]):
            dec += _block(a, b)
        dec.append(nn.Linear(back[-1], config.input_dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def fold_means(per_clip, fold_of: np.ndarray) -> np.ndarray:
    """Mean row of the clips outside each fold: what fold network ``k`` is centred on.

    Parameters
    ----------
    per_clip : sequence of np.ndarray [shape=(n_i, d)]
        Each clip's rows.
    fold_of : np.ndarray [shape=(n_clips,)]
        Each clip's fold.

    Returns
    -------
    np.ndarray [shape=(n_folds, d), dtype=float32]
    """
    fold_of = np.asarray(fold_of)
    n_folds = int(fold_of.max()) + 1
    sums = np.zeros((n_folds, per_clip[0].shape[1]))
    counts = np.zeros(n_folds)
    for rows, k in zip(per_clip, fold_of):
        sums[k] += np.asarray(rows, dtype=np.float64).sum(axis=0)
        counts[k] += len(rows)
    outside = (sums.sum(axis=0) - sums) / np.maximum(counts.sum() - counts, 1)[:, None]
    return outside.astype(np.float32)


@torch.no_grad()
def fold_centring(net: DenseAutoencoder, centre: np.ndarray) -> DenseAutoencoder:
    """Fold "subtract ``centre`` from the input, add it back to the output" into a trained
    autoencoder's first and last linear layers, in place: trained on ``u - centre``, it then
    takes ``u`` and returns its reconstruction of ``u`` (the same residual).

    A cross-fitted network is centred on the clips outside its fold: a centre that includes
    a clip pulls it toward normal, and its out-of-fold score with it (benchmarks/README.md).
    """
    c = torch.as_tensor(np.asarray(centre, dtype=np.float32)).to(net.encoder[0].bias.device)
    net.encoder[0].bias -= net.encoder[0].weight @ c
    net.decoder[-1].bias += c
    return net


@torch.no_grad()
def reconstruct(net: DenseAutoencoder, x: np.ndarray, *, chunk: int = 16384) -> np.ndarray:
    """Reconstruction ``x_hat`` of windows ``x`` ``(n, d)`` as a float32 numpy array."""
    net.eval()
    device = next(net.parameters()).device
    if len(x) <= chunk:
        return net(torch.from_numpy(np.ascontiguousarray(x)).to(device)).cpu().numpy()
    return np.concatenate([reconstruct(net, x[s : s + chunk], chunk=chunk) for s in range(0, len(x), chunk)])


class NumpyAutoencoder:
    """Inference copy of a trained :class:`DenseAutoencoder` in numpy, BatchNorm folded in.

    Scoring feeds the network a handful of windows at a time (one vector per 10 s span for
    peak features); there torch's per-operator overhead (~0.3 ms a network) is most of the
    cost, where ten float32 matrix products in numpy take a few tens of microseconds.
    """

    def __init__(self, net: DenseAutoencoder):
        self.encoder = _fold(net.encoder)
        self.decoder = _fold(net.decoder)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x_hat, z)`` for windows ``x`` ``(n, input_dim)``."""
        z = _run(self.encoder, np.asarray(x, dtype=np.float32))
        return _run(self.decoder, z), z


def _fold(seq: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """Layers as ``(W^T, b, relu)`` with each eval-mode BatchNorm folded into its Linear."""
    layers: list[tuple[np.ndarray, np.ndarray, bool]] = []
    for m in seq:
        if isinstance(m, nn.Linear):
            layers.append((m.weight.detach().cpu().numpy().T.copy(), m.bias.detach().cpu().numpy().copy(), False))
        elif isinstance(m, nn.BatchNorm1d):
            w, b, _ = layers[-1]
            scale = (m.weight / torch.sqrt(m.running_var + m.eps)).detach().cpu().numpy()
            shift = (m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)).detach().cpu().numpy()
            layers[-1] = ((w * scale).astype(np.float32), (b * scale + shift).astype(np.float32), False)
        elif isinstance(m, nn.ReLU):
            w, b, _ = layers[-1]
            layers[-1] = (w, b, True)
        else:
            raise TypeError(f"cannot fold a {type(m).__name__} layer")
    return layers


def _run(layers, x: np.ndarray) -> np.ndarray:
    for w, b, relu in layers:
        x = x @ w
        x += b
        if relu:
            np.maximum(x, 0, out=x)
    return x


def numpy_inference(net: DenseAutoencoder) -> NumpyAutoencoder | None:
    """The net's cached numpy inference copy, or ``None`` when it lives on a GPU."""
    if next(net.parameters()).device.type != "cpu":
        return None
    cached = getattr(net, "_numpy_inference", None)
    if cached is None:
        cached = NumpyAutoencoder(net)
        object.__setattr__(net, "_numpy_inference", cached)  # plain attribute, not a submodule
    return cached
