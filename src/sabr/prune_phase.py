"""Phase 3 of a run (:func:`sabr.pipeline.run`): the budget search over pruning factors, on validation only
(:class:`BudgetChoice`), then the SABR and the base model pruned at the chosen factors, the optional masked
fine-tune with its ramp (:mod:`sabr.ramp`), and the one evaluation on the test split (:class:`PrunedResult`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from .budget import CHANNEL_SHARES, Trial, budget_floor, prune_at, prune_copy, search_prune_factor
from .checkpoint import load_weights_into, save_checkpoint
from .config import RunConfig
from .experiment import Experiment, evaluate_split
from .metrics import sparsity_report
from .phases import bn_recalibrator, finetune_masked
from .pruning import prune
from .ramp import GrowingRamp, PruneRamp, ShrinkingRamp
from .regularizer import SABR
from .resume import RunState
from .rundir import RunDir
from .units import ChannelGroupUnits, Units

if TYPE_CHECKING:
    from .pipeline import PhaseResult

__all__ = ["BudgetChoice", "PrunedResult", "search_budget", "prune_chosen", "budget_reference", "run_floor"]

log = logging.getLogger(__name__)


def budget_reference(base: "PhaseResult") -> float:
    """The budget's reference: the base's validation plateau (its best epoch's figure for a run resumed from a
    state saved before the plateau was kept)."""
    return base.extra.get("val_plateau", base.val_accuracy)


def run_floor(cfg: RunConfig, base: "PhaseResult") -> float:
    """The budget's floor: the base's validation plateau less ``--max-drop`` (``-inf`` without a budget)."""
    return budget_floor(budget_reference(base), cfg.max_drop) if cfg.max_drop is not None else float("-inf")


@dataclass(frozen=True)
class BudgetChoice:
    """What the budget search chose for the SABR model and, the same way, for the base model (``base_*``)."""

    max_drop: float | None
    floor: float
    trials: list[Trial]
    chosen: Trial
    fits: bool
    base_trials: list[Trial]
    base_chosen: Trial
    base_fits: bool
    base_model: nn.Module
    units: Units | None = None  # what the regulariser acted on, pruned in phase 3 (None: every Conv/Linear weight)

    def curve(self) -> list[dict]:
        """The run's accuracy-vs-sparsity chart: every factor tried, on validation, SABR and base side by side."""
        return [{"teta1": t.factor, "sparsity": t.sparsity, "val_accuracy": t.val_accuracy,
                 "base_sparsity": b.sparsity, "base_val_accuracy": b.val_accuracy}
                for t, b in zip(self.trials, self.base_trials)]


@dataclass(frozen=True)
class PrunedResult:
    """Phase 3's outcome: the pruned (and fine-tuned) model, its per-layer figures, its ``summary.json`` entry
    (``figures``), the factor it ends at with its validation figure (``chosen``, as the search counts it; the
    search's choice unless a fine-tune ramp moved it) and whether that is within the budget (``fits``), and the
    base model pruned the same way (``base_figures``: ``summary.json``'s ``base_pruned``)."""

    model: nn.Module
    layers: list
    figures: dict
    chosen: Trial
    fits: bool
    base_figures: dict = field(default_factory=dict)

    def budget_summary(self, choice: BudgetChoice, base: "PhaseResult", sabr: "PhaseResult") -> dict:
        """``summary.json``'s ``budget`` entry (fractions; drops are base minus pruned)."""
        return {"max_drop": choice.max_drop, "floor": choice.floor if choice.max_drop is not None else None,
                "prune_teta1": self.chosen.factor,
                "within_budget": self.fits,
                "val_accuracy": self.chosen.val_accuracy, "val_drop": base.val_accuracy - self.chosen.val_accuracy,
                "test_drop": base.test_accuracy - self.figures["test_accuracy"],
                "sabr_epoch": sabr.extra["kept_epoch"]}


def search_budget(exp: Experiment, folder: RunDir, base: "PhaseResult", sabr: "PhaseResult", reg: SABR,
                  base_weights: dict, state: RunState | None) -> BudgetChoice:
    """Prune copies of the SABR and the base model at every factor and choose, on validation only.

    With ``prune_teta1`` set (or the ``reference`` preset) that factor is taken; the other factors are still
    tried for the chart. Each trial is saved in the resume state, so a killed search continues where it stopped.
    """
    cfg = exp.config
    floor = run_floor(cfg, base)
    factors = sorted(set(cfg.sweep) | ({cfg.prune_teta1} if cfg.prune_teta1 is not None else set()))
    recal = bn_recalibrator(exp) if cfg.recalibrates else None
    validate = lambda m: evaluate_split(exp, m, exp.val)[1]  # noqa: E731 - the search's only look at data
    base_model = copy.deepcopy(base.model)
    load_weights_into(base_model, base_weights, source="the base checkpoint")
    trials = {k: list(v) for k, v in state.trials.items()} if state is not None and state.phase == "budget" else {}
    done = {"base": base.saved(), "sabr": sabr.saved()}
    results = {}
    for name, model in (("sabr", sabr.model), ("base", base_model)):
        def on_trial(ts: list[Trial], name: str = name) -> None:
            trials[name] = ts
            if exp.dist.is_main:
                folder.save_resume(RunState("budget", done, epoch=len(sabr.rows), trials=trials,
                                            sabr_model=sabr.model.state_dict(), sabr_state=reg.state_dict()))
        results[name] = search_prune_factor(model, validate, floor, cfg.gamma, reg.units, recal, factors,
                                            done=trials.get(name), on_trial=on_trial)
    (chosen, fits, ts), (b_chosen, b_fits, b_ts) = results["sabr"], results["base"]
    if cfg.prune_teta1 is not None:
        chosen = next(t for t in ts if t.factor == cfg.prune_teta1)
        b_chosen = next(t for t in b_ts if t.factor == cfg.prune_teta1)
        fits, b_fits = chosen.val_accuracy >= floor, b_chosen.val_accuracy >= floor
    elif not fits:
        log.warning("no pruning factor keeps the validation accuracy within the budget (max drop %.2f points): "
                    "keeping the least-pruned model (factor %g, %.2f%% validation); raise --max-drop or train "
                    "phase 2 with a smaller --teta1", 100 * cfg.max_drop, chosen.factor, 100 * chosen.val_accuracy)
    log.info("budget: pruning factor %g -> sparsity %.2f%%, validation %.2f%% (base %.2f%%, plateau %.2f%%, floor "
             "%.2f%%)", chosen.factor, 100 * chosen.sparsity, 100 * chosen.val_accuracy, 100 * base.val_accuracy,
             100 * budget_reference(base), 100 * floor)
    return BudgetChoice(cfg.max_drop, floor, ts, chosen, fits, b_ts, b_chosen, b_fits, base_model, units=reg.units)


def _ramp(exp: Experiment, choice: BudgetChoice, pruned: nn.Module, layers: list, recal) -> PruneRamp | None:
    """The fine-tune's ramp when the budget chose the factor (a budget is set, no ``--prune-teta1`` or
    ``--epsilon``), else ``None``: a :class:`~sabr.ramp.GrowingRamp` over the ``--sweep`` factors from the chosen
    one (when no factor fitted before the fine-tune, from the least-pruned model, growing once a fine-tune epoch
    is within the budget); in structured mode a :class:`~sabr.ramp.ShrinkingRamp` over
    :data:`~sabr.budget.CHANNEL_SHARES` on top of it, which cuts ``pruned`` to the top share now and steps one
    share down after ``k_epoch`` epochs below the floor that did not recover."""
    cfg = exp.config
    if not cfg.budget_chooses_factor:
        return None
    if isinstance(choice.units, ChannelGroupUnits):
        return ShrinkingRamp.start(pruned, choice.floor, CHANNEL_SHARES, choice.chosen.val_accuracy,
                                   groups=list(choice.units.groups.values()), recalibrate=recal, layers=layers,
                                   patience=cfg.k_epoch)
    factors = [f for f in sorted(set(cfg.sweep)) if f >= choice.chosen.factor]
    return GrowingRamp.start(pruned, choice.floor, factors, choice.chosen.val_accuracy, layers=layers,
                             prune=lambda model, to: prune_at(model, to, cfg.gamma, choice.units, recal))


def _prune_models(exp: Experiment, model: nn.Module, choice: BudgetChoice, recal) -> tuple[nn.Module, list, nn.Module]:
    """Copies of the SABR ``model`` pruned at the chosen factor (or ``--epsilon``) and of the base model at its
    own: ``(pruned, its per-layer figures, pruned base)``."""
    cfg, units = exp.config, choice.units
    if cfg.epsilon is not None:
        pruned = copy.deepcopy(model)
        layers = prune(pruned, epsilon=cfg.epsilon, units=units)
        if recal is not None:
            recal(pruned)
    else:
        pruned, layers = prune_copy(model, choice.chosen.factor, cfg.gamma, units, recal)
    base_pruned, _ = prune_copy(choice.base_model, choice.base_chosen.factor, cfg.gamma, units, recal)
    return pruned, layers, base_pruned


def prune_chosen(exp: Experiment, folder: RunDir, model: nn.Module, choice: BudgetChoice,
                 progress: bool, board=None) -> PrunedResult:
    """Phase 3 at the chosen factor (or ``--epsilon``), the base model pruned the same way, the optional
    masked fine-tune, and the one evaluation on the test split; rank 0 saves ``pruned``."""
    cfg = exp.config
    recal = bn_recalibrator(exp) if cfg.recalibrates else None
    pruned, layers, base_pruned = _prune_models(exp, model, choice, recal)
    _, test = evaluate_split(exp, pruned, exp.test)
    result = PrunedResult(pruned, layers, {"test_accuracy": test}, choice.chosen, choice.fits)
    if cfg.finetunes:
        result = _finetune(exp, folder, result, choice, recal, progress, board)
    base_report = sparsity_report(base_pruned, cfg.params)
    base_figures = {"prune_teta1": choice.base_chosen.factor, "sparsity": base_report.sparsity,
                    "val_accuracy": choice.base_chosen.val_accuracy, "within_budget": choice.base_fits,
                    "test_accuracy": evaluate_split(exp, base_pruned, exp.test)[1]}
    if exp.dist.is_main:
        save_checkpoint(result.model, folder.checkpoint("pruned"),
                        exp.metadata("pruned", test_accuracy=result.figures["test_accuracy"]))
    return PrunedResult(result.model, result.layers, result.figures, result.chosen, result.fits, base_figures)


def _finetune(exp: Experiment, folder: RunDir, start: PrunedResult, choice: BudgetChoice, recal, progress: bool,
              board=None) -> PrunedResult:
    """The masked fine-tune of the pruned model (with the budget's ramp when it chose the factor); rank 0 writes
    its history. Returns the fine-tuned result, its figures completed."""
    cfg = exp.config
    kept_zero = choice.units.parameters  # pruned weights (and channels' biases and BatchNorms) stay exactly zero
    on_row = None if board is None else lambda r: board.log_epoch("finetune", {"rows": [r]})  # noqa: E731
    ramp = _ramp(exp, choice, start.model, start.layers, recal)
    pruned, rows = finetune_masked(exp, start.model, cfg.finetunes, params=kept_zero, on_row=on_row,
                                   progress=progress and exp.dist.is_main, ramp=ramp)
    test = start.figures["test_accuracy"]
    _, tuned = evaluate_split(exp, pruned, exp.test)
    log.info("masked fine-tune: test accuracy %.2f%% -> %.2f%%", 100 * test, 100 * tuned)
    figures = {**start.figures, "test_accuracy": tuned, "finetune_epochs": len(rows),
               "test_accuracy_before_finetune": test}
    layers, chosen, fits = start.layers, start.chosen, start.fits
    if ramp is not None:
        layers = ramp.kept_layers
        figures.update(prune_teta1_before_finetune=choice.chosen.factor,
                       val_accuracy_before_finetune=choice.chosen.val_accuracy,
                       within_budget_before_finetune=choice.fits)
        if isinstance(ramp, GrowingRamp):  # the ramp grew the factor itself
            factor = ramp.kept_factor
        else:  # the factor stays the search's; the ramp's share of channels goes on top of it
            factor, figures["channel_share"] = choice.chosen.factor, ramp.kept_factor
        chosen, fits = Trial.of(factor, layers, ramp.kept_accuracy), ramp.fits  # as the search counts it
        log.info("budget after the fine-tune: %s %g -> sparsity %.2f%%, validation %.2f%% (%s)", ramp.column,
                 ramp.kept_factor, 100 * chosen.sparsity, 100 * chosen.val_accuracy,
                 "within the budget" if fits else "still below the floor")
    if exp.dist.is_main:
        folder.write_history("finetune", rows)
    return PrunedResult(pruned, layers, figures, chosen, fits)
