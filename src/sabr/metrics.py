"""Pure measurements: sparsity and multiply-accumulate operations (MACs).

Nothing here prints or plots; every function takes a model (or tensors) and returns data.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn

from torch.utils._python_dispatch import TorchDispatchMode

from .weights import default_param_names, resolve_params

log = logging.getLogger(__name__)


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

    def __str__(self) -> str:
        """A table: one row per tensor, then the regularised tensors together and every parameter."""
        zero = "exact zeros" if self.eps == 0 else f"|w| <= {self.eps:g} counts as zero"
        rows = [(l.name, l.total, l.nonzero, l.sparsity) for l in self.layers]
        rows += [("regularised weights", self.total, self.nonzero, self.sparsity),
                 ("all parameters", self.all_total, self.all_nonzero, self.all_sparsity)]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'tensor':<{width}}  {'weights':>12}  {'non-zero':>12}  {'sparsity':>8}"]
        lines += [f"{n:<{width}}  {t:>12,}  {nz:>12,}  {100 * sp:>7.2f}%" for n, t, nz, sp in rows]
        lines.insert(len(lines) - 2, "-" * len(lines[0]))
        return "\n".join(lines + [f"({zero})"])


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
    """MACs of one weight tensor (or of a module's weight-free products, e.g. attention) for one input sample."""

    name: str  # the module's name, e.g. "features.0"
    kind: str  # the module's class: "Conv2d", "Linear", "MultiheadAttention", ...
    weight: str  # the weight's parameter name, e.g. "features.0.weight"; "" for products of activations only
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


def _flop_formulas() -> dict:
    """aten op -> FLOP formula (FLOPs = 2 x MACs) of every convolution and matrix product torch knows, plus the
    CPU attention kernel FlopCounterMode misses (its formula is the generic flash attention's)."""
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    formulas = dict(flop_registry)
    cpu_attention = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_attention is not None and cpu_attention not in formulas:
        formulas[cpu_attention] = flop_registry[aten._scaled_dot_product_flash_attention]
    return formulas


class _MacCounter(TorchDispatchMode):
    """Adds up the MACs of every convolution and matrix product run under it, by the weight it uses (found by
    storage) or, for products of activations only, by the innermost module running."""

    def __init__(self, weights: dict[int, str], stack: list[str]) -> None:
        super().__init__()
        self.weights, self.stack, self.formulas = weights, stack, _flop_formulas()
        self.macs: dict[tuple[str, str], int] = {}
        self.unknown: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is None:
            if any(w in func.__name__ for w in ("attention", "conv", "mm", "matmul")):
                self.unknown.add(func.__name__)
            return out
        macs = formula(*args, **kwargs, out_val=out) // 2
        ptrs = [a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)]
        weight = next((self.weights[p] for p in ptrs if p in self.weights), "")
        key = (weight.rpartition(".")[0] if weight else self.stack[-1], weight)
        self.macs[key] = self.macs.get(key, 0) + macs
        return out


def _weight_tensors(model: nn.Module) -> dict[int, str]:
    """Storage address -> parameter name of every weight matrix (see :func:`default_param_names`)."""
    params = dict(model.named_parameters())
    return {params[n].untyped_storage().data_ptr(): n for n in default_param_names(model)}


@torch.no_grad()
def count_macs(
    model: nn.Module,
    example_input: torch.Tensor,
    sparsity: dict[str, float] | None = None,
) -> MacsReport:
    """Count the MACs of every convolution and matrix product in a real forward pass (per sample).

    Works on any model: each aten convolution / matrix product / attention kernel the pass runs is
    counted with torch's FLOP formulas (:mod:`torch.utils.flop_counter`, FLOPs / 2), never from a table of
    layer names. A product that reads a weight matrix (Conv, Linear, attention projections) is one layer,
    named after that weight; products of activations only (attention's ``q k^T`` and ``attn v``) are
    counted per module with ``weight == ""``. Conv: ``out_channels * in_channels / groups * kh * kw *
    out_h * out_w``; Linear: ``out_features * in_features`` per output position. Attention's fused
    fast path is switched off during the pass so that its products are seen.

    Args:
        model: the network (its mode is restored afterwards; the pass runs in eval mode).
        example_input: a batch shaped like real inputs, e.g. ``torch.zeros(1, 3, 64, 64)``.
        sparsity: weight name -> sparsity fraction; default: measured from the weights (exact zeros).
            Pruned MACs of a weight layer are ``macs * (1 - sparsity)``; products of activations keep
            their dense count.
    """
    names = {m: n for n, m in model.named_modules()}
    stack: list[str] = [""]
    def enter(module, args) -> None:
        stack.append(names[module])

    def leave(module, args, out) -> None:
        stack.pop()

    hooks = [h for m in model.modules() for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    counter = _MacCounter(_weight_tensors(model), stack)
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    try:
        model.eval()
        torch.backends.mha.set_fastpath_enabled(False)
        with counter:
            model(example_input)
    finally:
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in hooks:
            h.remove()
    if counter.unknown:
        log.warning("count_macs: no FLOP formula for %s; their MACs are not counted",
                    ", ".join(sorted(counter.unknown)))
    return _report(model, counter.macs, max(int(example_input.shape[0]), 1), sparsity)


def _report(model: nn.Module, macs: dict[tuple[str, str], int], batch: int,
            sparsity: dict[str, float] | None) -> MacsReport:
    """Per-sample :class:`MacsReport` from the counted MACs, in module order."""
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    order = {n: i for i, n in enumerate(modules)}
    layers = []
    for (name, weight), total in sorted(macs.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1] == "")):
        s = 0.0
        if weight and sparsity is not None and weight in sparsity:
            s = float(sparsity[weight])
        elif weight:
            w = params[weight].detach()
            s = 1.0 - int(torch.count_nonzero(w)) / w.numel()
        dense = total // batch
        layers.append(LayerMacs(name, type(modules[name]).__name__, weight, dense, s, dense * (1.0 - s)))
    dense = sum(layer.macs_dense for layer in layers)
    pruned = sum(layer.macs_pruned for layer in layers)
    return MacsReport(layers, dense, pruned, 1.0 - pruned / dense if dense else 0.0)


def count_pruned_macs(model: nn.Module, example_input: torch.Tensor) -> MacsReport:
    """MACs per image as sabr reports them everywhere (the run's headline, ``summary.json``, ``sabr bench``).

    ``macs_dense`` counts every convolution and matrix product of ``model`` at its full shape
    (:func:`count_macs`). ``macs_pruned`` counts the products that remain to be done: those of the
    :func:`~sabr.export.shrink` copy (the channels pruning emptied removed, with the next layers' matching
    inputs; the same outputs), less those by a zero weight. Per layer the same, by weight name. A model
    that torch.fx cannot trace is counted as it is (its zero weights left out).

    Args:
        model: the (pruned) network; it is not changed.
        example_input: a batch shaped like real inputs, e.g. ``torch.zeros(1, 3, 64, 64)``.
    """
    from .errors import SabrError
    from .export import shrink

    full = count_macs(model, example_input)
    x = example_input[:1].detach().cpu()
    try:
        small, _ = shrink(model, torch.cat([x, x]))
    except SabrError as exc:
        log.debug("count_pruned_macs: counted at full shape (%s)", exc)
        return full
    kept = {(l.name, l.weight): l for l in count_macs(small, x).layers}
    layers = [LayerMacs(l.name, l.kind, l.weight, l.macs_dense, l.sparsity,
                        kept[(l.name, l.weight)].macs_pruned if (l.name, l.weight) in kept else 0.0)
              for l in full.layers]
    pruned = sum(l.macs_pruned for l in layers)
    return MacsReport(layers, full.macs_dense, pruned, 1.0 - pruned / full.macs_dense if full.macs_dense else 0.0)
