"""Pure measurements: sparsity and multiply-accumulate operations (MACs).

Nothing here prints or plots; every function takes a model (or tensors) and returns data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from .regularizer import resolve_params


@dataclass
class LayerSparsity:
    name: str
    total: int
    nonzero: int
    sparsity: float  # zeros / elements


@dataclass
class SparsityReport:
    """Sparsity per regularised tensor and overall; ``all_*`` count every parameter of the model."""

    layers: list[LayerSparsity]
    total: int
    nonzero: int
    sparsity: float
    all_total: int
    all_nonzero: int
    all_sparsity: float
    eps: float

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def sparsity_report(model: nn.Module, params: Iterable[str] | None = None, eps: float = 0.0) -> SparsityReport:
    """Count zeros per regularised tensor and overall.

    Args:
        model: the network.
        params: tensors to report (default: weights of every Conv and Linear module).
        eps: a weight counts as zero when ``|w| <= eps``; the default 0.0 counts exact zeros only
            (use ``zero_eps`` to get SABR's training-time "near zero" figure).
    """
    def nonzero(t: torch.Tensor) -> int:
        return int((t.detach().abs() > eps).sum())

    layers = []
    for name, p in resolve_params(model, params).items():
        nz = nonzero(p)
        layers.append(LayerSparsity(name, p.numel(), nz, 1.0 - nz / p.numel()))
    total = sum(layer.total for layer in layers)
    nz = sum(layer.nonzero for layer in layers)
    all_total = sum(p.numel() for p in model.parameters())
    all_nz = sum(nonzero(p) for p in model.parameters())
    return SparsityReport(layers, total, nz, 1.0 - nz / total, all_total, all_nz,
                          1.0 - all_nz / max(all_total, 1), eps)


@dataclass
class LayerMacs:
    """MACs of one Conv or Linear module for one input sample."""

    name: str  # the module's name, e.g. "features.0"
    kind: str  # "Conv2d", "Linear", ...
    weight: str  # the weight's parameter name, e.g. "features.0.weight"
    macs_dense: int
    sparsity: float
    macs_pruned: float


@dataclass
class MacsReport:
    """Per-layer and total MACs (per sample); ``reduction`` is ``1 - pruned / dense``."""

    layers: list[LayerMacs]
    macs_dense: int
    macs_pruned: float
    reduction: float = field(default=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Dense MACs of one call, per sample, from the shapes actually seen."""
    batch = out.shape[0] if out.dim() > 1 else 1
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        spatial = math.prod(out.shape[2:])
        return module.out_channels * (module.in_channels // module.groups) * k * spatial
    if isinstance(module, nn.Linear):
        positions = out.numel() // (batch * module.out_features) if out.dim() > 1 else 1
        return module.out_features * module.in_features * positions
    return 0


@torch.no_grad()
def count_macs(
    model: nn.Module,
    example_input: torch.Tensor,
    sparsity: dict[str, float] | None = None,
) -> MacsReport:
    """Count the MACs of every Conv and Linear module in a real forward pass (per sample).

    Works on any model (grouped and depthwise convolutions included): shapes come from forward hooks,
    never from a table of layer names. Conv: ``out_channels * in_channels / groups * kh * kw * out_h
    * out_w``; Linear: ``out_features * in_features`` per output position.

    Args:
        model: the network (its mode is restored afterwards; the pass runs in eval mode).
        example_input: a batch shaped like real inputs, e.g. ``torch.zeros(1, 3, 64, 64)``.
        sparsity: weight name -> sparsity fraction; default: measured from the weights (exact zeros).
            Pruned MACs of a layer are ``macs * (1 - sparsity)``.
    """
    names = {m: n for n, m in model.named_modules()}
    counts: dict[nn.Module, int] = {}

    def hook(module, inputs, output):
        counts[module] = counts.get(module, 0) + _layer_macs(module, inputs[0], output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layers = []
    for module, macs in counts.items():
        name = names[module]
        weight = f"{name}.weight" if name else "weight"
        if sparsity is not None and weight in sparsity:
            s = float(sparsity[weight])
        else:
            w = module.weight.detach()
            s = 1.0 - int(torch.count_nonzero(w)) / w.numel()
        layers.append(LayerMacs(name, type(module).__name__, weight, macs, s, macs * (1.0 - s)))
    order = {n: i for i, n in enumerate(names.values())}
    layers.sort(key=lambda layer: order[layer.name])
    dense = sum(layer.macs_dense for layer in layers)
    pruned = sum(layer.macs_pruned for layer in layers)
    return MacsReport(layers, dense, pruned, 1.0 - pruned / dense if dense else 0.0)
