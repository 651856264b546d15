"""Torch-Pruning's channel pruning: the structured peers ``sabr run --structured`` is compared with.

* :func:`torch_pruning_channels`: one-shot removal of whole channels by one of Torch-Pruning's importances
  (:data:`IMPORTANCES`: group L2 magnitude, BatchNorm scale, first-order Taylor), to a share of every coupled
  group or to another model's shape (``like``: e.g. structured SABR's shrunk model, so both have the same
  channels per layer).
* :func:`train_groupnorm`: Torch-Pruning's ``GroupNormPruner`` (DepGraph, Fang et al. 2023) with its own sparse
  training (its group regulariser added to the gradients before every optimizer step), then the cut, then a
  masked fine-tune: the counterpart of SABR's group penalty.
* :func:`out_channels`: the output channels of every Conv/Linear layer, the shape the two are matched on.

Every function needs the ``torch-pruning`` package (sabr's ``bench`` extra; measured with 1.6) and raises
:class:`ImportError` saying how to install it. The final classifier always keeps its classes.
``benchmarks/structured.py`` runs them against ``sabr run --structured``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models import set_dropout
from .phases import finetune_masked, sabr_scheduler
from .train import batches, evaluate, fit, phase_generator, train_epoch

if TYPE_CHECKING:
    from .experiment import Experiment

__all__ = ["IMPORTANCES", "torch_pruning_channels", "train_groupnorm", "out_channels"]

IMPORTANCES = ("magnitude", "bn_scale", "taylor")
"""Torch-Pruning's importances :func:`torch_pruning_channels` takes: ``GroupMagnitudeImportance(p=2)``,
``BNScaleImportance`` (|gamma| of the group's BatchNorms) and ``GroupTaylorImportance`` (|w * dL/dw|, the
gradients of ``TAYLOR_BATCHES`` training batches)."""
TAYLOR_BATCHES = 8
"""Training mini-batches whose loss gradients the Taylor importance accumulates (seeded order)."""


def _tp():
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise ImportError("Torch-Pruning's peers need the torch-pruning package: "
                          "pip install 'torch-pruning>=1.6' (sabr's bench extra).") from exc
    return tp


def _importance(name: str):
    tp = _tp()
    kinds = {"magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
             "bn_scale": tp.importance.BNScaleImportance, "taylor": tp.importance.GroupTaylorImportance}
    if name not in kinds:
        raise ConfigError(f"unknown Torch-Pruning importance {name!r}; choose one of {', '.join(IMPORTANCES)}.")
    return kinds[name]()


def out_channels(model: nn.Module) -> dict[str, int]:
    """``{layer name: output channels}`` of every Conv2d (``out_channels``) and Linear (``out_features``)."""
    return {name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _pruner_args(model: nn.Module, ratio: float | None, like: nn.Module | None) -> dict:
    """The share arguments of a Torch-Pruning pruner: ``ratio`` of every group, or each layer cut to ``like``'s
    output channels (a group takes its root layer's ratio; coupled layers have equal widths in both models)."""
    if (ratio is None) == (like is None):
        raise ConfigError("give either a channel ratio or a model whose shape to match (like=...), not both.")
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    if like is None:
        return {"pruning_ratio": ratio, "ignored_layers": head}
    want, have, modules = out_channels(like), out_channels(model), dict(model.named_modules())
    missing = sorted(set(have) - set(want))
    if missing:
        raise ConfigError(f"the model to match has no layer {missing[0]!r}; pass a pruned copy of the same model.")
    ratios = {modules[n]: 1.0 - want[n] / have[n] for n in have if want[n] < have[n]}
    return {"pruning_ratio": 0.0, "pruning_ratio_dict": ratios, "ignored_layers": head}


def _taylor_gradients(model: nn.Module, exp: "Experiment") -> None:
    """Accumulate the cross-entropy gradients of ``TAYLOR_BATCHES`` training batches (seeded order, eval mode:
    the BatchNorm statistics stay as trained) for :class:`torch_pruning.importance.GroupTaylorImportance`."""
    model.eval().zero_grad(set_to_none=True)
    gen = phase_generator(exp.config.seed, "finetune")
    for i, (images, labels) in enumerate(batches(exp.train, exp.config.batch_size, gen)):
        if i == TAYLOR_BATCHES:
            break
        x = exp.preprocess.normalize(images.to(exp.device))
        F.cross_entropy(model(x), labels.to(exp.device)).backward()


def torch_pruning_channels(model: nn.Module, example: torch.Tensor, ratio: float | None = None,
                           importance: str = "magnitude", *, like: nn.Module | None = None,
                           exp: "Experiment | None" = None) -> nn.Module:
    """A copy of ``model`` with whole channels removed by Torch-Pruning in one shot: a physically smaller
    model, in eval mode, on ``model``'s device.

    Args:
        model: the model to prune (left as it is).
        example: an input batch for tracing the model's channel dependencies.
        ratio: the share of channels to remove from every coupled group, in [0, 1); or
        like: a smaller model of the same architecture (e.g. ``sabr.shrink`` of structured SABR's result) whose
            output channels every layer is cut to.
        importance: which channels go: one of :data:`IMPORTANCES`.
        exp: the experiment whose training batches give the gradients ``"taylor"`` needs.

    Raises:
        ImportError: ``torch-pruning`` is not installed.
        ConfigError: an unknown importance, neither or both of ``ratio`` and ``like``, or ``"taylor"`` without
            ``exp``.
    """
    tp = _tp()
    if importance == "taylor" and exp is None:
        raise ConfigError("the Taylor importance needs training batches: pass exp=<the experiment>.")
    pruned = copy.deepcopy(model).eval()
    pruner = tp.pruner.MagnitudePruner(pruned, example.to(next(pruned.parameters()).device),
                                       importance=_importance(importance), **_pruner_args(pruned, ratio, like))
    if importance == "taylor":
        _taylor_gradients(pruned, exp)
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def train_groupnorm(exp: "Experiment", model: nn.Module, epochs: int, ratio: float | None = None, *,
                    like: nn.Module | None = None, reg: float = 1e-4, sparse_epochs: int | None = None,
                    lr: float | None = None) -> tuple[nn.Module, list[dict]]:
    """Torch-Pruning's ``GroupNormPruner`` on ``model`` (in place), then cut and fine-tuned: ``epochs`` in all.

    ``sparse_epochs`` (default half of ``epochs``) of training with the pruner's group regulariser (strength
    ``reg``, applied to the gradients before every optimizer step, as Torch-Pruning's examples do), keeping the
    last epoch; then ``pruner.step()`` removes ``ratio`` of every group's channels (or cuts every layer to
    ``like``'s output channels) by group L2 magnitude; then :func:`sabr.phases.finetune_masked` for the rest
    (best validation epoch kept, the cut model included). The configured optimizer at ``lr`` (default the
    config's phase-2 rate) with phase 2's schedule, dropout off, as every peer in :mod:`sabr.baselines`.

    Returns the physically smaller model and one row per epoch (the sparse epochs' rows first).
    """
    tp = _tp()
    cfg = exp.config
    sparse = epochs // 2 if sparse_epochs is None else sparse_epochs
    if not 0 <= sparse <= epochs:
        raise ConfigError(f"sparse_epochs must be between 0 and epochs ({epochs}), got {sparse}.")
    set_dropout(model, 0.0)
    pruner = tp.pruner.GroupNormPruner(model, exp.example_input(), importance=_importance("magnitude"), reg=reg,
                                       **_pruner_args(model, ratio, like))
    opt = exp.optimizer(model.parameters(), lr=lr or cfg.lr_sabr or cfg.lr)
    hook = opt.register_step_pre_hook(lambda *_: pruner.regularize(model))
    gen = phase_generator(cfg.seed, "finetune")
    try:
        state = fit(model, opt, lambda epoch: train_epoch(model, opt, exp.train, exp.preprocess, exp.device,
                                                          cfg.batch_size, gen),
                    lambda: evaluate(model, exp.val, exp.preprocess, exp.device), sparse, keep="last",
                    scheduler=sabr_scheduler(opt))
    finally:
        hook.remove()
    pruner.step()
    model.zero_grad(set_to_none=True)
    tuned, rows = finetune_masked(exp, model, epochs - sparse, lr=lr)
    return tuned, [*state.rows, *rows]
