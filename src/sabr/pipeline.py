"""The three phases, end to end: base training, SABR regularisation, pruning (then, optionally, a masked
fine-tune of the pruned model); then the report, all in one run folder (:class:`~sabr.rundir.RunDir`).

:func:`run` is what ``sabr run`` calls: :func:`~sabr.experiment.prepare` and the phases of :mod:`sabr.phases`
(:func:`train_base`, :func:`train_sabr`, :func:`prune_and_evaluate`, :func:`finetune_masked`), each usable on
its own from Python; :func:`resume` continues a run, :func:`reprune` re-prunes a finished one. Phase 3 (the
budget search, pruning and the fine-tune's ramp) is :mod:`sabr.prune_phase`; the resume state, :mod:`sabr.resume`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import report
from .budget import TRACK_FACTOR, TRACK_FACTOR_STRUCTURED, BudgetTracker, val_plateau
from .calibration import calibrate_model, collect_logits
from .checkpoint import check_trusted, load_weights_into, read_metadata, read_weights, save_checkpoint, write_json
from .config import RunConfig
from .distributed import DistContext, init_from_env, shutdown
from .errors import ConfigError, SabrError
from .experiment import Experiment, evaluate_split, load_experiment, prepare
from .export import load_run
from .integrations.tensorboard import logger_for
from .models import set_dropout
from .phases import (finetune_masked, prune_and_evaluate, resolve_threshold, sweep, train_base, train_sabr,
                     units_of)
from .prune_phase import prune_chosen, run_floor, search_budget
from .regularizer import SABR
from .resume import FinishedPhase, PhaseState, RunState
from .rundir import RunDir
from .units import ChannelGroupUnits
from .version import versions

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
        choice = search_budget(exp, folder, base, sabr, reg, base_weights, state)
        pruned = prune_chosen(exp, folder, sabr.model, choice, progress, board)
        calibration = _calibrate_phase(exp, folder, {"base": choice.base_model, "sabr": sabr.model,
                                                     "pruned": pruned.model})
    finally:
        if board is not None:
            board.close()
    summary = report.build_summary(exp, sabr.model, pruned.model, reg, pruned.layers, {
        "base": base.figures(), "sabr": sabr.figures(), "pruned": pruned.figures}, choice.curve(), resolved)
    summary.update(budget=pruned.budget_summary(choice, base, sabr), base_pruned=pruned.base_figures,
                   calibration=calibration,
                   threads=torch.get_num_threads(), warnings=warnings, seconds=round(time.perf_counter() - started, 1))
    if isinstance(reg.units, ChannelGroupUnits):
        summary["structured"] = report.structured_figures(pruned.model, list(reg.units.groups.values()),
                                                          exp.example_input())
    summary.update(report.status_entry(summary), versions=versions())
    if dist.is_main:
        report.write_run_report(folder, summary, base.rows, sabr.rows, reg.history)
        folder.drop_resume()  # the run is complete: nothing left to resume
        folder.unlock()
    return summary


def _check_base(exp: Experiment, base: PhaseResult) -> list[str]:
    """Warnings about the base model that make the run's figures meaningless (logged and kept in the summary)."""
    chance = 1 / len(exp.classes)
    if not report.near_chance(base.val_accuracy, len(exp.classes)):
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
        budget = BudgetTracker(run_floor(cfg, base), cfg.patience, track, cfg.gamma, units_of(exp, base.model))
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
    reg = SABR(model, units=units_of(exp, model))
    reg.load_state_dict(state.sabr_state)
    return PhaseResult.restored(model, state.done["sabr"]), reg, _read_base_weights(exp, folder)


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
    log.info("%s; ECE on test %.3f -> %.3f", cal.describe(), entry["ece_test_before"], entry["ece_test_after"])
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
    if device is not None:
        values["device"] = device
    cfg = RunConfig.from_dict(values)  # every value checked by type first (``model: 12`` is the text "12")
    check_trusted(cfg.model, trust_model_code)
    return run(cfg, progress=progress, resume=True)


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
    exp.preprocess = meta["transform"]
    model.to(exp.device)
    base_meta = folder.checkpoint("base").with_suffix(".json")
    base_acc = read_metadata(base_meta).get("test_accuracy") if base_meta.is_file() else None
    curve = sweep(exp, model, teta1_values, gamma, units_of(exp, model))
    with folder.writing():  # the run's lock held; the files listed in its manifest
        write_json(folder.tradeoff_json, {"gamma": gamma, "base_test_accuracy": base_acc, "curve": curve})
        report.plot_accuracy_vs_sparsity(folder.tradeoff_png, curve, base_acc, title=f"{meta['model']['name']} "
                                         f"on {meta['dataset']}: re-pruned at {len(curve)} thresholds")
    return curve
