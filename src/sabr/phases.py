"""The training phases, each a function over an :class:`~sabr.experiment.Experiment` that runs
:func:`sabr.train.fit`: base training, SABR regularisation, masked fine-tuning; and pruning.

Every phase takes its own settings as arguments (epochs, learning rate, SABR's hyper-parameters), with
the experiment's :class:`~sabr.config.RunConfig` values as defaults; batch order is seeded per phase
(:data:`sabr.train.SEED_OFFSETS`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
from typing import Callable

import torch
from torch import nn

from .channels import ChannelGroup, channel_groups
from .experiment import Experiment, evaluate_split
from .metrics import sparsity_report
from .models import set_dropout
from .pruning import apply_masks, prune, recalibrate_batchnorm, zero_masks
from .budget import BudgetTracker
from .ramp import PruneRamp, RampAction
from .regularizer import SABR, SabrSettings, auto_threshold
from .units import ChannelGroupUnits, TensorUnits, Units, takes_units
from .resume import PhaseState, as_phase_state, restore_training, training_state
from .train import (EpochStats, FitHooks, FitState, NonFiniteLossError, batches, evaluate, fit, phase_generator,
                    plateau_scheduler, progress_bar, train_epoch)

log = logging.getLogger(__name__)


_NAN_ADVICE = {
    "base": "lower the learning rate --lr (now {lr:g}), e.g. to {lr10:g}",
    "sabr": "lower phase 2's learning rate --lr-sabr (now {lr:g}), e.g. to {lr10:g}, or SABR's lambda factor --teta1 "
            "(now {teta1:g}) or --growth-rate (now {growth:g})",
}


def _labelled(bar: Callable | None, label: str) -> Callable | None:
    """A progress-bar wrapper for :func:`sabr.train.train_epoch` that shows ``label``."""
    return bar and (lambda it, total: bar(it, total, label))


def _train_one_epoch(exp: Experiment, net: nn.Module, opt, gen: torch.Generator, phase: str, epoch: int,
                     limit: int, penalty=None, bar=None, **advice) -> EpochStats:
    """One epoch on this rank's shard; NaN/inf on any rank stops every rank with the same clear error.

    ``advice`` fills the phase's :data:`_NAN_ADVICE` (``teta1``, ``growth`` for phase 2).
    """
    try:
        stats, bad = train_epoch(net, opt, exp.train, exp.preprocess, exp.device, exp.config.batch_size, gen,
                                 penalty=penalty, shard=exp.dist.shard, amp=exp.config.amp,
                                 progress=_labelled(bar, f"{phase} {epoch}/{limit}")), 0
    except NonFiniteLossError:
        stats, bad = None, 1
    if exp.dist.enabled:
        loss, acc, bad_total = exp.dist.all_reduce_sum(
            [stats.loss if stats else 0.0, stats.accuracy if stats else 0.0, bad])
        bad = int(bad_total)
        if not bad:
            w = exp.dist.world_size
            stats = EpochStats(loss / w, acc / w, stats.seconds)
    if bad:
        lr = opt.param_groups[0]["lr"]
        kept = (f"the run folder keeps the last good epoch ({phase} epoch {epoch - 1})" if epoch > 1
                else "no epoch of this phase finished")
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite in phase {'1 (base)' if phase == 'base' else '2 (SABR)'}, "
            f"epoch {epoch}; the phase was stopped and {kept}. To fix it, "
            f"{_NAN_ADVICE[phase].format(lr=lr, lr10=lr / 10, **advice)}, and start again (a new --out, or --overwrite)."
        )
    return stats


def _state_saver(on_epoch: Callable[[PhaseState], None] | None, model: nn.Module, opt, sched, gen: torch.Generator,
                 **extra: Callable[[], dict]) -> Callable[[FitState], None] | None:
    """:func:`fit`'s ``on_epoch`` hook that hands the phase's full state (see
    :func:`sabr.resume.training_state`; ``extra`` values are computed then) to a phase's ``on_epoch``."""
    if on_epoch is None:
        return None
    return lambda s: on_epoch(training_state(s, model, opt, sched, gen, **{k: f() for k, f in extra.items()}))


def train_base(exp: Experiment, model: nn.Module, *, epochs: int | None = None, lr: float | None = None,
               progress: bool = True, resume: PhaseState | dict | None = None,
               on_epoch: Callable[[PhaseState], None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Phase 1: the configured optimizer (Adam by default), ReduceLROnPlateau(val loss, factor 0.1, patience 3);
    keeps the best-val-accuracy weights.

    Args:
        exp: the experiment from :func:`prepare`.
        model: the (freshly created) model; trained in place.
        epochs: number of epochs (default ``exp.config.epochs_base``).
        lr: the learning rate (default ``exp.config.lr``).
        progress: show progress bars (main rank only).
        resume: a phase-1 state given earlier to ``on_epoch`` (or its ``to_dict()``, e.g. read back with
            :func:`sabr.resume.load_state`): training continues after its epoch, with its weights, optimiser,
            scheduler, batch order, RNG states, best weights and rows.
        on_epoch: called after every epoch with the phase's full state (a :class:`~sabr.resume.PhaseState`,
            see :func:`sabr.resume.training_state`), e.g. to save it with :func:`sabr.resume.save_state`.

    Returns:
        ``(model with the best epoch's weights, one history row per epoch)``.
    """
    cfg = exp.config
    epochs = cfg.epochs_base if epochs is None else epochs
    opt = exp.optimizer(model.parameters(), lr=cfg.lr if lr is None else lr)
    sched = plateau_scheduler(opt, 0.1)
    gen = phase_generator(cfg.seed, "base")
    state = restore_training(resume, model, opt, sched, gen) if resume is not None else None
    net, bar = exp.dist.wrap(model), progress_bar(progress and exp.dist.is_main)
    hooks = FitHooks(on_row=lambda r: log.info("base  %3d/%d  loss %.4f  train %.2f%%  val %.2f%%", r["epoch"], epochs,
                                               r["train_loss"], 100 * r["train_accuracy"], 100 * r["val_accuracy"]),
                     on_epoch=_state_saver(on_epoch, model, opt, sched, gen))
    state = fit(model, opt, lambda e: _train_one_epoch(exp, net, opt, gen, "base", e, epochs, bar=bar),
                lambda: evaluate_split(exp, model, exp.val), epochs, keep="best", scheduler=sched, hooks=hooks,
                state=state)
    return model, state.rows


def sabr_scheduler(optimizer: torch.optim.Optimizer):
    """Phase 2's learning-rate schedule, shared by the fine-tune and the peers of :mod:`sabr.baselines`:
    ReduceLROnPlateau on the validation loss, factor 0.51, patience 3, down to 1e-5."""
    return plateau_scheduler(optimizer, 0.51, min_lr=1e-5)


class _SabrNet:
    """The network phase 2 trains: DDP synchronises the trainable tensors it was built with, so it is
    rebuilt whenever SABR has frozen another tensor (a no-op for one process)."""

    def __init__(self, exp: Experiment, model: nn.Module, reg: SABR) -> None:
        self.exp, self.model, self.reg = exp, model, reg
        self.net, self.frozen = exp.dist.wrap(model), len(reg.frozen)

    def __call__(self) -> nn.Module:
        if len(self.reg.frozen) != self.frozen:
            self.net, self.frozen = self.exp.dist.wrap(self.model), len(self.reg.frozen)
        return self.net


def _sabr_step(reg: SABR, budget: BudgetTracker | None, model: nn.Module, row: dict) -> dict:
    """SABR's epoch step on the row's validation accuracy (and the budget's score of the epoch), and what
    they add to the history row."""
    result = reg.step(row["val_accuracy"])
    fields = {"action": result.action, "drop": result.drop, "mean_lambda": reg.mean_lambda(),
              "near_zero_sparsity": reg.near_zero_sparsity(), "frozen": len(reg.frozen), "froze": result.frozen or ""}
    if budget is not None:
        fields["prunable_sparsity"] = budget.update(model, row["epoch"], row["val_accuracy"])
    return fields


def _log_sabr_row(r: dict, epochs: int, reg: SABR, budget: BudgetTracker | None) -> None:
    prunable = f"  prunable {100 * r['prunable_sparsity']:.1f}%" if "prunable_sparsity" in r else ""
    log.info("sabr  %3d/%d  loss %.4f  val %.2f%%  %s  near-zero %.1f%%%s  frozen %d/%d%s", r["epoch"], epochs,
             r["train_loss"], 100 * r["val_accuracy"], r["action"], 100 * r["near_zero_sparsity"], prunable,
             r["frozen"], len(reg.units), f" (froze {r['froze']})" if r["froze"] else "")
    if reg.all_frozen:
        log.info("every regularised tensor (or channel group) is frozen: phase 2 stops after %d epochs", r["epoch"])
    elif budget is not None and budget.exhausted:
        log.info("%d epochs without a sparser model within the budget: phase 2 stops after %d epochs",
                 budget.patience, r["epoch"])


def steps_per_epoch(exp: Experiment) -> int:
    """Optimizer steps in one epoch of this process (its shard of the training split)."""
    return math.ceil(math.ceil(len(exp.train) / exp.dist.world_size) / exp.config.batch_size)


def channel_groups_of(exp: Experiment, model: nn.Module) -> list[ChannelGroup] | None:
    """The channel groups structured SABR works on (``--structured``; :func:`sabr.channels.channel_groups`
    of ``model`` at the run's input shape), or None in the default unstructured mode."""
    if not exp.config.structured:
        return None
    return channel_groups(model, exp.example_input(), exp.config.params)


def units_of(exp: Experiment, model: nn.Module) -> Units:
    """What the run regularises and prunes (:mod:`sabr.units`): the channel groups of ``model`` with
    ``--structured`` (:func:`channel_groups_of`), else its tensors ``exp.config.params``."""
    if exp.config.structured:
        return ChannelGroupUnits(channel_groups_of(exp, model))
    return TensorUnits.of(model, exp.config.params)


def resolve_threshold(exp: Experiment, model: nn.Module, settings: SabrSettings,
                      val_accuracy: float | None = None) -> SabrSettings:
    """``settings`` with an ``"auto"`` accuracy threshold replaced by :func:`sabr.regularizer.auto_threshold`
    of ``model``'s validation accuracy (``val_accuracy`` when the caller has it) and the validation split's size."""
    if settings.accuracy_threshold != "auto":
        return settings
    acc = evaluate_split(exp, model, exp.val)[1] if val_accuracy is None else val_accuracy
    return dataclasses.replace(settings, accuracy_threshold=auto_threshold(acc, len(exp.val)))


def train_sabr(exp: Experiment, model: nn.Module, *, epochs: int | None = None, lr: float | None = None,
               settings: SabrSettings | None = None, budget: BudgetTracker | None = None, progress: bool = True,
               resume: PhaseState | dict | None = None,
               on_epoch: Callable[[PhaseState], None] | None = None) -> tuple[nn.Module, SABR, list[dict]]:
    """Phase 2: L1 with SABR's adaptive per-tensor lambdas, dropout off, until all tensors freeze or the limit.

    ``epochs`` is the limit (default ``exp.config.epochs_sabr``), ``lr`` the learning rate (default
    ``lr_sabr`` or ``lr``), ``settings`` SABR's hyper-parameters (default ``exp.config.sabr_settings()``;
    an ``"auto"`` threshold is resolved by :func:`resolve_threshold`); the regularised tensors are
    ``exp.config.params``, and with ``exp.config.scale_teta1`` SABR gets :func:`steps_per_epoch`.
    ReduceLROnPlateau(factor 0.51, min 1e-5). Without ``budget`` it ends with the last epoch's weights;
    with a :class:`~sabr.budget.BudgetTracker` it also ends once the tracker is exhausted, and with the
    weights the tracker kept. ``resume`` and ``on_epoch`` work as in :func:`train_base`; the state also
    holds ``sabr`` (``SABR.state_dict()``) and, with a budget, ``budget``. Under distributed training the validation
    accuracy given to ``SABR.step`` is that of the whole validation split (reduced over ranks), so every
    rank grows, shrinks and freezes the same tensors.
    """
    cfg = exp.config
    epochs = cfg.epochs_sabr if epochs is None else epochs
    hyper = cfg.sabr_settings() if settings is None else settings
    resume = None if resume is None else as_phase_state(resume)
    if resume is None:
        hyper = resolve_threshold(exp, model, hyper)
    else:  # the threshold the run started with (an "auto" one was resolved from the base model)
        hyper = dataclasses.replace(hyper, accuracy_threshold=resume.sabr["accuracy_threshold"])
    set_dropout(model, 0.0)
    units = budget.units if budget is not None and budget.units is not None else units_of(exp, model)
    reg = SABR(model, **dataclasses.asdict(hyper), units=units,
               steps_per_epoch=steps_per_epoch(exp) if cfg.scale_teta1 else None)
    opt = exp.optimizer(model.parameters(), lr=(cfg.lr_sabr or cfg.lr) if lr is None else lr)
    sched = sabr_scheduler(opt)
    gen = phase_generator(cfg.seed, "sabr")
    state = None
    if resume is not None:
        state = restore_training(resume, model, opt, sched, gen)
        reg.load_state_dict(resume.sabr)
        if budget is not None:
            budget.load_state_dict(resume.budget)
    bar = progress_bar(progress and exp.dist.is_main)
    net = _SabrNet(exp, model, reg)

    def train(epoch: int) -> EpochStats:
        return _train_one_epoch(exp, net(), opt, gen, "sabr", epoch, epochs, penalty=reg.penalty, bar=bar,
                                teta1=hyper.teta1, growth=hyper.growth_rate)

    extra = {"sabr": reg.state_dict} | ({"budget": budget.state_dict} if budget is not None else {})
    hooks = FitHooks(row_fields=lambda row: _sabr_step(reg, budget, model, row),
                     on_row=lambda r: _log_sabr_row(r, epochs, reg, budget),
                     on_epoch=_state_saver(on_epoch, model, opt, sched, gen, **extra),
                     stop=lambda: reg.all_frozen or (budget is not None and budget.exhausted))
    state = fit(model, opt, train, lambda: evaluate_split(exp, model, exp.val), epochs, keep="last",
                scheduler=sched, hooks=hooks, state=state)
    if budget is not None:
        epoch, weights, within = budget.kept()
        if weights is not None:
            model.load_state_dict(weights)
            log.info("phase 2 keeps epoch %d (%s)", epoch, "the sparsest within the budget" if within else
                     "no epoch fitted the budget: the best validation accuracy")
    return model, reg, state.rows


RECALIBRATION_BATCHES = 50
"""Training batches (in their fixed order, unshuffled) over which BatchNorm statistics are re-estimated."""


def bn_recalibrator(exp: Experiment) -> Callable[[nn.Module], None]:
    """``recalibrate(model)``: :func:`sabr.pruning.recalibrate_batchnorm` over the first
    :data:`RECALIBRATION_BATCHES` training batches, in order, the same on every process (no shard)."""
    def recalibrate(model: nn.Module) -> None:
        first = itertools.islice(batches(exp.train, exp.config.batch_size), RECALIBRATION_BATCHES)
        recalibrate_batchnorm(model, (exp.preprocess.normalize(x.to(exp.device)) for x, _ in first))
    return recalibrate


@takes_units
def prune_and_evaluate(exp: Experiment, model: nn.Module, teta1: float, gamma: float,
                       epsilon: float | None = None, units: Units | None = None) -> tuple[nn.Module, list, float]:
    """Prune a copy of ``model`` (``units``: what to prune, :mod:`sabr.units`; default every Conv/Linear weight)
    and return ``(pruned copy, per-layer stats, test accuracy)``."""
    pruned = copy.deepcopy(model)
    stats = prune(pruned, teta1=teta1, gamma=gamma, epsilon=epsilon, units=units)
    _, acc = evaluate_split(exp, pruned, exp.test)
    return pruned, stats, acc


@takes_units
def sweep(exp: Experiment, model: nn.Module, teta1_values, gamma: float, units: Units | None = None) -> list[dict]:
    """Accuracy vs sparsity: prune copies of ``model`` at each factor (``units``: what to prune, as in
    :func:`prune_and_evaluate`) and evaluate on the test split; the sparsity is that of the run's tensors
    (``exp.config.params``)."""
    curve = []
    for t in sorted(teta1_values):
        pruned, _, acc = prune_and_evaluate(exp, model, t, gamma, units=units)
        rep = sparsity_report(pruned, exp.config.params)
        curve.append({"teta1": t, "sparsity": rep.sparsity, "test_accuracy": acc})
    return curve


def finetune_masked(exp: Experiment, model: nn.Module, epochs: int, lr: float | None = None,
                    params=None, progress: bool = False,
                    on_row: Callable[[dict], None] | None = None,
                    ramp: PruneRamp | None = None) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a pruned model in place for ``epochs`` epochs, keeping its zeros exactly zero.

    The zero pattern of the regularised tensors (``params``, default every Conv/Linear weight) is taken
    at the start and re-applied after every optimizer step, so the sparsity never drops. The configured
    optimizer at ``lr`` (default: the config's phase-2 rate) with phase 2's ReduceLROnPlateau(factor 0.51,
    min 1e-5), no penalty, dropout as the model has it. Every parameter trains: tensors that SABR froze
    (``requires_grad=False``) are unfrozen. Returns the model (best validation accuracy of the epochs, the
    starting weights included) and one row per epoch; ``on_row(row)``, when given, also gets each row as
    it is finished (e.g. for TensorBoard).

    With a ``ramp`` (a :class:`sabr.ramp.GrowingRamp` or :class:`~sabr.ramp.ShrinkingRamp` started from
    ``model``), the budget is judged after every epoch instead: the ramp moves the model in place to its new
    step (:meth:`~sabr.ramp.PruneRamp.move`: pruned further, channels given back, or its kept weights), the zero
    pattern is taken again after any move, each row records the step its epoch trained at (as ``ramp.column``),
    and the model ends as the ramp's kept one.
    """
    cfg = exp.config
    masks = zero_masks(model, params)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = exp.optimizer(model.parameters(), lr=lr or cfg.lr_sabr or cfg.lr)
    gen = phase_generator(cfg.seed, "finetune")
    bar = progress_bar(progress)

    def train(epoch: int) -> EpochStats:
        return train_epoch(model, opt, exp.train, exp.preprocess, exp.device, cfg.batch_size, gen,
                           after_step=lambda: apply_masks(model, masks), amp=cfg.amp,
                           progress=_labelled(bar, f"fine-tune {epoch}/{epochs}"))

    def row_done(r: dict) -> None:
        log.info("fine-tune %3d/%d  loss %.4f  val %.2f%%%s", r["epoch"], epochs, r["train_loss"],
                 100 * r["val_accuracy"], f"  {ramp.column} {r[ramp.column]:g}" if ramp is not None else "")
        if on_row is not None:
            on_row(r)

    hooks = FitHooks(on_row=row_done)
    if ramp is not None:
        hooks = FitHooks(on_row=row_done, row_fields=lambda r: {ramp.column: ramp.factor},
                         on_epoch=lambda state: _judge(ramp, model, state, epochs, masks, params))
    state = fit(model, opt, train, lambda: evaluate(model, exp.val, exp.preprocess, exp.device), epochs,
                keep="best_or_start" if ramp is None else "last", scheduler=sabr_scheduler(opt), hooks=hooks)
    if ramp is not None:
        model.load_state_dict(ramp.kept_model)
    return model, state.rows


_MOVES = {RampAction.GROW: "held", RampAction.SHRINK: "broken and not recovering: one step down,",
          RampAction.REVERT: "broken: back to epoch {kept}'s model,"}


def _judge(ramp: PruneRamp, model: nn.Module, state: FitState, epochs: int, masks: dict, params) -> None:
    """The fine-tune's ``on_epoch`` with a ramp: the ramp scores the epoch and moves the model (not after the last
    epoch, which leaves no epoch to train a moved model: the kept one is the result); masks taken again."""
    action = ramp.update(model, state.epoch, state.rows[-1]["val_accuracy"])
    if state.epoch == epochs or action is RampAction.HOLD:
        return
    ramp.move(model, action)
    log.info("fine-tune: budget %s after epoch %d -> %s %g", _MOVES[action].format(kept=ramp.kept_epoch), state.epoch,
             ramp.column, ramp.factor)
    masks.update(zero_masks(model, params))
