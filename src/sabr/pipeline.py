"""The three phases, end to end: base training, SABR regularisation, pruning (then, optionally, a masked
fine-tune of the pruned model); then the report, all in one run folder (:class:`~sabr.rundir.RunDir`).

:func:`run` is what ``sabr run`` calls: a short composition of :func:`~sabr.experiment.prepare` and the
phases of :mod:`sabr.phases` (:func:`train_base`, :func:`train_sabr`, :func:`prune_and_evaluate`,
:func:`finetune_masked`), each also usable on its own from Python; :func:`resume` continues a run and
:func:`reprune` re-prunes a finished one. The names of both modules are importable from here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import report
from .checkpoint import check_trusted, read_metadata, save_checkpoint, write_json
from .config import RunConfig
from .distributed import DistContext, init_from_env, shutdown
from .errors import SabrError
from .experiment import Experiment, evaluate_split, prepare
from .export import load_run
from .phases import finetune_masked, prune_and_evaluate, sweep, train_base, train_sabr
from .regularizer import SABR
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

    def figures(self) -> dict:
        """The phase's entry in ``summary.json``."""
        return {"val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy, "epochs": len(self.rows)}


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
    """:func:`run` in this process: folder -> data -> phase 1 -> phase 2 -> pruning (+ fine-tune) -> report."""
    started = time.perf_counter()
    if config.out:  # refuse a busy folder before spending time on the data
        RunDir(config.out).check(overwrite, resume)
    torch.manual_seed(config.seed)
    exp = prepare(config, progress, dist)
    folder, state, resolved = _open_run(exp, overwrite, resume)
    torch.manual_seed(config.seed)  # the model's initialisation does not depend on the data
    base = _base_phase(exp, folder, exp.new_model(), state, progress)
    sabr, reg = _sabr_phase(exp, folder, base, state, progress)
    pruned, layer_stats, curve, pruned_figures = _prune_phase(exp, folder, sabr.model, progress)
    summary = report.build_summary(exp, sabr.model, pruned, reg, layer_stats, {
        "base": base.figures(), "sabr": sabr.figures(), "pruned": pruned_figures}, curve, resolved)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if dist.is_main:
        report.write_run_report(folder, summary, base.rows, sabr.rows, reg.history)
        folder.drop_resume()  # the run is complete: nothing left to resume
    return summary


def _open_run(exp: Experiment, overwrite: bool, resume: bool) -> tuple[RunDir, dict | None, dict]:
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
        log.info("resuming %s: phase %s after epoch %d", folder.path, state["phase"], state["epoch"])
    elif resume:
        log.info("%s has no saved epoch yet: the run starts from the beginning", folder.path)
    log.info("run folder: %s (device %s%s)", folder.path, exp.device,
             f", {dist.world_size} processes" if dist.enabled else "")
    return folder, state, resolved


def _saver(exp: Experiment, folder: RunDir, phase: str, done: dict) -> Callable[[dict], None]:
    """A phase's ``on_epoch``: rank 0 saves its state with the figures of the phases already ``done``."""
    def on_epoch(phase_state: dict) -> None:
        if exp.dist.is_main:
            folder.save_resume({**phase_state, "phase": phase, "done": done})
    return on_epoch


def _finish(exp: Experiment, folder: RunDir, phase: str, model: nn.Module, rows: list[dict]) -> PhaseResult:
    """Evaluate a trained phase on validation and test; rank 0 writes its history and checkpoint."""
    _, val = evaluate_split(exp, model, exp.val)
    _, test = evaluate_split(exp, model, exp.test)
    if exp.dist.is_main:
        folder.write_history(phase, rows)
        save_checkpoint(model, folder.checkpoint(phase), exp.metadata(phase, val_accuracy=val, test_accuracy=test))
    return PhaseResult(model, rows, val, test)


def _base_phase(exp: Experiment, folder: RunDir, model: nn.Module, state: dict | None,
                progress: bool) -> PhaseResult:
    """Phase 1, or its saved result when the run resumes in a later phase (then ``model`` is untrained)."""
    if state is not None and state["phase"] != "base":
        done = state["done"]["base"]
        return PhaseResult(model, done["rows"], done["val_accuracy"], done["test_accuracy"])
    model, rows = train_base(exp, model, progress=progress, resume=state, on_epoch=_saver(exp, folder, "base", {}))
    return _finish(exp, folder, "base", model, rows)


def _sabr_phase(exp: Experiment, folder: RunDir, base: PhaseResult, state: dict | None,
                progress: bool) -> tuple[PhaseResult, SABR]:
    """Phase 2 from the base model (or from its saved epoch); rank 0 also writes ``sabr_state.json``."""
    done = {"base": {"val_accuracy": base.val_accuracy, "test_accuracy": base.test_accuracy, "rows": base.rows}}
    resume = state if state is not None and state["phase"] == "sabr" else None
    model, reg, rows = train_sabr(exp, base.model, progress=progress, resume=resume,
                                  on_epoch=_saver(exp, folder, "sabr", done))
    result = _finish(exp, folder, "sabr", model, rows)
    if exp.dist.is_main:
        write_json(folder.sabr_state, reg.state_dict())
    return result, reg


def _prune_phase(exp: Experiment, folder: RunDir, model: nn.Module,
                 progress: bool) -> tuple[nn.Module, list, list[dict], dict]:
    """Phase 3 (prune a copy, sweep the factors) and the optional masked fine-tune; rank 0 saves ``pruned``.

    Returns ``(pruned model, per-layer stats, accuracy-vs-sparsity curve, its summary figures)``.
    """
    cfg = exp.config
    pruned, layer_stats, test = prune_and_evaluate(exp, model, cfg.prune_teta1, cfg.gamma, cfg.epsilon, cfg.params)
    curve = sweep(exp, model, cfg.sweep, cfg.gamma, cfg.params)
    figures = {"test_accuracy": test}
    if cfg.finetune_epochs:
        pruned, rows = finetune_masked(exp, pruned, cfg.finetune_epochs, params=cfg.params,
                                       progress=progress and exp.dist.is_main)
        _, tuned = evaluate_split(exp, pruned, exp.test)
        log.info("masked fine-tune: test accuracy %.2f%% -> %.2f%%", 100 * test, 100 * tuned)
        figures = {"test_accuracy": tuned, "finetune_epochs": len(rows), "test_accuracy_before_finetune": test}
        if exp.dist.is_main:
            folder.write_history("finetune", rows)
    if exp.dist.is_main:
        save_checkpoint(pruned, folder.checkpoint("pruned"), exp.metadata("pruned", test_accuracy=figures["test_accuracy"]))
    return pruned, layer_stats, curve, figures


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
    folder = RunDir(run_dir)
    model, meta = load_run(folder.path, "sabr", trust_model_code=trust_model_code)
    if not folder.config.is_file():
        raise SabrError(f"{folder.config} is missing; `sabr prune` needs a run folder written by `sabr run`.")
    cfg = RunConfig.from_dict({**folder.read_config(), "device": "cpu"})
    exp = prepare(cfg, progress)
    exp.preprocess = meta["transform"]
    model.to(exp.device)
    base_meta = folder.checkpoint("base").with_suffix(".json")
    base_acc = read_metadata(base_meta).get("test_accuracy") if base_meta.is_file() else None
    curve = sweep(exp, model, teta1_values, gamma, cfg.params)
    write_json(folder.tradeoff_json, {"gamma": gamma, "base_test_accuracy": base_acc, "curve": curve})
    report.plot_accuracy_vs_sparsity(folder.tradeoff_png, curve, base_acc, title=f"{meta['model']['name']} "
                                     f"on {meta['dataset']}: re-pruned at {len(curve)} thresholds")
    return curve
