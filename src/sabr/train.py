"""The plain training loop pieces every phase (and every benchmark) uses.

Data live in memory as ``uint8`` tensors (see :mod:`sabr.data`); each batch is normalised on the fly
with the run's :class:`~sabr.data.Preprocess`, on the training device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Preprocess
from .errors import SabrError, TrainingError


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


@dataclass
class Split:
    """One split of a dataset, in memory: ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SabrError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu.")
    return dev


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None,
            shard: tuple[int, int] = (0, 1)):
    """Yield ``(uint8 images, labels)`` mini-batches; shuffled when a ``generator`` is given.

    ``shard=(rank, world_size)`` keeps every ``world_size``-th sample from ``rank`` on (distributed
    training); every shard gets the same number of batches.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    rank, world = shard
    if world > 1:
        per = math.ceil(n / world)
        order = torch.cat([order, order[: per * world - n]])[rank::world]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield split.images[idx], split.labels[idx]


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    seconds: float


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    split: Split,
    preprocess: Preprocess,
    device: torch.device,
    batch_size: int,
    generator: torch.Generator,
    penalty: Callable[[], torch.Tensor] | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Callable | None = None,
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    """One pass over ``split``: cross-entropy (+ ``penalty()`` when given), Adam step per batch.

    ``after_step()``, when given, runs after every optimizer step (e.g. to re-apply a pruning mask
    for masked fine-tuning, or to advance a gradual pruning schedule).

    Raises:
        NonFiniteLossError: the epoch's mean loss is NaN or infinite (checked once, at the end of the
            epoch, so no GPU sync happens per batch; the model's weights are then not to be trusted).
    """
    model.train()
    start = time.perf_counter()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    it = batches(split, batch_size, generator, shard)
    if progress is not None:
        it = progress(it, total=math.ceil(math.ceil(len(split) / shard[1]) / batch_size))
    for images, labels in it:
        x = preprocess.normalize(images.to(device, non_blocking=True))
        y = labels.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if penalty is not None:
            loss = loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        total_loss += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    mean_loss = float(total_loss) / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise NonFiniteLossError(
            "the training loss became NaN or infinite; lower the learning rate (--lr / --lr-sabr) or, in phase 2, "
            "SABR's lambda factor (--teta1) or growth rate (--growth-rate)."
        )
    return EpochStats(mean_loss, float(correct) / max(seen, 1), time.perf_counter() - start)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, preprocess: Preprocess, device: torch.device,
             batch_size: int = 512) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` on ``split``; accuracy is a fraction."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for images, labels in batches(split, batch_size):
        x = preprocess.normalize(images.to(device))
        y = labels.to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = max(len(split), 1)
    return float(loss) / n, float(correct) / n

