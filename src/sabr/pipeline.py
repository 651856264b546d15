"""The three phases, end to end: base training, SABR regularisation, pruning (then, optionally, a masked
fine-tune of the pruned model); then the report, all in one run folder (:class:`~sabr.rundir.RunDir`).

:func:`run` is what ``sabr run`` calls: :func:`~sabr.experiment.prepare` and the phases of :mod:`sabr.phases`
(:func:`train_base`, :func:`train_sabr`, :func:`prune_and_evaluate`, :func:`finetune_masked`), each usable on
its own from Python; :func:`resume` continues a run, :func:`reprune` re-prunes a finished one.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import report
from .budget import (CHANNEL_SHARES, TRACK_FACTOR, TRACK_FACTOR_STRUCTURED, BudgetTracker, PruneRamp, Trial,
                     budget_floor, prune_at, prune_copy, search_prune_factor, val_plateau)
from .calibration import calibrate_model, collect_logits
from .channels import group_parameters
from .checkpoint import check_trusted, load_weights_into, read_metadata, read_weights, save_checkpoint, write_json
from .config import RunConfig
from .distributed import DistContext, init_from_env, shutdown
from .errors import ConfigError, SabrError
from .experiment import Experiment, evaluate_split, load_experiment, prepare
from .export import load_run
from .integrations.tensorboard import logger_for
from .metrics import sparsity_report
from .models import set_dropout
from .phases import (bn_recalibrator, channel_groups_of, finetune_masked, prune_and_evaluate, resolve_threshold,
                     sweep, train_base, train_sabr)
from .pruning import prune, revive_channels
from .regularizer import SABR
from .resume import FinishedPhase, PhaseState, RunState
from .rundir import RunDir

__all__ = ["Experiment", "prepare", "evaluate_split", "train_base", "train_sabr", "finetune_masked",
           "prune_and_evaluate", "sweep", "PhaseResult", "run", "resume", "reprune"]

log = logging.getLogger(__name__)


@dataclass
class PhaseResult:
    """A finished training phase of :func:`run`: its model, history rows and accuracies (fractions)."""

    model: nn.Module
    rows: list[dict]
    val_accuracy: float
    test_accuracy: float
    extra: dict = field(default_factory=dict)

    def figures(self) -> dict:
        """The phase's entry in ``summary.json``."""
        return {"val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy, "epochs": len(self.rows),
                **self.extra}

    def saved(self) -> FinishedPhase:
        """The phase's figures and rows as a resume state keeps them."""
        return FinishedPhase(self.val_accuracy, self.test_accuracy, self.rows, self.extra)

    @classmethod
    def restored(cls, model: nn.Module, saved: FinishedPhase) -> "PhaseResult":
        """The finished phase a resume state kept (:meth:`saved`), with ``model``."""
        return cls(model, saved.rows, saved.val_accuracy, saved.test_accuracy, saved.extra)


def run(config: RunConfig, progress: bool = True, overwrite: bool = False, resume: bool = False) -> dict:
    """Run the three phases and write the run folder; returns the summary (``summary.json``'s content).

    Args:
        config: the run's settings; ``config.out`` is the run folder (default ``runs/<dataset>-<model>-<time>``).
        progress: show progress bars.
        overwrite: replace a run already in ``config.out``.
        resume: continue the run in ``config.out`` from its last finished epoch (``resume.safetensors``);
            with the same seed on the CPU the summary's figures equal those of an uninterrupted run.
            Without a saved state (killed before the first epoch ended) the run starts from the beginning.

    Every epoch writes the full training state atomically to ``<out>/resume.safetensors`` (removed when
    the run finishes). Under ``torchrun`` every rank runs this function; only rank 0 writes files.
    """
    dist = init_from_env(config.device)
    try:
        return _run(config, progress, overwrite, resume, dist)
    finally:
        shutdown(dist)


def _run(config: RunConfig, progress: bool, overwrite: bool, resume: bool, dist: DistContext) -> dict:
    """:func:`run` in this process: folder -> data -> phase 1 -> phase 2 -> budget -> pruning (+ fine-tune) -> report."""
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.out:  # refuse a busy folder before spending time on the data
        RunDir(config.out).check(overwrite, resume)
    torch.manual_seed(config.seed)
    exp = prepare(config, progress, dist)
    folder, state, resolved = _open_run(exp, overwrite, resume)
    board = logger_for(config.log, folder.path) if dist.is_main else None  # --log tensorboard: one writer per run
    try:
        torch.manual_seed(config.seed)  # the model's initialisation does not depend on the data
        base = _base_phase(exp, folder, exp.new_model(), state, progress, board)
        warnings = _check_base(exp, base)
        sabr, reg, base_weights = _sabr_phase(exp, folder, base, state, progress, board)
        choice = _budget_phase(exp, folder, base, sabr, reg, base_weights, state)
        pruned, layer_stats, pruned_figures = _prune_phase(exp, folder, sabr.model, choice, progress, board)
        calibration = _calibrate_phase(exp, folder, {"base": choice.base_model, "sabr": sabr.model, "pruned": pruned})
    finally:
        if board is not None:
            board.close()
    summary = report.build_summary(exp, sabr.model, pruned, reg, layer_stats, {
        "base": base.figures(), "sabr": sabr.figures(), "pruned": pruned_figures}, choice.curve(), resolved)
    summary.update(budget=choice.summary(base, sabr, pruned_figures), base_pruned=choice.base_figures,
                   calibration=calibration,
                   threads=torch.get_num_threads(), warnings=warnings, seconds=round(time.perf_counter() - started, 1))
    if reg.groups is not None:
        summary["structured"] = report.structured_figures(pruned, list(reg.groups.values()), exp.example_input())
    if dist.is_main:
        report.write_run_report(folder, summary, base.rows, sabr.rows, reg.history)
        folder.drop_resume()  # the run is complete: nothing left to resume
        folder.unlock()
    return summary


def _check_base(exp: Experiment, base: PhaseResult) -> list[str]:
    """Warnings about the base model that make the run's figures meaningless (logged and kept in the summary)."""
    chance = 1 / len(exp.classes)
    if base.val_accuracy >= 2 * chance:
        return []
    text = (f"the base model is near chance accuracy ({100 * base.val_accuracy:.1f}% on validation, chance "
            f"{100 * chance:.1f}%): what SABR keeps or removes from it means nothing; train it longer "
            "(--epochs-base), lower --lr, or check the data")
    log.warning(text)
    return [text]


def _open_run(exp: Experiment, overwrite: bool, resume: bool) -> tuple[RunDir, RunState | None, dict]:
    """Open the run folder (rank 0), read its resume state and write its config when starting afresh.

    Returns ``(folder, saved state or None, resolved config values)``.
    """
    config, dist = exp.config, exp.dist
    out = RunDir(config.out) if config.out else RunDir.default(exp.dataset_name, config.model)
    folder = RunDir(dist.broadcast_text(str(out.path)))
    if dist.is_main:
        folder.open(overwrite, resume)
    dist.barrier()
    state = folder.load_resume() if resume else None
    resolved = config.to_dict() | {"out": str(folder.path), "image_size": exp.preprocess.image_size,
                                   "channels": exp.preprocess.channels, "model": exp.model_meta["source"]}
    if dist.is_main and state is None:
        folder.write_config(resolved)
        folder.write_skipped(exp.skipped)
    if state is not None:
        log.info("resuming %s: phase %s after epoch %d", folder.path, state.phase, state.epoch)
    elif resume:
        log.info("%s has no saved epoch yet: the run starts from the beginning", folder.path)
    log.info("run folder: %s (device %s%s)", folder.path, exp.device,
             f", {dist.world_size} processes" if dist.enabled else "")
    return folder, state, resolved


def _saver(exp: Experiment, folder: RunDir, phase: str, done: dict[str, FinishedPhase],
           board=None) -> Callable[[PhaseState], None]:
    """A phase's ``on_epoch``: rank 0 saves its state with the figures of the phases already ``done`` (and logs
    the epoch to the run's TensorBoard ``board`` with ``--log tensorboard``)."""

    def on_epoch(phase_state: PhaseState) -> None:
        if exp.dist.is_main:
            folder.save_resume(RunState(phase, done, phase_state))
        if board is not None:
            board.log_epoch(phase, phase_state.to_dict())
    return on_epoch


def _finish(exp: Experiment, folder: RunDir, phase: str, model: nn.Module, rows: list[dict],
            plateau: Callable[[float], float] | None = None) -> PhaseResult:
    """Evaluate a trained phase on validation and test; rank 0 writes its history and checkpoint. ``plateau``
    (phase 1) gives the budget's reference from the validation figure; it is kept as ``val_plateau``."""
    _, val = evaluate_split(exp, model, exp.val)
    _, test = evaluate_split(exp, model, exp.test)
    extra = {} if plateau is None else {"val_plateau": plateau(val)}
    if exp.dist.is_main:
        folder.write_history(phase, rows)
        save_checkpoint(model, folder.checkpoint(phase),
                        exp.metadata(phase, val_accuracy=val, test_accuracy=test, **extra))
    return PhaseResult(model, rows, val, test, extra)


def _reference(base: PhaseResult) -> float:
    """The budget's reference: the base's validation plateau (its best epoch's figure for a run resumed from a
    state saved before the plateau was kept)."""
    return base.extra.get("val_plateau", base.val_accuracy)


def _floor(cfg: RunConfig, base: PhaseResult) -> float:
    """The budget's floor: the base's validation plateau less ``--max-drop`` (``-inf`` without a budget)."""
    return budget_floor(_reference(base), cfg.max_drop) if cfg.max_drop is not None else float("-inf")


def _given_plateau(metadata: dict) -> Callable[[float], float]:
    """The plateau of a base from ``--base-checkpoint``: this run's validation figure less the gap its own run
    recorded between the best epoch and the plateau (none when the checkpoint records no plateau)."""
    recorded = "val_plateau" in metadata and "val_accuracy" in metadata
    gap = max(0.0, metadata["val_accuracy"] - metadata["val_plateau"]) if recorded else 0.0
    return lambda val: val - gap


def _base_phase(exp: Experiment, folder: RunDir, model: nn.Module, state: RunState | None,
                progress: bool, board=None) -> PhaseResult:
    """Phase 1, or its saved result when the run resumes in a later phase (then ``model`` is untrained)."""
    if state is not None and state.phase != "base":
        return PhaseResult.restored(model, state.done["base"])
    given = exp.config.base_checkpoint
    if given:  # phase 1 done elsewhere: its weights, measured on this run's splits
        load_weights_into(model, _read_checkpoint_weights(Path(given)), source=given)
        log.info("phase 1 skipped: the base model is %s", given)
        return _finish(exp, folder, "base", model, [], _given_plateau(read_metadata(Path(given))))
    model, rows = train_base(exp, model, progress=progress, resume=state and state.training,
                             on_epoch=_saver(exp, folder, "base", {}, board))
    return _finish(exp, folder, "base", model, rows,
                   lambda best: val_plateau([r["val_accuracy"] for r in rows], best))


def _sabr_phase(exp: Experiment, folder: RunDir, base: PhaseResult, state: RunState | None,
                progress: bool, board=None) -> tuple[PhaseResult, SABR, dict]:
    """Phase 2 from the base model (or from its saved epoch, or its saved result when the run resumes in the
    budget search); rank 0 also writes ``sabr_state.json``. Returns ``(result, regulariser, base weights)``."""
    cfg = exp.config
    if state is not None and state.phase == "budget":
        return _saved_sabr(exp, folder, base, state)
    resume = state.training if state is not None and state.phase == "sabr" else None
    base_weights = _copy_weights(base.model) if resume is None else _read_base_weights(exp, folder)
    done = {"base": base.saved()}
    budget = None
    if cfg.max_drop is not None:
        track = cfg.prune_teta1 or (TRACK_FACTOR_STRUCTURED if cfg.structured else TRACK_FACTOR)
        budget = BudgetTracker(_floor(cfg, base), cfg.patience, track, cfg.gamma,
                               cfg.params, channel_groups_of(exp, base.model))
    settings = resolve_threshold(exp, base.model, cfg.sabr_settings(), base.val_accuracy)  # measured in phase 1
    model, reg, rows = train_sabr(exp, base.model, settings=settings, progress=progress, budget=budget, resume=resume,
                                  on_epoch=_saver(exp, folder, "sabr", done, board))
    kept_epoch, kept_weights, _ = budget.kept() if budget is not None else (len(rows), None, False)
    kept = kept_epoch if kept_weights is not None else len(rows)
    stopped = ("all_frozen" if reg.all_frozen else
               "no_gain" if budget is not None and budget.exhausted else "epoch_limit")
    result = _finish(exp, folder, "sabr", model, rows)
    result.extra = {"kept_epoch": kept, "stopped": stopped, "accuracy_threshold": reg.accuracy_threshold,
                    "frozen_tensors": [{"name": r["froze"], "epoch": r["epoch"]} for r in rows if r["froze"]]}
    if exp.dist.is_main:
        write_json(folder.sabr_state, reg.state_dict())
    return result, reg, base_weights


def _copy_weights(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _read_base_weights(exp: Experiment, folder: RunDir) -> dict:
    """The base checkpoint's weights (a resumed run's phase 1 lives only there), integrity checked."""
    return _read_checkpoint_weights(folder.checkpoint("base"))


def _read_checkpoint_weights(path: Path) -> dict:
    """The weights of the checkpoint ``path`` (with or without its suffix), integrity checked."""
    return read_weights(path.with_suffix(".safetensors"), read_metadata(path).get("weights_sha256"))


def _saved_sabr(exp: Experiment, folder: RunDir, base: PhaseResult,
                state: RunState) -> tuple[PhaseResult, SABR, dict]:
    """Phase 2's result as the budget search's resume state saved it."""
    model = base.model
    set_dropout(model, 0.0)
    load_weights_into(model, state.sabr_model, source="the resume state")
    reg = SABR(model, params=exp.config.params, groups=channel_groups_of(exp, model))
    reg.load_state_dict(state.sabr_state)
    return PhaseResult.restored(model, state.done["sabr"]), reg, _read_base_weights(exp, folder)


@dataclass
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
    groups: list | None = None  # structured mode: the regulariser's channel groups, pruned in phase 3
    base_figures: dict = field(default_factory=dict)

    def curve(self) -> list[dict]:
        """The run's accuracy-vs-sparsity chart: every factor tried, on validation, SABR and base side by side."""
        return [{"teta1": t.factor, "sparsity": t.sparsity, "val_accuracy": t.val_accuracy,
                 "base_sparsity": b.sparsity, "base_val_accuracy": b.val_accuracy}
                for t, b in zip(self.trials, self.base_trials)]

    def summary(self, base: PhaseResult, sabr: PhaseResult, pruned: dict) -> dict:
        """``summary.json``'s ``budget`` entry (fractions; drops are base minus pruned)."""
        return {"max_drop": self.max_drop, "floor": self.floor if self.max_drop is not None else None,
                "prune_teta1": self.chosen.factor,
                "within_budget": self.fits,
                "val_accuracy": self.chosen.val_accuracy, "val_drop": base.val_accuracy - self.chosen.val_accuracy,
                "test_drop": base.test_accuracy - pruned["test_accuracy"], "sabr_epoch": sabr.extra["kept_epoch"]}


def _budget_phase(exp: Experiment, folder: RunDir, base: PhaseResult, sabr: PhaseResult, reg: SABR,
                  base_weights: dict, state: RunState | None) -> BudgetChoice:
    """Prune copies of the SABR and the base model at every factor and choose, on validation only.

    With ``prune_teta1`` set (or the ``reference`` preset) that factor is taken; the other factors are still
    tried for the chart. Each trial is saved in the resume state, so a killed search continues where it stopped.
    """
    cfg = exp.config
    floor = _floor(cfg, base)
    factors = sorted(set(cfg.sweep) | ({cfg.prune_teta1} if cfg.prune_teta1 is not None else set()))
    recal = bn_recalibrator(exp) if cfg.recalibrates else None
    validate = lambda m: evaluate_split(exp, m, exp.val)[1]  # noqa: E731 - the search's only look at data
    base_model = copy.deepcopy(base.model)
    load_weights_into(base_model, base_weights, source="the base checkpoint")
    trials = {k: list(v) for k, v in state.trials.items()} if state is not None and state.phase == "budget" else {}
    done = {"base": base.saved(), "sabr": sabr.saved()}
    results = {}
    groups = None if reg.groups is None else list(reg.groups.values())
    for name, model in (("sabr", sabr.model), ("base", base_model)):
        def on_trial(ts: list[Trial], name: str = name) -> None:
            trials[name] = ts
            if exp.dist.is_main:
                folder.save_resume(RunState("budget", done, epoch=len(sabr.rows), trials=trials,
                                            sabr_model=sabr.model.state_dict(), sabr_state=reg.state_dict()))
        results[name] = search_prune_factor(model, validate, floor, cfg.gamma, cfg.params, recal, factors,
                                            done=trials.get(name), on_trial=on_trial, groups=groups)
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
             100 * _reference(base), 100 * floor)
    return BudgetChoice(cfg.max_drop, floor, ts, chosen, fits, b_ts, b_chosen, b_fits, base_model, groups=groups)


def _ramp(exp: Experiment, choice: BudgetChoice, pruned: nn.Module) -> PruneRamp | None:
    """The fine-tune's :class:`~sabr.budget.PruneRamp` when the budget chose the factor (a budget is set, no
    ``--prune-teta1`` or ``--epsilon``), else ``None``: upwards over the ``--sweep`` factors from the chosen one
    (when no factor fitted before the fine-tune, from the least-pruned model, growing once a fine-tune epoch is
    within the budget); in structured mode downwards over :data:`~sabr.budget.CHANNEL_SHARES` on top of it: cut
    once to the top share, one share down after ``k_epoch`` epochs below the floor that did not recover."""
    cfg = exp.config
    if cfg.max_drop is None or cfg.prune_teta1 is not None or cfg.epsilon is not None:
        return None
    if choice.groups is not None:
        return PruneRamp.start(pruned, choice.floor, CHANNEL_SHARES, choice.chosen.val_accuracy, "channel_share",
                               patience=cfg.k_epoch, descend=True)
    factors = [f for f in sorted(set(cfg.sweep)) if f >= choice.chosen.factor]
    return PruneRamp.start(pruned, choice.floor, factors, choice.chosen.val_accuracy)


def _prune_phase(exp: Experiment, folder: RunDir, model: nn.Module, choice: BudgetChoice,
                 progress: bool, board=None) -> tuple[nn.Module, list, dict]:
    """Phase 3 at the chosen factor (or ``--epsilon``), the base model pruned the same way, the optional
    masked fine-tune, and the one evaluation on the test split; rank 0 saves ``pruned``.

    Returns ``(pruned model, per-layer stats, its summary figures)``; ``choice.base_figures`` is filled.
    """
    cfg = exp.config
    recal = bn_recalibrator(exp) if cfg.recalibrates else None
    groups = choice.groups
    if cfg.epsilon is not None:
        pruned = copy.deepcopy(model)
        layer_stats = prune(pruned, epsilon=cfg.epsilon, params=cfg.params, groups=groups)
        if recal is not None:
            recal(pruned)
    else:
        pruned, layer_stats = prune_copy(model, choice.chosen.factor, cfg.gamma, cfg.params, recal, groups)
    base_pruned, _ = prune_copy(choice.base_model, choice.base_chosen.factor, cfg.gamma, cfg.params, recal, groups)
    _, test = evaluate_split(exp, pruned, exp.test)
    figures = {"test_accuracy": test}
    if cfg.finetune_epochs:
        kept_zero = cfg.params if groups is None else group_parameters(groups)  # pruned channels stay exactly zero
        on_row = None if board is None else lambda r: board.log_epoch("finetune", {"rows": [r]})  # noqa: E731
        ramp = _ramp(exp, choice, pruned)
        stats = {} if ramp is None else {ramp.factors[0]: layer_stats}  # per-layer figures by the ramp's step
        start = None  # downwards: the model before the cut, which a step down gives channels back from
        if ramp is not None and ramp.descend:
            start = copy.deepcopy(pruned)
            stats[ramp.factor] = prune_at(pruned, ramp.factor, cfg.gamma, cfg.params, recal, groups, share=True)

        def step(model: nn.Module, to: float) -> None:
            if ramp.descend:
                stats[to] = revive_channels(model, start, groups, to)
                if recal is not None:
                    recal(model)
            else:
                stats[to] = prune_at(model, to, cfg.gamma, cfg.params, recal, groups, share=groups is not None)
        pruned, rows = finetune_masked(exp, pruned, cfg.finetune_epochs, params=kept_zero, on_row=on_row,
                                       progress=progress and exp.dist.is_main, ramp=ramp, step=step)
        _, tuned = evaluate_split(exp, pruned, exp.test)
        log.info("masked fine-tune: test accuracy %.2f%% -> %.2f%%", 100 * test, 100 * tuned)
        figures.update(test_accuracy=tuned, finetune_epochs=len(rows), test_accuracy_before_finetune=test)
        if ramp is not None:
            layer_stats = stats[ramp.kept_factor]
            figures.update(prune_teta1_before_finetune=choice.chosen.factor,
                           val_accuracy_before_finetune=choice.chosen.val_accuracy,
                           within_budget_before_finetune=choice.fits)
            if groups is None:  # the ramp grew the factor itself
                factor = ramp.kept_factor
            else:  # the factor stays the search's; the ramp's share of channels goes on top of it
                factor, figures["channel_share"] = choice.chosen.factor, ramp.kept_factor
            choice.chosen = Trial.of(factor, layer_stats, ramp.kept_accuracy)  # as the search counts it
            choice.fits = ramp.fits
            log.info("budget after the fine-tune: %s %g -> sparsity %.2f%%, validation %.2f%% (%s)", ramp.column,
                     ramp.kept_factor, 100 * choice.chosen.sparsity, 100 * choice.chosen.val_accuracy,
                     "within the budget" if ramp.fits else "still below the floor")
        if exp.dist.is_main:
            folder.write_history("finetune", rows)
    base_report = sparsity_report(base_pruned, cfg.params)
    choice.base_figures = {"prune_teta1": choice.base_chosen.factor, "sparsity": base_report.sparsity,
                           "val_accuracy": choice.base_chosen.val_accuracy, "within_budget": choice.base_fits,
                           "test_accuracy": evaluate_split(exp, base_pruned, exp.test)[1]}
    if exp.dist.is_main:
        save_checkpoint(pruned, folder.checkpoint("pruned"), exp.metadata("pruned", test_accuracy=figures["test_accuracy"]))
    return pruned, layer_stats, figures


def _calibrate_phase(exp: Experiment, folder: RunDir, models: dict[str, nn.Module]) -> dict:
    """Each phase's decision rule (:func:`sabr.calibrate_model`: validation split, generated background frames),
    added by rank 0 to its checkpoint's ``.json``; the last (pruned) one measured once on the test split.
    Returns summary's ``calibration`` entry: the pruned model's rule and figures."""
    for phase, model in models.items():
        cal = calibrate_model(model, exp.batches(exp.val), exp.preprocess)
        if exp.dist.is_main:
            path = folder.checkpoint(phase).with_suffix(".json")
            write_json(path, read_metadata(path) | {"calibration": cal.to_dict()})
    entry = cal.to_dict() | cal.measure(*collect_logits(model, exp.batches(exp.test)), "test")  # never chosen on
    log.info("calibration: temperature %.4g, claim threshold %.3f, OOD %s >= %s; ECE on test %.3f -> %.3f",
             cal.temperature, cal.threshold, cal.ood_score, cal.ood_threshold, entry["ece_test_before"],
             entry["ece_test_after"])
    return entry


def resume(run_dir: str | Path, progress: bool = True, device: str | None = None,
           trust_model_code: bool = False) -> dict:
    """Continue the run in ``run_dir`` (see :func:`run` with ``resume=True``) with its saved configuration.

    ``device`` may override the saved device (e.g. continue on the CPU a run started on a GPU; only a
    run continued on the same kind of device reproduces the uninterrupted figures exactly).
    ``trust_model_code``: see :func:`sabr.export.load_model`.
    """
    folder = RunDir(run_dir)
    values = folder.read_config() | {"out": str(folder.path)}
    check_trusted(values.get("model", ""), trust_model_code)
    if device is not None:
        values["device"] = device
    return run(RunConfig.from_dict(values), progress=progress, resume=True)


def reprune(run_dir: str | Path, teta1_values, gamma: float = 0.1, progress: bool = True,
            trust_model_code: bool = False) -> list[dict]:
    """Re-prune a finished run's SABR checkpoint at several factors; writes ``tradeoff.json`` and its chart.

    The run's own data split is rebuilt from its saved config, so accuracies are on the same test split.
    """
    bad = [v for v in [*teta1_values, gamma] if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ConfigError(f"pruning factors (--teta1) and --gamma must be finite numbers >= 0, got {bad[0]}.")
    folder = RunDir(run_dir)
    model, meta = load_run(folder.path, "sabr", trust_model_code=trust_model_code)
    if not folder.config.is_file():
        raise SabrError(f"{folder.config} is missing; `sabr prune` needs a run folder written by `sabr run`.")
    exp = load_experiment(folder.path, progress=progress)
    cfg = exp.config
    exp.preprocess = meta["transform"]
    model.to(exp.device)
    base_meta = folder.checkpoint("base").with_suffix(".json")
    base_acc = read_metadata(base_meta).get("test_accuracy") if base_meta.is_file() else None
    curve = sweep(exp, model, teta1_values, gamma, cfg.params, channel_groups_of(exp, model))
    write_json(folder.tradeoff_json, {"gamma": gamma, "base_test_accuracy": base_acc, "curve": curve})
    report.plot_accuracy_vs_sparsity(folder.tradeoff_png, curve, base_acc, title=f"{meta['model']['name']} "
                                     f"on {meta['dataset']}: re-pruned at {len(curve)} thresholds")
    return curve
