"""The three phases, end to end: base training, SABR regularisation, pruning (then, optionally, a masked
fine-tune of the pruned model); then the report.

:func:`run` is what ``sabr run`` calls; every step is also a function of its own (:func:`prepare`,
:func:`train_base`, :func:`train_sabr`, :func:`prune_and_evaluate`, :func:`reprune`) so that a user or
a benchmark can run or replace one phase from Python.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import report
from .checkpoint import load_weights_into, read_metadata, save_checkpoint, write_json
from .config import RunConfig
from .data import (IMAGENET_MEAN, IMAGENET_STD, Preprocess, channel_stats, default_channels,
                   default_image_size, load_dataset, split_dataset)
from .distributed import DistContext, init_from_env, shutdown
from .errors import CheckpointError, SabrError
from .export import load_run
from .metrics import count_macs, sparsity_report
from .models import create_model, set_dropout
from .pruning import apply_masks, prune, zero_masks
from .regularizer import SABR
from .resume import STATE_FILE, load_state, optimizer_state, rng_state, save_state, set_rng_state
from .train import EpochStats, NonFiniteLossError, Split, evaluate, train_epoch

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """Data, splits, preprocessing and model description shared by all phases."""

    config: RunConfig
    dataset_name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    preprocess: Preprocess
    device: torch.device
    model_meta: dict
    skipped: list[str] = field(default_factory=list)
    dist: DistContext = field(default_factory=DistContext)

    def new_model(self) -> nn.Module:
        """A fresh model as configured, on the experiment's device."""
        m = self.model_meta
        return create_model(m["name"], m["num_classes"], m["in_chans"], m["image_size"],
                            pretrained=self.config.pretrained).to(self.device)

    def metadata(self, phase: str, **figures) -> dict:
        """Checkpoint metadata: everything :func:`sabr.load_run` needs to rebuild and use the model."""
        return {"phase": phase, "model": dict(self.model_meta), "classes": list(self.classes),
                "dataset": self.dataset_name, "preprocess": self.preprocess.to_dict(), **figures}

    def example_input(self) -> torch.Tensor:
        p = self.preprocess
        return torch.zeros(1, p.channels, p.image_size, p.image_size, device=self.device)


def _progress(enabled: bool) -> Callable | None:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda it, total, desc="batches": tqdm(it, total=total, desc=desc, unit="batch", leave=False, disable=None)


def prepare(config: RunConfig, progress: bool = True, dist: DistContext | None = None) -> Experiment:
    """Read the dataset, split it (72/18/10, stratified, seeded) and fix the preprocessing.

    ``dist`` is the process's place in a distributed job; by default it is read from the environment
    (:func:`sabr.distributed.init_from_env`: a single process unless launched by ``torchrun``). Every rank
    reads the whole dataset and makes the same split; training then uses each rank's shard.
    """
    size = config.image_size or default_image_size(config.data)
    channels = config.channels or default_channels(config.data)
    probe = Preprocess(size, channels)
    main = dist is None or dist.is_main
    ds = load_dataset(config.data, probe, config.max_per_class, config.on_bad_image, config.seed, progress and main)
    splits = split_dataset(ds, seed=config.seed)
    if config.pretrained and channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = channel_stats(ds.images[splits.train])
    pre = Preprocess(size, channels, mean, std)
    dist = dist or init_from_env(config.device)
    device = dist.device
    model_meta = {"name": config.model, "num_classes": len(ds.classes), "in_chans": channels, "image_size": size}
    create_model(**model_meta)  # fail early, with a clear message, on a size the model cannot take

    def part(index):
        return Split(ds.images[index], ds.labels[index])

    log.info("dataset %s: %d classes, %d train / %d val / %d test images of %dx%dx%d",
             ds.name, len(ds.classes), len(splits.train), len(splits.val), len(splits.test), channels, size, size)
    return Experiment(config, ds.name, ds.classes, part(splits.train), part(splits.val), part(splits.test),
                      pre, device, model_meta, ds.skipped, dist)


def _plateau(optimizer, factor: float, min_lr: float = 0.0):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=3, min_lr=min_lr)


def evaluate_split(exp: Experiment, model: nn.Module, split: Split) -> tuple[float, float]:
    """``(mean loss, accuracy)`` on ``split``; under distributed training each rank evaluates its share
    and the sums are reduced, so every rank gets the figures of the whole split."""
    d = exp.dist
    if not d.enabled:
        return evaluate(model, split, exp.preprocess, exp.device)
    part = Split(split.images[d.rank::d.world_size], split.labels[d.rank::d.world_size])
    loss, acc = evaluate(model, part, exp.preprocess, exp.device)
    n = len(part)
    loss_sum, correct, count = d.all_reduce_sum([loss * n, round(acc * n), n])
    return loss_sum / max(count, 1), correct / max(count, 1)


_NAN_ADVICE = {
    "base": "lower the learning rate --lr (now {lr:g}), e.g. to {lr10:g}",
    "sabr": "lower phase 2's learning rate --lr-sabr (now {lr:g}), e.g. to {lr10:g}, or SABR's lambda factor --teta1 "
            "(now {teta1:g}) or --growth-rate (now {growth:g})",
}


def _train_one_epoch(exp: Experiment, net: nn.Module, opt, gen: torch.Generator, phase: str, epoch: int,
                     limit: int, penalty=None, bar=None):
    """One epoch on this rank's shard; NaN/inf on any rank stops every rank with the same clear error."""
    cfg = exp.config
    progress = bar and (lambda it, total: bar(it, total, f"{phase} {epoch}/{limit}"))
    try:
        stats, bad = train_epoch(net, opt, exp.train, exp.preprocess, exp.device, cfg.batch_size, gen,
                                 penalty=penalty, shard=exp.dist.shard, progress=progress), 0
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
        advice = _NAN_ADVICE[phase].format(lr=lr, lr10=lr / 10, teta1=cfg.teta1, growth=cfg.growth_rate)
        kept = (f"the run folder keeps the last good epoch ({phase} epoch {epoch - 1})" if epoch > 1
                else "no epoch of this phase finished")
        raise NonFiniteLossError(
            f"the training loss became NaN or infinite in phase {'1 (base)' if phase == 'base' else '2 (SABR)'}, "
            f"epoch {epoch}; the phase was stopped and {kept}. To fix it, {advice}, and start again "
            "(a new --out, or --overwrite)."
        )
    return stats


def _epoch_row(epoch: int, stats, val_loss: float, val_acc: float, opt) -> dict:
    return {"epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy, "val_loss": val_loss,
            "val_accuracy": val_acc, "lr": opt.param_groups[0]["lr"], "seconds": stats.seconds}


def _restore_common(resume: dict, model: nn.Module, opt, sched, gen: torch.Generator) -> None:
    load_weights_into(model, resume["model"], source="the resume state")
    opt.load_state_dict(optimizer_state(resume["optimizer"]))
    sched.load_state_dict(resume["scheduler"])
    gen.set_state(resume["generator"])


def _state_common(epoch: int, model: nn.Module, opt, sched, gen: torch.Generator, rows: list[dict]) -> dict:
    return {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "generator": gen.get_state(), "rng": rng_state(), "rows": rows}


def train_base(exp: Experiment, model: nn.Module, progress: bool = True, resume: dict | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Phase 1: Adam, ReduceLROnPlateau(val loss, factor 0.1, patience 3); keeps the best-val-accuracy weights.

    Args:
        exp: the experiment from :func:`prepare`.
        model: the (freshly created) model; trained in place.
        progress: show progress bars (main rank only).
        resume: a phase-1 state given earlier to ``on_epoch``: training continues after its epoch,
            with its weights, optimiser, scheduler, batch order, RNG states, best weights and rows.
        on_epoch: called after every epoch with the phase's full state (tensors and JSON values), e.g.
            to save it with :func:`sabr.resume.save_state`.
    """
    cfg = exp.config
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = _plateau(opt, 0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_acc, best_state, rows, start = -1.0, None, [], 0
    if resume is not None:
        _restore_common(resume, model, opt, sched, gen)
        best_acc, best_state = resume["best_accuracy"], dict(resume["best_model"])
        rows, start = list(resume["rows"]), int(resume["epoch"])
        set_rng_state(resume["rng"])
    net = exp.dist.wrap(model)
    bar = _progress(progress and exp.dist.is_main)
    for epoch in range(start + 1, cfg.epochs_base + 1):
        stats = _train_one_epoch(exp, net, opt, gen, "base", epoch, cfg.epochs_base, bar=bar)
        val_loss, val_acc = evaluate_split(exp, model, exp.val)
        sched.step(val_loss)
        rows.append(_epoch_row(epoch, stats, val_loss, val_acc, opt))
        log.info("base  %3d/%d  loss %.4f  train %.2f%%  val %.2f%%", epoch, cfg.epochs_base, stats.loss,
                 100 * stats.accuracy, 100 * val_acc)
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch({**_state_common(epoch, model, opt, sched, gen, rows), "best_accuracy": best_acc,
                      "best_model": best_state})
    model.load_state_dict(best_state)
    return model, rows


def train_sabr(exp: Experiment, model: nn.Module, progress: bool = True, resume: dict | None = None,
               on_epoch: Callable[[dict], None] | None = None) -> tuple[nn.Module, SABR, list[dict]]:
    """Phase 2: L1 with SABR's adaptive per-tensor lambdas, dropout off, until all tensors freeze or the limit.

    ``resume`` and ``on_epoch`` work as in :func:`train_base`; the state also holds ``SABR.state_dict()``.
    Under distributed training the validation accuracy given to ``SABR.step`` is that of the whole
    validation split (reduced over ranks), so every rank grows, shrinks and freezes the same tensors.
    """
    cfg = exp.config
    set_dropout(model, 0.0)
    reg = SABR(model, teta1=cfg.teta1, growth_rate=cfg.growth_rate, decrease_rate=cfg.decrease_rate,
               accuracy_threshold=cfg.accuracy_threshold, k_epoch=cfg.k_epoch, zero_eps=cfg.zero_eps,
               params=cfg.params, structured=cfg.structured)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr_sabr or cfg.lr)
    sched = _plateau(opt, 0.51, min_lr=1e-5)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rows, start = [], 0
    if resume is not None:
        _restore_common(resume, model, opt, sched, gen)
        reg.load_state_dict(resume["sabr"])
        rows, start = list(resume["rows"]), int(resume["epoch"])
        set_rng_state(resume["rng"])
    bar = _progress(progress and exp.dist.is_main)
    net, wrapped_frozen = exp.dist.wrap(model), len(reg.frozen)
    epoch = start
    while epoch < cfg.epochs_sabr and not reg.all_frozen:
        epoch += 1
        if len(reg.frozen) != wrapped_frozen:  # DDP synchronises the trainable tensors it was built with
            net, wrapped_frozen = exp.dist.wrap(model), len(reg.frozen)
        stats = _train_one_epoch(exp, net, opt, gen, "sabr", epoch, cfg.epochs_sabr, penalty=reg.penalty, bar=bar)
        val_loss, val_acc = evaluate_split(exp, model, exp.val)
        sched.step(val_loss)
        result = reg.step(val_acc)
        rows.append({**_epoch_row(epoch, stats, val_loss, val_acc, opt), "action": result.action,
                     "drop": result.drop, "mean_lambda": reg.mean_lambda(),
                     "near_zero_sparsity": reg.near_zero_sparsity(), "frozen": len(reg.frozen),
                     "froze": result.frozen or ""})
        log.info("sabr  %3d/%d  loss %.4f  val %.2f%%  %s  near-zero %.1f%%  frozen %d/%d%s", epoch, cfg.epochs_sabr,
                 stats.loss, 100 * val_acc, result.action, 100 * rows[-1]["near_zero_sparsity"], len(reg.frozen),
                 len(reg.params), f" (froze {result.frozen})" if result.frozen else "")
        if on_epoch is not None:
            on_epoch({**_state_common(epoch, model, opt, sched, gen, rows), "sabr": reg.state_dict()})
        if reg.all_frozen:
            log.info("every regularised tensor is frozen: phase 2 stops after %d epochs", epoch)
    return model, reg, rows


def prune_and_evaluate(exp: Experiment, model: nn.Module, teta1: float, gamma: float,
                       epsilon: float | None = None, params=None) -> tuple[nn.Module, list, float]:
    """Prune a copy of ``model`` and return ``(pruned copy, per-layer stats, test accuracy)``."""
    pruned = copy.deepcopy(model)
    stats = prune(pruned, teta1=teta1, gamma=gamma, epsilon=epsilon, params=params)
    _, acc = evaluate_split(exp, pruned, exp.test)
    return pruned, stats, acc


def sweep(exp: Experiment, model: nn.Module, teta1_values, gamma: float, params=None) -> list[dict]:
    """Accuracy vs sparsity: prune copies of ``model`` at each factor and evaluate on the test split."""
    curve = []
    for t in sorted(teta1_values):
        pruned, _, acc = prune_and_evaluate(exp, model, t, gamma, params=params)
        rep = sparsity_report(pruned, params)
        curve.append({"teta1": t, "sparsity": rep.sparsity, "test_accuracy": acc})
    return curve


def finetune_masked(exp: Experiment, model: nn.Module, epochs: int, lr: float | None = None,
                    params=None, seed_offset: int = 2, progress: bool = False) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a pruned model in place for ``epochs`` epochs, keeping its zeros exactly zero.

    The zero pattern of the regularised tensors (``params``, default every Conv/Linear weight) is taken
    once at the start and re-applied after every optimizer step, so the sparsity never drops. Adam at
    ``lr`` (default: the config's phase-2 rate), no penalty, dropout as the model has it. Every
    parameter trains: tensors that SABR froze (``requires_grad=False``) are unfrozen. Returns the model
    (best validation accuracy of the epochs, the starting weights included) and one row per epoch.
    """
    cfg = exp.config
    masks = zero_masks(model, params)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=lr or cfg.lr_sabr or cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + seed_offset)
    _, best_acc = evaluate(model, exp.val, exp.preprocess, exp.device)
    best_state, rows = copy.deepcopy(model.state_dict()), []
    bar = _progress(progress)
    for epoch in range(1, epochs + 1):
        stats = train_epoch(model, opt, exp.train, exp.preprocess, exp.device, cfg.batch_size, gen,
                            after_step=lambda: apply_masks(model, masks),
                            progress=bar and (lambda it, total: bar(it, total, f"fine-tune {epoch}/{epochs}")))
        val_loss, val_acc = evaluate(model, exp.val, exp.preprocess, exp.device)
        rows.append(_epoch_row(epoch, stats, val_loss, val_acc, opt))
        log.info("fine-tune %3d/%d  loss %.4f  val %.2f%%", epoch, epochs, stats.loss, 100 * val_acc)
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model, rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def default_run_dir(config: RunConfig, dataset_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{dataset_name}-{config.model}-{stamp}"


def _no_run_to_resume(path: Path) -> CheckpointError:
    return CheckpointError(f"{path} holds no run to resume (no config.yaml); pass the --out folder of a "
                           "`sabr run`, or start a new run without --resume.")


def _open_run_dir(path: Path, overwrite: bool, resume: bool = False, create: bool = True) -> Path:
    """Check ``path`` and create it: a folder holding another run is refused unless ``overwrite``/``resume``."""
    if path.exists() and not path.is_dir():
        raise SabrError(f"--out {path} is a file, not a folder; choose another --out.")
    holds_run = path.is_dir() and ((path / "config.yaml").exists() or (path / STATE_FILE).exists())
    if resume:
        if not (path / "config.yaml").is_file():
            raise _no_run_to_resume(path)
        if (path / "summary.json").is_file() and not (path / STATE_FILE).exists():
            raise SabrError(f"the run in {path} has already finished (summary.json is written); nothing to resume. "
                            "Use `sabr prune --run` to re-prune it, or --overwrite to train it again.")
        return path
    if holds_run and not overwrite:
        raise SabrError(f"{path} already holds a run; choose another --out, pass --resume {path} to continue it, "
                        "or --overwrite to replace it.")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


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
    import yaml

    started = time.perf_counter()
    if config.out:  # refuse a busy folder before spending time on the data
        _open_run_dir(Path(config.out), overwrite, resume, create=False)
    torch.manual_seed(config.seed)
    exp = prepare(config, progress, dist)
    out = Path(config.out) if config.out else default_run_dir(config, exp.dataset_name)
    run_dir = Path(dist.broadcast_text(str(out)))
    state_path = run_dir / STATE_FILE
    if dist.is_main:
        _open_run_dir(run_dir, overwrite, resume)
        if overwrite:
            state_path.unlink(missing_ok=True)
    dist.barrier()
    state = load_state(state_path) if resume and state_path.is_file() else None
    resolved = config.to_dict() | {"out": str(run_dir), "image_size": exp.preprocess.image_size,
                                   "channels": exp.preprocess.channels}
    if dist.is_main and state is None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        if exp.skipped:
            (run_dir / "skipped_images.txt").write_text("\n".join(exp.skipped) + "\n")
    if state is not None:
        log.info("resuming %s: phase %s after epoch %d", run_dir, state["phase"], state["epoch"])
    elif resume:
        log.info("%s has no saved epoch yet: the run starts from the beginning", run_dir)
    log.info("run folder: %s (device %s%s)", run_dir, exp.device,
             f", {dist.world_size} processes" if dist.enabled else "")
    done: dict = state.get("done", {}) if state else {}

    def save(phase: str):
        def on_epoch(phase_state: dict) -> None:
            if dist.is_main:
                save_state(state_path, {**phase_state, "phase": phase, "done": done})
            _test_pause()
        return on_epoch

    # phase 1
    torch.manual_seed(config.seed)
    model = exp.new_model()
    if state is None or state["phase"] == "base":
        model, base_rows = train_base(exp, model, progress, resume=state, on_epoch=save("base"))
        _, base_val = evaluate_split(exp, model, exp.val)
        _, base_test = evaluate_split(exp, model, exp.test)
        if dist.is_main:
            _write_csv(run_dir / "history_base.csv", base_rows)
            save_checkpoint(model, run_dir / "base", exp.metadata("base", val_accuracy=base_val, test_accuracy=base_test))
        done["base"] = {"val_accuracy": base_val, "test_accuracy": base_test, "rows": base_rows}
        sabr_resume = None
    else:
        base_val, base_test, base_rows = done["base"]["val_accuracy"], done["base"]["test_accuracy"], done["base"]["rows"]
        sabr_resume = state

    # phase 2
    model, reg, sabr_rows = train_sabr(exp, model, progress, resume=sabr_resume, on_epoch=save("sabr"))
    _, sabr_val = evaluate_split(exp, model, exp.val)
    _, sabr_test = evaluate_split(exp, model, exp.test)
    if dist.is_main:
        _write_csv(run_dir / "history_sabr.csv", sabr_rows)
        write_json(run_dir / "sabr_state.json", reg.state_dict())
        save_checkpoint(model, run_dir / "sabr", exp.metadata("sabr", val_accuracy=sabr_val, test_accuracy=sabr_test))

    # phase 3
    pruned, layer_stats, pruned_test = prune_and_evaluate(exp, model, config.prune_teta1, config.gamma,
                                                          config.epsilon, config.params)
    curve = sweep(exp, model, config.sweep, config.gamma, config.params)
    pruned_figures = {"test_accuracy": pruned_test}

    # phase 4 (optional): masked fine-tuning of the pruned model
    if config.finetune_epochs:
        pruned, ft_rows = finetune_masked(exp, pruned, config.finetune_epochs, params=config.params,
                                          progress=progress and dist.is_main)
        _, pruned_test = evaluate_split(exp, pruned, exp.test)
        log.info("masked fine-tune: test accuracy %.2f%% -> %.2f%%", 100 * pruned_figures["test_accuracy"],
                 100 * pruned_test)
        pruned_figures = {"test_accuracy": pruned_test, "finetune_epochs": len(ft_rows),
                          "test_accuracy_before_finetune": pruned_figures["test_accuracy"]}
        if dist.is_main:
            _write_csv(run_dir / "history_finetune.csv", ft_rows)
    if dist.is_main:
        save_checkpoint(pruned, run_dir / "pruned", exp.metadata("pruned", test_accuracy=pruned_test))

    summary = build_summary(exp, model, pruned, reg, layer_stats, {
        "base": {"val_accuracy": base_val, "test_accuracy": base_test, "epochs": len(base_rows)},
        "sabr": {"val_accuracy": sabr_val, "test_accuracy": sabr_test, "epochs": len(sabr_rows)},
        "pruned": pruned_figures,
    }, curve, resolved)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if dist.is_main:
        report.write_run_report(run_dir, summary, base_rows, sabr_rows, reg.history)
        state_path.unlink(missing_ok=True)  # the run is complete: nothing left to resume
    return summary


def _test_pause() -> None:
    """Test hook: ``SABR_TEST_EPOCH_PAUSE=<seconds>`` sleeps after each saved epoch (lets a test kill a run)."""
    pause = os.environ.get("SABR_TEST_EPOCH_PAUSE")
    if pause:
        time.sleep(float(pause))


def resume(run_dir: str | Path, progress: bool = True, device: str | None = None) -> dict:
    """Continue the run in ``run_dir`` (see :func:`run` with ``resume=True``) with its saved configuration.

    ``device`` may override the saved device (e.g. continue on the CPU a run started on a GPU; only a
    run continued on the same kind of device reproduces the uninterrupted figures exactly).
    """
    import yaml

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise _no_run_to_resume(run_dir)
    values = yaml.safe_load(cfg_path.read_text()) or {}
    values["out"] = str(run_dir)
    if device is not None:
        values["device"] = device
    return run(RunConfig.from_dict(values), progress=progress, resume=True)


def build_summary(exp: Experiment, sabr_model: nn.Module, pruned: nn.Module, reg: SABR, layer_stats: list,
                  figures: dict, curve: list[dict], config: dict) -> dict:
    """The ``summary.json`` contract (fractions in [0, 1], counts as integers)."""
    params = list(reg.params)
    sabr_exact = sparsity_report(sabr_model, params)
    sabr_near = sparsity_report(sabr_model, params, eps=reg.zero_eps)
    pruned_rep = sparsity_report(pruned, params)
    macs = count_macs(pruned, exp.example_input())
    macs_by_weight = {m.weight: m for m in macs.layers}
    layers = []
    for s in layer_stats:
        m = macs_by_weight.get(s.name)
        layers.append({"name": s.name, "total": s.total, "nonzero": s.nonzero, "sparsity": s.sparsity,
                       "threshold": s.threshold, "macs_dense": m.macs_dense if m else 0,
                       "macs_pruned": int(round(m.macs_pruned)) if m else 0})
    n_params = sum(p.numel() for p in pruned.parameters())
    return {
        "dataset": {"name": exp.dataset_name, "classes": list(exp.classes), "num_classes": len(exp.classes),
                    "train": len(exp.train), "val": len(exp.val), "test": len(exp.test),
                    "image_size": exp.preprocess.image_size, "channels": exp.preprocess.channels,
                    "skipped_images": len(exp.skipped)},
        "model": {"name": exp.model_meta["name"], "params": n_params, "regularised_weights": pruned_rep.total},
        "base": figures["base"],
        "sabr": {**figures["sabr"], "sparsity": sabr_near.sparsity, "sparsity_exact": sabr_exact.sparsity,
                 "zero_eps": reg.zero_eps, "frozen": len(reg.frozen), "tensors": len(params),
                 "stopped": "all_frozen" if reg.all_frozen else "epoch_limit"},
        "pruned": {**figures["pruned"], "sparsity": pruned_rep.sparsity, "nonzero": pruned_rep.nonzero,
                   "total": pruned_rep.total, "sparsity_all_params": pruned_rep.all_sparsity,
                   "macs_dense": int(macs.macs_dense), "macs_pruned": int(round(macs.macs_pruned)),
                   "macs_reduction": macs.reduction},
        "layers": layers,
        "curve": curve,
        "config": config,
    }


def reprune(run_dir: str | Path, teta1_values, gamma: float = 0.1, progress: bool = True) -> list[dict]:
    """Re-prune a finished run's SABR checkpoint at several factors; writes ``tradeoff.json`` and its chart.

    The run's own data split is rebuilt from its saved config, so accuracies are on the same test split.
    """
    import yaml

    run_dir = Path(run_dir)
    model, meta = load_run(run_dir, "sabr")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise SabrError(f"{cfg_path} is missing; `sabr prune` needs a run folder written by `sabr run`.")
    cfg = RunConfig.from_dict({**yaml.safe_load(cfg_path.read_text()), "device": "cpu"})
    exp = prepare(cfg, progress)
    exp.preprocess = meta["transform"]
    model.to(exp.device)
    base_meta = run_dir / "base.json"
    base_acc = read_metadata(base_meta).get("test_accuracy") if base_meta.is_file() else None
    curve = sweep(exp, model, teta1_values, gamma, cfg.params)
    write_json(run_dir / "tradeoff.json", {"gamma": gamma, "base_test_accuracy": base_acc, "curve": curve})
    report.plot_accuracy_vs_sparsity(run_dir / "tradeoff.png", curve, base_acc, title=f"{meta['model']['name']} "
                                     f"on {meta['dataset']}: re-pruned at {len(curve)} thresholds")
    return curve
