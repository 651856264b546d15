"""The accuracy budget: the sparsest model whose validation accuracy stays within ``max_drop`` of the base.

The base's figure is its validation plateau (:func:`val_plateau`: the median of phase 1's last ten epochs,
at most its best epoch's), not the best epoch's alone, which stands above the plateau by selection.

SABR's lambdas ramp up exponentially while the validation accuracy holds, so a run that simply stops
at an epoch limit and prunes with a fixed factor ends wherever the limit cuts the ramp, so the same
command gives very different sparsities with another seed or thread count (docs/spec.md). The budget
makes the outcome a property of the model and the data instead:

* during phase 2, :class:`BudgetTracker` keeps the epoch whose *prunable sparsity* (what the pruning
  rule would remove, :func:`sabr.pruning.prunable_sparsity`) is the highest among the epochs whose
  validation accuracy is within the budget, and ends the phase once ``patience`` epochs in a row after the
  first one within the budget brought no gain (the remaining weights shrinking by less than ``MIN_GAIN``);
* after it, :func:`search_prune_factor` prunes copies of the kept model at every factor of ``FACTORS``
  (BatchNorm statistics recalibrated) and chooses the factor one step before the first that breaks the
  budget (:func:`choose`);
* with a masked fine-tune (``--finetune-epochs``), a ramp (:mod:`sabr.ramp`) judges the budget again after every
  fine-tune epoch and prunes one factor further while it holds, since the fine-tune buys back accuracy that
  the search, which judges pruned copies before any training, cannot count (in structured mode its steps
  are :data:`CHANNEL_SHARES` of every group, removed smallest first, and it goes down: cut once to the top
  share, one share back while validation stays below the floor without recovering).

Both read the validation split only; the test split is evaluated once, on the result. A tighter budget
admits a subset of the candidates of a looser one, so it never yields a sparser choice among them.
"""

from __future__ import annotations

import copy
import itertools
import logging
import statistics
from dataclasses import InitVar, dataclass, field, fields
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .channels import STRUCTURED_FACTOR
from .config import BUDGET_FACTORS
from .errors import ConfigError
from .pruning import prunable_sparsity, prune
from .units import Units, legacy_units, takes_units

log = logging.getLogger(__name__)

FACTORS = BUDGET_FACTORS
"""The pruning factors (``teta1`` of the pruning rule) the budget search tries, weakest first."""

MIN_GAIN = 0.01
"""Phase 2 gains when an epoch within the budget leaves at least 1% fewer prunable weights than the best."""

TRACK_FACTOR = 0.2
"""The pruning factor phase 2's prunable sparsity is measured with (the rule's default), per weight."""

TRACK_FACTOR_STRUCTURED = STRUCTURED_FACTOR
"""The same for whole channels (``--structured``): :data:`sabr.channels.STRUCTURED_FACTOR`. At 0.2 no channel is
removable until channels reach zero, so every epoch looks alike and phase 2 would stop after ``patience``
epochs for lack of a measurable gain."""

CHANNEL_SHARES = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
"""The structured fine-tune's ramp steps: the share of every channel group removed, smallest channels first
(:func:`sabr.pruning.prune_channel_share`; 0 is the model as the search left it); the ramp starts at the top
and steps down (:class:`sabr.ramp.ShrinkingRamp`). Shares, not factors of the std rule: where a group's
channels are near-uniform in size no factor removes any, while a share removes the smallest whatever their
spread. The top is 87.5% because a share that high, fine-tuned, can still come back within the budget (the
measurements behind both: docs/spec.md, structured mode)."""


PLATEAU_EPOCHS = 10
"""The base's last epochs whose median validation accuracy is the budget's reference (:func:`val_plateau`)."""


def val_plateau(val_accuracies: Sequence[float], best: float) -> float:
    """The budget's reference: the median validation accuracy of the base's last :data:`PLATEAU_EPOCHS` epochs
    (``val_accuracies``, one per epoch), never above ``best`` (the kept epoch's figure); ``best`` itself when
    phase 1 ran fewer epochs than that.

    The kept base is the best of its epochs on validation: the highest of many noisy draws, it stands above
    what the trained model scores from epoch to epoch, while a pruned candidate is judged on the few epochs it
    gets, so a floor set from the best epoch can refuse every candidate (measured: docs/spec.md, the budget's
    row of the defaults table).
    """
    if len(val_accuracies) < PLATEAU_EPOCHS:
        return best
    return min(best, statistics.median(val_accuracies[-PLATEAU_EPOCHS:]))


def budget_floor(reference: float, max_drop: float) -> float:
    """The lowest validation accuracy the budget admits: ``reference - max_drop`` (fractions), the reference
    being the base's validation plateau (:func:`val_plateau`)."""
    return reference - max_drop


@dataclass
class BudgetTracker:
    """Phase 2's keep rule under a budget: the sparsest epoch within it, and when to stop looking.

    Args:
        floor: the lowest admissible validation accuracy (:func:`budget_floor`).
        patience: epochs in a row without gain after which phase 2 ends, counted from the first epoch
            within the budget. Before it the epochs are not counted: the adaptive rule is lowering the
            lambdas to bring the accuracy back, and phase 2 runs on to its epoch limit if it never does.
        prune_teta1: the pruning factor the prunable sparsity is measured with (the rule's 0.2).
        gamma: the pruning rule's ``gamma``.
        units: what the pruning rule acts on (:mod:`sabr.units`; ``None``: every Conv/Linear weight).
        params: deprecated (a :class:`DeprecationWarning`): tensor names, in place of ``units``.
        groups: deprecated (a :class:`DeprecationWarning`): channel groups, in place of ``units``.
    """

    floor: float
    patience: int
    prune_teta1: float = 0.2
    gamma: float = 0.1
    units: Units | None = field(default=None, repr=False)
    best_epoch: int = 0
    best_sparsity: float = -1.0
    best_model: dict[str, torch.Tensor] | None = None
    since_gain: int = 0
    fallback_epoch: int = 0
    fallback_accuracy: float = -1.0
    fallback_model: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    params: InitVar[list[str] | None] = None
    groups: InitVar[list | None] = None

    def __post_init__(self, params: list[str] | None, groups: list | None) -> None:
        self.units = legacy_units("BudgetTracker", self.units, params, groups, stacklevel=4)

    def update(self, model: nn.Module, epoch: int, val_accuracy: float) -> float:
        """Score one finished epoch; returns its prunable sparsity. Keeps a copy of the weights on a gain."""
        sparsity = prunable_sparsity(model, self.prune_teta1, self.gamma, units=self.units)
        if val_accuracy >= self.floor and (1 - sparsity) <= (1 - self.best_sparsity) * (1 - MIN_GAIN):
            self.best_epoch, self.best_sparsity, self.since_gain = epoch, sparsity, 0
            self.best_model = _copy(model)
        elif self.best_model is not None:
            self.since_gain += 1
        if self.best_model is None and val_accuracy > self.fallback_accuracy:
            self.fallback_epoch, self.fallback_accuracy, self.fallback_model = epoch, val_accuracy, _copy(model)
        return sparsity

    @property
    def exhausted(self) -> bool:
        """True once ``patience`` epochs in a row after the first within the budget brought no gain."""
        return self.since_gain >= self.patience

    def kept(self) -> tuple[int, dict[str, torch.Tensor] | None, bool]:
        """``(epoch, weights, within budget)`` to end phase 2 with: the sparsest epoch within the budget,
        else (no epoch fitted) the best-validation epoch."""
        if self.best_model is not None:
            return self.best_epoch, self.best_model, True
        return self.fallback_epoch, self.fallback_model, False

    def state_dict(self) -> dict:
        """Everything the tracker holds (tensors and JSON values), for the resume state (not the units,
        which the run derives from its model)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "units"}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (one saved with ``params``/``groups`` entries too)."""
        for key, value in state.items():
            if key not in ("units", "params", "groups"):
                setattr(self, key, value)


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Trial:
    """One pruning factor tried by :func:`search_prune_factor` (fractions)."""

    factor: float
    sparsity: float
    val_accuracy: float

    @classmethod
    def of(cls, factor: float, layers: list, val_accuracy: float) -> "Trial":
        """The trial of ``factor`` from :func:`sabr.pruning.prune`'s per-layer figures: its sparsity is the
        share of the layers' weights that pruning zeroed."""
        return cls(factor, sum(l.total - l.nonzero for l in layers) / sum(l.total for l in layers), val_accuracy)


def choose(trials: Iterable[Trial], floor: float) -> tuple[Trial, bool]:
    """The factor one grid step before the first that breaks the budget, and True; if the weakest factor
    already breaks it, the least-pruned trial and False.

    Accuracy falls as the factor grows, and on the measured models it falls off a cliff: the last factor
    before the first failure sits on the edge, where the validation split cannot tell a model that keeps
    its test accuracy from one that loses several test images (docs/benchmarks.md, the default run). So the admitted
    factors are the unbroken run of fitting ones, weakest first (a fit after a failure is noise), and
    when a failure ends that run the choice keeps one step of margin from it. When every factor fits,
    the strongest is chosen. A tighter floor shortens the run: it never admits a stronger factor.
    """
    ordered = sorted(trials, key=lambda t: t.factor)
    if not ordered:
        raise ConfigError("choose() needs at least one trial: pass the trials of one pruning factor or more.")
    fitting = list(itertools.takewhile(lambda t: t.val_accuracy >= floor, ordered))
    if not fitting:
        return ordered[0], False
    if len(fitting) == len(ordered) or len(fitting) == 1:
        return fitting[-1], True
    return fitting[-2], True


@takes_units
def prune_at(model: nn.Module, factor: float, gamma: float, units: Units | None = None,
             recalibrate: Callable[[nn.Module], None] | None = None, share: bool = False) -> list:
    """Prune ``model`` in place at ``factor`` (BatchNorm recalibrated when ``recalibrate`` is given) and
    return :func:`sabr.pruning.prune`'s per-layer figures (``units``: what to prune, :mod:`sabr.units`; default
    every Conv/Linear weight). With ``share``, ``factor`` is a share of every group's channels instead
    (:meth:`sabr.units.ChannelGroupUnits.prune_share`; ``units`` are then channel groups)."""
    layers = units.prune_share(model, factor) if share else prune(model, teta1=factor, gamma=gamma, units=units)
    if recalibrate is not None:
        recalibrate(model)
    return layers


@takes_units
def prune_copy(model: nn.Module, factor: float, gamma: float, units: Units | None = None,
               recalibrate: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, list]:
    """A copy of ``model`` pruned by :func:`prune_at`, and its per-layer figures."""
    pruned = copy.deepcopy(model)
    return pruned, prune_at(pruned, factor, gamma, units, recalibrate)


@takes_units
def search_prune_factor(model: nn.Module, validate: Callable[[nn.Module], float], floor: float,
                        gamma: float = 0.1, units: Units | None = None,
                        recalibrate: Callable[[nn.Module], None] | None = None,
                        factors: Iterable[float] = FACTORS, done: list[Trial] | None = None,
                        on_trial: Callable[[list[Trial]], None] | None = None) -> tuple[Trial, bool, list[Trial]]:
    """Try every pruning factor on copies of ``model`` and :func:`choose` among them.

    Args:
        model: the trained model (left unchanged).
        validate: ``validate(pruned copy)`` -> validation accuracy (a fraction). It is the only look at
            data the search takes: pass the validation split, never the test split.
        floor: the lowest admissible validation accuracy (:func:`budget_floor`).
        gamma: the pruning rule's ``gamma``.
        units: what the rule prunes (:mod:`sabr.units`; default every Conv/Linear weight). ``params=`` and
            ``groups=`` still work, deprecated.
        recalibrate: applied to each pruned copy before it is validated (BatchNorm statistics).
        factors: the factors to try.
        done: trials already made (a resumed search continues after them).
        on_trial: called with the trials so far after each new one (e.g. to save a resume state).

    Returns:
        ``(chosen trial, whether it fits the budget, every trial)``.
    """
    trials = list(done or [])
    for factor in factors:
        if any(t.factor == factor for t in trials):
            continue
        pruned, layers = prune_copy(model, factor, gamma, units, recalibrate)
        trials.append(Trial.of(factor, layers, float(validate(pruned))))
        log.debug("budget: factor %g -> sparsity %.4f, val %.4f", factor, trials[-1].sparsity, trials[-1].val_accuracy)
        if on_trial is not None:
            on_trial(trials)
    chosen, fits = choose(trials, floor)
    return chosen, fits, trials
