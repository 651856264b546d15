"""The training loop every phase (and every baseline) uses: :func:`train_epoch`, :func:`evaluate` and
:func:`fit`, the one epoch loop "train one epoch -> validate -> history row -> keep-best rule -> hooks".

Data live in memory as ``uint8`` tensors (see :mod:`sabr.data`), or stream from disk
(:class:`sabr.streaming.FileImages`); each batch is augmented when the split says so, then normalised on
the fly with the run's :class:`~sabr.data.Preprocess`, on the training device. :func:`build_optimizer`
makes every phase's optimizer.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .data import Preprocess
from .errors import ConfigError, SabrError, TrainingError

if TYPE_CHECKING:
    from .augment import Augment

log = logging.getLogger(__name__)


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite."""


@dataclass
class Split:
    """One split of a dataset: ``uint8`` images ``(N, C, H, W)`` (a tensor in memory, or a
    :class:`sabr.streaming.FileImages` read from disk) and ``int64`` labels.

    ``augment`` (:class:`sabr.augment.Augment`) changes the images of shuffled passes (training) only;
    ordered passes (evaluation, BatchNorm recalibration) see them as stored.
    """

    images: torch.Tensor
    labels: torch.Tensor
    augment: Augment | None = None

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
    """Yield ``(uint8 images, labels)`` mini-batches; shuffled (and augmented, when the split says so)
    when a ``generator`` is given, which then also draws the augmentation.

    ``shard=(rank, world_size)`` keeps every ``world_size``-th sample from ``rank`` on (distributed
    training); every shard gets the same number of batches. Streamed images are read by DataLoader
    workers (:meth:`sabr.streaming.FileImages.batches`) in the same order.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    rank, world = shard
    if world > 1:
        per = math.ceil(n / world)
        order = torch.cat([order, order[: per * world - n]])[rank::world]
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    augment = split.augment if generator is not None else None
    if hasattr(split.images, "batches"):  # streamed from disk
        yield from split.images.batches(chunks, split.labels, augment, generator)
        return
    for idx in chunks:
        images = split.images[idx]
        yield (images if augment is None else augment.batch(images, generator)), split.labels[idx]


OPTIMIZERS = ("adam", "adamw", "sgd")
"""The optimizers :func:`build_optimizer` makes (``--optimizer``)."""


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str = "adam", lr: float = 1e-3,
                    weight_decay: float = 0.0, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``adam`` (L2 ``weight_decay``), ``adamw`` (decoupled ``weight_decay``) or ``sgd`` (``momentum``,
    L2 ``weight_decay``) over ``params`` at learning rate ``lr``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")


PROGRESS_INTERVAL = 30.0
"""Seconds between two progress lines in a log (when the output is not a terminal)."""


def log_progress(iterable, total: int, desc: str = "batches", interval: float = PROGRESS_INTERVAL):
    """Yield from ``iterable`` and log ``desc: batch i/total (p%), r batches/s`` (INFO) at most every
    ``interval`` seconds: the progress of an epoch where no progress bar shows (CI, ``nohup`` logs)."""
    start = last = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        now = time.perf_counter()
        if now - last >= interval and i < total:
            log.info("%s: batch %d/%d (%.0f%%), %.1f batches/s", desc, i, total, 100 * i / max(total, 1),
                     i / (now - start))
            last = now


def progress_bar(enabled: bool) -> Callable | None:
    """A wrapper ``bar(iterable, total, desc)`` for :func:`train_epoch`'s ``progress``, or None when off: a
    tqdm bar on a terminal, else (tqdm would show nothing) :func:`log_progress` lines."""
    if not enabled:
        return None
    if not sys.stderr.isatty():
        return lambda it, total, desc="batches": log_progress(it, total, desc)
    from tqdm.auto import tqdm

    return lambda it, total, desc="batches": tqdm(it, total=total, desc=desc, unit="batch", leave=False, disable=None)


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
    amp: bool = False,
) -> EpochStats:
    """One pass over ``split``: cross-entropy (+ ``penalty()`` when given), one optimizer step per batch.

    ``amp`` runs the forward pass and the cross-entropy in bfloat16 autocast on CUDA (the penalty and the
    step stay in float32); on the CPU it changes nothing.

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
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
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



# --------------------------------------------------------------------------- the epoch loop
SEED_OFFSETS = {"base": 0, "sabr": 1, "finetune": 2, "gmp": 3}
"""Each phase's batch order is drawn from its own generator, seeded with the run's seed plus this offset."""


def phase_generator(seed: int, phase: str) -> torch.Generator:
    """The batch-order generator of ``phase`` (a key of :data:`SEED_OFFSETS`): seeded ``seed + offset``."""
    return torch.Generator().manual_seed(seed + SEED_OFFSETS[phase])


def plateau_scheduler(optimizer: torch.optim.Optimizer, factor: float, min_lr: float = 0.0):
    """``ReduceLROnPlateau`` on the validation loss with patience 3 (the phases' scheduler)."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=3,
                                                      min_lr=min_lr)


KeepRule = Literal["last", "best", "best_or_start"]
"""Which weights :func:`fit` ends with: the last epoch's; the best-validation epoch's (strictly greater
accuracy wins, epochs that were not validated do not count); or the best including the starting weights
(validated before epoch 1)."""


@dataclass
class FitState:
    """Where :func:`fit` stands: finished epochs, their history rows and the best weights so far.

    ``best_accuracy`` is a fraction (-1 before any validation); ``best_model`` is a ``state_dict`` copy,
    ``None`` with the ``"last"`` rule or before any validation.
    """

    epoch: int = 0
    rows: list[dict] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_model: dict[str, torch.Tensor] | None = None


@dataclass
class FitHooks:
    """The optional, phase-specific steps of :func:`fit`, each called at one point of an epoch.

    Attributes:
        validate_now: ``validate_now(epoch)`` before validating; False skips validation (and the
            scheduler and keep-best rule) for that epoch, e.g. while gradual pruning still ramps up.
        row_fields: ``row_fields(row)`` returns extra history fields for the epoch's row (after the
            scheduler step), e.g. SABR's ``step`` and its action, drop and lambdas.
        keep_now: ``keep_now(epoch)`` after validating; False leaves the epoch out of the keep-best rule
            (its validation still steps the scheduler), e.g. while gradual pruning is short of its target.
        on_row: ``on_row(row)`` once the row is complete (logging).
        on_epoch: ``on_epoch(state)`` at the end of every epoch, best weights updated (e.g. to save a
            resume state).
        stop: ``stop()`` before every epoch; True ends the loop early (SABR: every tensor frozen).
    """

    validate_now: Callable[[int], bool] | None = None
    row_fields: Callable[[dict], dict] | None = None
    keep_now: Callable[[int], bool] | None = None
    on_row: Callable[[dict], None] | None = None
    on_epoch: Callable[[FitState], None] | None = None
    stop: Callable[[], bool] | None = None


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train: Callable[[int], EpochStats],
        validate: Callable[[], tuple[float, float]], epochs: int, keep: KeepRule = "last", scheduler=None,
        hooks: FitHooks | None = None, state: FitState | None = None) -> FitState:
    """Train ``model`` for up to ``epochs`` epochs and end with the weights ``keep`` chooses.

    ``optimizer`` is the one ``train`` steps (the rows record its learning rate). Every epoch: ``train(epoch)`` (one pass, e.g. :func:`train_epoch`; epochs count from 1) ->
    ``validate()`` (``(loss, accuracy)``) -> ``scheduler.step(val_loss)`` when a scheduler is given ->
    history row (``epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, seconds`` + the
    ``row_fields`` hook's) -> keep-best rule -> ``on_epoch``. ``hooks`` (:class:`FitHooks`) adds the
    phase's own steps. ``state`` continues a loop after its ``epoch`` (resume); the returned
    :class:`FitState` holds the rows.
    """
    hooks = hooks or FitHooks()
    state = state or FitState()
    if keep == "best_or_start" and state.epoch == 0:
        state.best_accuracy = validate()[1]
        state.best_model = copy.deepcopy(model.state_dict())
    while state.epoch < epochs and not (hooks.stop is not None and hooks.stop()):
        state.epoch += 1
        _fit_epoch(model, optimizer, train, validate, keep, scheduler, hooks, state)
    if keep != "last" and state.best_model is not None:
        model.load_state_dict(state.best_model)
    return state


def _fit_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, train: Callable[[int], EpochStats],
               validate: Callable[[], tuple[float, float]], keep: KeepRule, scheduler, hooks: FitHooks,
               state: FitState) -> None:
    """One epoch of :func:`fit`: train, validate, schedule, row, keep-best, ``on_epoch``."""
    stats = train(state.epoch)
    row = {"epoch": state.epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy}
    if hooks.validate_now is None or hooks.validate_now(state.epoch):
        row["val_loss"], row["val_accuracy"] = validate()
        if scheduler is not None:
            scheduler.step(row["val_loss"])
    row.update(lr=optimizer.param_groups[0]["lr"], seconds=stats.seconds)
    if hooks.row_fields is not None:
        row.update(hooks.row_fields(row))
    state.rows.append(row)
    if hooks.on_row is not None:
        hooks.on_row(row)
    eligible = "val_accuracy" in row and (hooks.keep_now is None or hooks.keep_now(state.epoch))
    if keep != "last" and eligible and row["val_accuracy"] > state.best_accuracy:
        state.best_accuracy, state.best_model = row["val_accuracy"], copy.deepcopy(model.state_dict())
    if hooks.on_epoch is not None:
        hooks.on_epoch(state)
