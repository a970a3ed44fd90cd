"""The one epoch loop every network of the package trains with (autoencoders, AEGMM, VAEGMM).

Windows are drawn by index (``sample(idx) -> (len(idx), dims)`` float32), so the full
window matrix never exists. Training is float32, seeded and deterministic on CPU. With a
validation sampler the loop early-stops and keeps the best validation epoch; without one
it runs every epoch and keeps the last.
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

Sampler = Callable[[np.ndarray], np.ndarray]
#: ``loss(net, x) -> per-window losses (n,)``; the batch loss is their mean.
LossFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a network is trained (saved with a model for the record)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    seed: int = 0


def best_epoch(history: list[dict]) -> int:
    """The epoch (1-based) with the lowest validation loss in a :func:`train_network` history."""
    return int(min(history, key=lambda h: h["val_loss"])["epoch"])


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reconstruction_loss(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-window mean squared reconstruction error, the autoencoders' loss."""
    return ((net(x) - x) ** 2).mean(dim=1)


def train_network(
    net: nn.Module,
    sample_train: Sampler,
    n_train: int,
    sample_val: Sampler | None,
    n_val: int,
    config: TrainConfig,
    *,
    loss: LossFn = reconstruction_loss,
    device: torch.device | None = None,
    progress: bool = False,
) -> list[dict]:
    """Train ``net`` in place with Adam; keep the best validation epoch (or the last).

    Parameters
    ----------
    net : torch.nn.Module
    sample_train, sample_val : callable
        ``sample(idx)`` returns windows ``idx`` as float32 ``(len(idx), dims)``.
        ``sample_val`` ``None`` (or ``n_val`` 0): no validation, no early stopping.
    n_train, n_val : int
        Number of windows each sampler can draw from.
    config : TrainConfig
    loss : callable
        ``loss(net, x) -> (n,)`` per-window losses; training minimises their mean.

    Returns
    -------
    list of dict
        Per-epoch history: ``epoch``, ``train_loss`` and (with validation) ``val_loss``.
    """
    from tqdm.auto import tqdm

    device = device or default_device()
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    validate = sample_val is not None and n_val > 0
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
            batch_loss = loss(net, x).mean()
            batch_loss.backward()
            opt.step()
            total += float(batch_loss.detach()) * len(idx)
        record = {"epoch": epoch + 1, "train_loss": total / n_train}
        if validate:
            record["val_loss"] = val_loss = _evaluate(net, sample_val, n_val, loss, device)
            bar.set_postfix(train=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}")
        history.append(record)
        if not validate:
            continue
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
def _evaluate(net: nn.Module, sample: Sampler, n: int, loss: LossFn, device, chunk: int = 8192) -> float:
    """Mean per-window loss over all ``n`` validation windows (network in eval mode)."""
    net.eval()
    total = 0.0
    for s in range(0, n, chunk):
        x = torch.from_numpy(sample(np.arange(s, min(n, s + chunk)))).to(device)
        total += float(loss(net, x).sum())
    return total / n
