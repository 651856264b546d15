"""The budget judged during the masked fine-tune: SABR's adaptive rule applied to the pruning step.

The budget search (:mod:`sabr.budget`) judges pruned copies before any training; the fine-tune buys back
accuracy the search cannot count. A ramp judges the budget again after every fine-tune epoch and moves the
model to another step of its grid: a :class:`GrowingRamp` prunes one pruning factor further while the budget
holds (unstructured mode), a :class:`ShrinkingRamp` starts cut at the top channel share and gives channels back
one share at a time while validation stays below the floor without recovering (structured mode,
:data:`sabr.budget.CHANNEL_SHARES`). Both answer :meth:`PruneRamp.update` with a :class:`RampAction` and carry
it out on the model with :meth:`PruneRamp.move`; only validation is read.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .pruning import prune_channel_share, revive_channels

__all__ = ["RampAction", "PruneRamp", "GrowingRamp", "ShrinkingRamp"]


class RampAction(enum.Enum):
    """What a ramp says after a fine-tune epoch (:meth:`PruneRamp.update`)."""

    GROW = "grow"
    """Within the budget: prune the model further, at :attr:`PruneRamp.factor` (now one step up)."""
    SHRINK = "shrink"
    """Below the floor and not recovering: give the model back the channels of :attr:`PruneRamp.factor`."""
    REVERT = "revert"
    """Below the floor above the kept step: load :attr:`PruneRamp.kept_model` back (its step is current again)."""
    HOLD = "hold"
    """Train on as it is."""


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class PruneRamp:
    """What both ramps share: the grid of steps, the kept model and the rule that keeps it.

    After every fine-tune epoch the model is kept when it is within the budget and better than the kept one
    (a higher step, or as high and more accurate), or, while no epoch has been within it (``fits=False``), when
    it is the most accurate so far. The result is the last kept model. Subclasses say where the ramp goes next
    (:meth:`_next`) and how the model gets there (:meth:`move`).

    Attributes:
        floor: the lowest admissible validation accuracy (:func:`sabr.budget.budget_floor`).
        factors: the steps, ascending (pruning factors, or channel shares).
        kept_accuracy: the kept model's validation accuracy (at the start, the search's, before the fine-tune).
        kept_model: the kept model's weights.
        index, kept_index: the current and the kept step (indices into ``factors``).
        kept_epoch: the epoch the kept model ended (0: the starting model).
        fits: whether the kept model is within the budget.
        column: what a step is, for the fine-tune's history.
        patience: epochs below the floor before the ramp steps back (see the subclasses).
        misses: epochs below the floor so far (in a row).
        layers: the per-layer pruning figures of each step the model was at, by step.
    """

    floor: float
    factors: list[float]
    kept_accuracy: float
    kept_model: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    index: int = 0
    kept_index: int = 0
    kept_epoch: int = 0
    fits: bool = True
    column: str = "prune_teta1"
    patience: int = 1
    misses: int = 0
    layers: dict[float, list] = field(default_factory=dict, repr=False)

    @property
    def factor(self) -> float:
        """The step the model is at now."""
        return self.factors[self.index]

    @property
    def kept_factor(self) -> float:
        """The step the kept model is at."""
        return self.factors[self.kept_index]

    @property
    def kept_layers(self) -> list:
        """The per-layer pruning figures of the kept model's step."""
        return self.layers[self.kept_factor]

    def update(self, model: nn.Module, epoch: int, val_accuracy: float) -> RampAction:
        """Score one finished fine-tune epoch (keeping ``model`` when it is better) and say what comes next."""
        within = val_accuracy >= self.floor
        better = self.index > self.kept_index or val_accuracy > self.kept_accuracy
        if within and better or not self.fits and (within or val_accuracy > self.kept_accuracy):
            self.kept_model, self.kept_accuracy = _copy(model), val_accuracy  # (not yet within: the best so far)
            self.kept_index, self.kept_epoch, self.fits = self.index, epoch, within
        return self._next(within, val_accuracy)

    def _next(self, within: bool, val_accuracy: float) -> RampAction:
        raise NotImplementedError

    def move(self, model: nn.Module, action: RampAction) -> None:
        """Carry ``action`` out on ``model`` in place: to :attr:`factor` on ``GROW``/``SHRINK``, back to the kept
        weights on ``REVERT``, nothing on ``HOLD``."""
        if action is RampAction.REVERT:
            model.load_state_dict(self.kept_model)
        elif action is not RampAction.HOLD:
            self.layers[self.factor] = self._step(model)

    def _step(self, model: nn.Module) -> list:
        raise NotImplementedError


@dataclass
class GrowingRamp(PruneRamp):
    """Upwards (unstructured mode): the fine-tune starts from the model pruned at the factor the search chose:
    within the budget before any training, or, when no factor was (``fits=False``), the least-pruned one, which
    the fine-tune may bring back within it. After every fine-tune epoch:

    * within the budget: the factor grows one step (``GROW``: :meth:`move` prunes the model further with
      ``prune``), as SABR multiplies its lambdas after an epoch without a significant drop;
    * below the floor at a factor above the kept model's for ``patience`` epochs in a row: back to the kept model
      and its factor (``REVERT``), as SABR divides its lambdas; the next epoch within the budget grows again;
    * below the floor at the kept model's factor: training goes on (a fine-tune epoch can lose accuracy that
      the next buys back, most of all the first one: docs/spec.md, phase 4).

    ``prune(model, factor)`` prunes ``model`` in place at ``factor`` and returns its per-layer figures.
    """

    prune: Callable[[nn.Module, float], list] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, model: nn.Module, floor: float, factors: Iterable[float], kept_accuracy: float,
              prune: Callable[[nn.Module, float], list] | None = None, layers: list | None = None,
              column: str = "prune_teta1", patience: int = 1) -> "GrowingRamp":
        """A ramp from ``model``, pruned at ``min(factors)`` (its per-layer figures ``layers``) and
        ``kept_accuracy`` on validation (within the budget or not: ``fits`` is ``kept_accuracy >= floor``)."""
        factors = sorted(factors)
        return cls(floor, factors, kept_accuracy, _copy(model), fits=kept_accuracy >= floor, column=column,
                   patience=patience, layers={factors[0]: layers}, prune=prune)

    def _next(self, within: bool, val_accuracy: float) -> RampAction:
        if within:
            self.misses = 0
            if self.index + 1 < len(self.factors):
                self.index += 1
                return RampAction.GROW
            return RampAction.HOLD
        if self.index > self.kept_index:
            self.misses += 1
            if self.misses >= self.patience:
                self.index, self.misses = self.kept_index, 0
                return RampAction.REVERT
        return RampAction.HOLD

    def _step(self, model: nn.Module) -> list:
        return self.prune(model, self.factor)


@dataclass
class ShrinkingRamp(PruneRamp):
    """Downwards (structured mode): :meth:`start` cuts the model at the top share of every channel group and the
    fine-tune trains there, as a one-shot pruner does, keeping the model before the cut as the fallback. The
    first epoch within the budget settles the step: from then on the ramp holds and keeps the step's best epoch
    within the budget. Until then, ``patience`` epochs in a row below the floor that do not improve on the
    step's best validation accuracy step the model one share down (``SHRINK``: :meth:`move` gives back the
    channels the lower share keeps, from the model before the cut), as SABR divides its lambdas after a drop;
    an epoch that still climbs is recovering from the cut, not failing. Why down: a ramp that grows spends its
    first epochs recovering from the fine-tune's learning-rate shock and reaches its top share with the learning
    rate already lowered, while a one-shot pruner trains every epoch at the final shape (measured: docs/spec.md,
    structured mode).

    Attributes (beyond :class:`PruneRamp`'s):
        groups: the channel groups whose shares are removed. recalibrate: re-estimates BatchNorm statistics after
            a move (or ``None``). before: the model before the cut. step_best: the best validation accuracy at
            the current step.
    """

    groups: Sequence = field(default=(), repr=False)
    recalibrate: Callable[[nn.Module], None] | None = field(default=None, repr=False)
    before: nn.Module | None = field(default=None, repr=False)
    step_best: float = float("-inf")

    @classmethod
    def start(cls, model: nn.Module, floor: float, factors: Iterable[float], kept_accuracy: float,
              groups: Sequence = (), recalibrate: Callable[[nn.Module], None] | None = None,
              layers: list | None = None, column: str = "channel_share", patience: int = 1) -> "ShrinkingRamp":
        """A ramp from ``model`` as it is (the fallback, step ``min(factors)``, per-layer figures ``layers``,
        ``kept_accuracy`` on validation), which it cuts in place at ``max(factors)`` (BatchNorm recalibrated)."""
        factors = sorted(factors)
        ramp = cls(floor, factors, kept_accuracy, _copy(model), index=len(factors) - 1, fits=kept_accuracy >= floor,
                   column=column, patience=patience, layers={factors[0]: layers}, groups=groups,
                   recalibrate=recalibrate)
        ramp.before = copy.deepcopy(model)
        ramp.layers[ramp.factor] = prune_channel_share(model, groups, ramp.factor)
        if recalibrate is not None:
            recalibrate(model)
        return ramp

    @property
    def settled(self) -> bool:
        """An epoch at the current step was within the budget (the ramp holds there)."""
        return self.fits and self.kept_index == self.index

    def _next(self, within: bool, val_accuracy: float) -> RampAction:
        climbing = val_accuracy > self.step_best
        self.step_best = max(self.step_best, val_accuracy)
        if self.settled or self.index == 0:
            return RampAction.HOLD
        self.misses = 0 if within or climbing else self.misses + 1
        if self.misses < self.patience:
            return RampAction.HOLD
        self.index, self.misses, self.step_best = self.index - 1, 0, float("-inf")
        return RampAction.SHRINK

    def _step(self, model: nn.Module) -> list:
        layers = revive_channels(model, self.before, self.groups, self.factor)
        if self.recalibrate is not None:
            self.recalibrate(model)
        return layers
