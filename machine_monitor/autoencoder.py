"""Dense autoencoder over stacked feature windows, and its training loop.

The default is the DCASE Task 2 baseline shape: 640 -> 128x4 -> 8 -> 128x4 -> 640,
Linear + BatchNorm + ReLU. Training is float32, seeded and deterministic on CPU,
early-stopped on a validation set of *whole clips* the network never trains on.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the autoencoder is trained (saved with a model for the record)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    seed: int = 0


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


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_autoencoder(
    net: DenseAutoencoder,
    sample_train: Callable[[np.ndarray], np.ndarray],
    n_train: int,
    sample_val: Callable[[np.ndarray], np.ndarray] | None,
    n_val: int,
    config: TrainConfig,
    *,
    device: torch.device | None = None,
    progress: bool = False,
) -> list[dict]:
    """Train ``net`` in place on windows drawn by index; keep the best validation epoch.

    ``sample_train(idx)`` returns the float32 windows ``(len(idx), input_dim)`` of
    training windows ``idx`` (gathered per batch, so the full window matrix never
    exists). Validation loss is the mean MSE over all ``n_val`` held-out windows.

    Returns
    -------
    list of dict
        Per-epoch history: ``epoch``, ``train_loss``, ``val_loss``.
    """
    from tqdm.auto import tqdm

    device = device or default_device()
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.MSELoss()
    # A batch of one sample would break BatchNorm; fold it into the previous batch.
    batch = max(2, min(config.batch_size, n_train))
    n_batches = max(1, n_train // batch)

    history: list[dict] = []
    best, best_state, bad = math.inf, None, 0
    bar = tqdm(range(config.epochs), desc="training", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        net.train()
        order = torch.randperm(n_train, generator=gen).numpy()
        total = 0.0
        for b in range(n_batches):
            idx = order[b * batch : (b + 1) * batch if b < n_batches - 1 else n_train]
            x = torch.from_numpy(sample_train(idx)).to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), x)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        train_loss = total / n_train
        val_loss = _evaluate(net, sample_val, n_val, device) if sample_val is not None and n_val else train_loss
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if val_loss < best - 1e-6:
            best, best_state, bad = val_loss, copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
            if bad >= config.patience:
                log.info("early stop at epoch %d (best val %.4f)", epoch + 1, best)
                break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history


@torch.no_grad()
def _evaluate(net, sample, n, device, chunk: int = 8192) -> float:
    net.eval()
    total = 0.0
    for s in range(0, n, chunk):
        x = torch.from_numpy(sample(np.arange(s, min(n, s + chunk)))).to(device)
        total += float(((net(x) - x) ** 2).mean(dim=1).sum())
    return total / n


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
