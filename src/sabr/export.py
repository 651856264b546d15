"""Make the sparsity real: compressed checkpoints, physically smaller models and ONNX files.

Three formats, all written as a weights file plus a JSON file beside it that carries the run's
metadata (``classes``, ``preprocess``, ``model``), so an export is usable wherever a run is:

* ``sparse`` (:func:`save_sparse`): only the non-zeros are stored, per tensor as a packed bitmask plus
  the values, or as flat ``int32`` indices plus the values, or dense, whichever is smallest. Loading
  restores bit-identical weights. Safetensors, no pickle.
* ``shrunk`` (:func:`shrink`, :func:`save_shrunk`): a smaller dense model. Output channels (or neurons)
  that no consumer uses, or that carry only a constant, are removed together with the matching
  inputs of the next layers; constants are folded into the next layer's bias. Which channels move
  together is found by tracing the model with :mod:`torch.fx` (no table of layer names): BatchNorm,
  depthwise convolutions, residual additions and the flatten before a Linear are respected.
* ``onnx`` (:func:`export_onnx`): the (pruned or shrunk) model as ONNX, checked with onnxruntime.

:func:`load_model` opens any of them (and run folders and phase checkpoints) and returns
``(model, metadata)``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import operator
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from .checkpoint import (build_model, load_checkpoint, load_run, load_weights_into, read_metadata, read_weights,
                         save_tensors, write_json)
from .data import Preprocess
from .errors import CheckpointError, SabrError

log = logging.getLogger(__name__)

FORMATS = ("sparse", "shrunk", "onnx")


# =========================================================================== sparse format
def _encode(t: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
    """Smallest of three encodings of one tensor: dense, bitmask + values, flat indices + values."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() < 64 or not flat.dtype.is_floating_point:
        return "dense", {"": t.detach().cpu().contiguous()}
    nz = flat != 0
    values = flat[nz].contiguous()
    n, k, item = flat.numel(), values.numel(), flat.element_size()
    sizes = {"dense": n * item, "bitmask": math.ceil(n / 8) + k * item, "index": k * (4 + item)}
    kind = min(sizes, key=sizes.get)
    if kind == "dense":
        return "dense", {"": t.detach().cpu().contiguous()}
    if kind == "bitmask":
        bits = torch.from_numpy(np.packbits(nz.numpy().astype(np.uint8)))
        return "bitmask", {"mask": bits, "values": values}
    return "index", {"index": torch.nonzero(nz).reshape(-1).to(torch.int32), "values": values}


def _decode(kind: str, shape: list[int], dtype: torch.dtype, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    n = math.prod(shape)
    if kind == "dense":
        return parts[""].reshape(shape)
    out = torch.zeros(n, dtype=dtype)
    if kind == "bitmask":
        mask = torch.from_numpy(np.unpackbits(parts["mask"].numpy(), count=n).astype(bool))
        out[mask] = parts["values"]
    elif kind == "index":
        out[parts["index"].long()] = parts["values"]
    else:
        raise CheckpointError(f"unknown sparse encoding {kind!r}; the file was written by a newer sabr.")
    return out.reshape(shape)


def sparse_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Encode a state dict: ``(flat tensors for safetensors, per-tensor layout for the JSON)``."""
    tensors, layout = {}, {}
    for name, t in state.items():
        kind, parts = _encode(t)
        layout[name] = {"encoding": kind, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for part, value in parts.items():
            tensors[f"{name}:{part}" if part else name] = value
    return tensors, layout


def dense_state_dict(tensors: dict[str, torch.Tensor], layout: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`sparse_state_dict`: bit-identical dense tensors."""
    state = {}
    for name, info in layout.items():
        prefix = f"{name}:"
        parts = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if info["encoding"] == "dense":
            parts = {"": tensors[name]}
        state[name] = _decode(info["encoding"], info["shape"], getattr(torch, info["dtype"]), parts)
    return state


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict) -> Path:
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_tensors(tensors, path, metadata)


def _plain_meta(meta: dict) -> dict:
    """The source checkpoint's metadata, less what belongs to it alone (its loaded transform, its hash)."""
    return {k: v for k, v in meta.items() if k not in ("transform", "weights_sha256")}


def save_sparse(model: nn.Module, path: str | Path, metadata: dict) -> Path:
    """Write ``model``'s weights storing only the non-zeros; ``metadata`` as for :func:`~sabr.save_checkpoint`.

    Returns the ``.safetensors`` path; the layout and ``metadata`` go to the ``.json`` beside it.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors, layout = sparse_state_dict(state)
    meta = _plain_meta(metadata) | {"export": {"format": "sparse", "tensors": layout}}
    return _save(tensors, path, meta)


# =========================================================================== channel graph
_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU,
                 nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.AvgPool2d)
_PASS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.dropout,
                   torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.max_pool2d,
                   torch.nn.functional.avg_pool2d, torch.nn.functional.hardswish, torch.sigmoid, torch.tanh}
_PASS_METHODS = {"relu", "relu_", "contiguous", "sigmoid", "tanh", "clone"}


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


@dataclass
class _Space:
    """One channel space: tensors whose channel ``j`` is the same channel (pass-through ops, residual adds)."""

    producers: list[str] = field(default_factory=list)  # conv/linear modules writing this space
    consumers: list[tuple[str, str, int]] = field(default_factory=list)  # (module, input node, hw)
    per_channel: list[str] = field(default_factory=list)  # BatchNorm modules living in this space
    locked: bool = False


class _Graph:
    """Union-find over channel spaces, built from one traced forward pass."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.spaces: dict[int, _Space] = {}
        self.ties: list[tuple[int, int]] = []  # depthwise convs: same channels removed on both sides

    def new(self, locked: bool = False) -> int:
        i = len(self.parent)
        self.parent[i] = i
        self.spaces[i] = _Space(locked=locked)
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        sa, sb = self.spaces.pop(b), self.spaces[a]
        sb.producers += sa.producers
        sb.consumers += sa.consumers
        sb.per_channel += sa.per_channel
        sb.locked |= sa.locked
        self.parent[b] = a
        return a

    def space(self, i: int) -> _Space:
        return self.spaces[self.find(i)]


class _Recorder(torch.fx.Interpreter):
    """Runs the traced model and keeps every node's output (for shapes and constant values)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out.detach() if isinstance(out, torch.Tensor) else out
        return out


def _build_graph(gm: torch.fx.GraphModule, values: dict[str, Any]) -> tuple[_Graph, dict[str, tuple[int, int]]]:
    """Channel spaces of every tensor node: node name -> (space, hw), hw > 1 after a flatten."""
    g = _Graph()
    where: dict[str, tuple[int, int]] = {}
    modules = dict(gm.named_modules())

    def tensor_args(n: torch.fx.Node) -> list[torch.fx.Node]:
        return [a for a in n.all_input_nodes if isinstance(values.get(a.name), torch.Tensor)]

    def lock_all(n: torch.fx.Node) -> None:
        for a in tensor_args(n):
            if a.name in where:
                g.space(where[a.name][0]).locked = True
        if isinstance(values.get(n.name), torch.Tensor):
            where[n.name] = (g.new(locked=True), 1)

    def pass_through(n: torch.fx.Node, src: torch.fx.Node) -> None:
        where[n.name] = where[src.name]

    for n in gm.graph.nodes:
        out = values.get(n.name)
        if n.op == "placeholder":
            where[n.name] = (g.new(locked=True), 1)
            continue
        if n.op == "output":
            for a in n.all_input_nodes:
                if a.name in where:
                    g.space(where[a.name][0]).locked = True
            continue
        if not isinstance(out, torch.Tensor):
            continue
        args = tensor_args(n)
        if any(a.name not in where for a in args) or not args:
            lock_all(n)
            continue
        first = args[0]
        src_space, src_hw = where[first.name]
        if n.op == "call_module":
            m = modules[n.target]
            if isinstance(m, (nn.Conv2d, nn.Linear)) and len(args) == 1:
                ok_input = (values[first.name].dim() == 4 and src_hw == 1) if isinstance(m, nn.Conv2d) \
                    else values[first.name].dim() == 2
                if not ok_input or (isinstance(m, nn.Conv2d) and m.groups > 1 and not _is_depthwise(m)):
                    lock_all(n)
                    continue
                g.space(src_space).consumers.append((n.target, first.name, src_hw))
                new = g.new()
                g.space(new).producers.append(n.target)
                where[n.name] = (new, 1)
                if _is_depthwise(m):
                    g.ties.append((src_space, new))
            elif isinstance(m, _PASS_MODULES) and len(args) == 1:
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    if src_hw != 1:
                        lock_all(n)
                        continue
                    g.space(src_space).per_channel.append(n.target)
                pass_through(n, first)
            elif isinstance(m, nn.Flatten) and m.start_dim == 1 and values[first.name].dim() == 4 and src_hw == 1:
                where[n.name] = (src_space, math.prod(values[first.name].shape[2:]))
            else:
                lock_all(n)
        elif n.op in ("call_function", "call_method"):
            target = n.target
            if target in (operator.add, torch.add, "add", operator.iadd) and len(args) == 2 \
                    and values[args[0].name].shape == values[args[1].name].shape:
                s2, hw2 = where[args[1].name]
                if hw2 != src_hw:
                    lock_all(n)
                    continue
                where[n.name] = (g.union(src_space, s2), src_hw)
            elif (target in _PASS_FUNCTIONS or target in _PASS_METHODS) and len(args) == 1:
                pass_through(n, first)
            elif target in (torch.flatten, "flatten", "view", "reshape") and len(args) == 1 \
                    and values[first.name].dim() == 4 and src_hw == 1 and out.dim() == 2 \
                    and out.shape[0] == values[first.name].shape[0]:
                where[n.name] = (src_space, math.prod(values[first.name].shape[2:]))
            else:
                lock_all(n)
        else:  # get_attr
            lock_all(n)
    return g, where


# =========================================================================== shrinking
@dataclass
class ShrinkReport:
    """What :func:`shrink` removed: per layer ``(channels before, channels after)`` of its output."""

    layers: dict[str, tuple[int, int]]
    params_before: int
    params_after: int

    def to_dict(self) -> dict:
        return {"layers": {k: list(v) for k, v in self.layers.items()}, "params_before": self.params_before,
                "params_after": self.params_after}


def _cols(j: int, hw: int) -> range:
    return range(j * hw, (j + 1) * hw)


def _removable(g: _Graph, root: int, n: int, modules: dict, values: dict, tied: set[str]) -> torch.Tensor:
    """Boolean ``(n,)``: channel ``j`` of space ``root`` may go, because nobody reads it, or because it
    carries a constant (its producers' weights for ``j`` are all zero) that every reader can fold."""
    sp = g.spaces[root]
    if sp.locked:
        return torch.zeros(n, dtype=torch.bool)
    readers = [c for c in sp.consumers if c[0] not in tied]
    unread = torch.ones(n, dtype=torch.bool)
    foldable = torch.ones(n, dtype=torch.bool)
    for name, node, hw in readers:
        m, v = modules[name], values[node]
        w = m.weight.detach()
        if _is_depthwise(m):
            zero = (w == 0).reshape(n, -1).all(1)
            can_fold = (v == 0).transpose(0, 1).reshape(n, -1).all(1)
        elif isinstance(m, nn.Linear):
            zero = (w == 0).reshape(w.shape[0], n, hw).all(2).all(0)
            can_fold = (v == v[:1]).reshape(v.shape[0], n, hw).all(2).all(0)
        else:
            zero = (w == 0).transpose(0, 1).reshape(n, -1).all(1)
            can_fold = (v == 0).transpose(0, 1).reshape(n, -1).all(1)
            if all(p == 0 for p in m.padding):  # no zero padding: a constant channel is exactly a bias
                can_fold |= (v == v[:1, :, :1, :1]).transpose(0, 1).reshape(n, -1).all(1)
        unread &= zero
        foldable &= zero | can_fold
    constant = torch.ones(n, dtype=torch.bool)
    for p in sp.producers:
        constant &= (modules[p].weight.detach() == 0).reshape(n, -1).all(1)
    return unread | (constant & foldable)


@torch.no_grad()
def shrink(model: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, ShrinkReport]:
    """A physically smaller copy of ``model`` with the same outputs (in eval mode).

    An output channel of a Conv2d (or neuron of a Linear) is removed when no later layer reads it
    (its input weights are all zero everywhere it is used), or when its own weights are all zero, so that
    it carries a constant (a bias, a BatchNorm shift) which is folded into the biases of the layers that
    read it. The matching BatchNorm entries, depthwise filters and input columns of the next layers go
    with it. Channels joined by a residual addition are removed only together, and only when that is
    exact; anything the tracer does not understand keeps all of its channels.

    Args:
        model: a network of Conv2d / BatchNorm / Linear layers, pooling, activations, flatten and
            residual additions (any torch.fx-traceable model; the compact CNNs, VGG and MobileNetV2 here).
        example_input: a batch shaped like the real inputs (values do not matter), e.g. ``torch.zeros(2, 3, 64, 64)``.

    Returns:
        ``(smaller copy in eval mode, ShrinkReport)``; the original model is not changed.
    """
    model = copy.deepcopy(model).cpu().eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
        raise SabrError(f"cannot shrink this model: torch.fx could not trace it ({exc}).") from exc
    rec = _Recorder(gm)
    rec.run(example_input.cpu())
    values = rec.values
    g, _ = _build_graph(gm, values)
    modules = dict(model.named_modules())
    # groups of spaces tied by depthwise convolutions remove the same channels
    group_of = {r: r for r in g.spaces}

    def gfind(r: int) -> int:
        while group_of[r] != r:
            r = group_of[r]
        return r

    tied_consumers: dict[int, set[str]] = {r: set() for r in g.spaces}
    for a, b in g.ties:
        ra, rb = g.find(a), g.find(b)
        for name, _, _ in g.spaces[ra].consumers:
            if _is_depthwise(modules[name]) and name in g.spaces[rb].producers:
                tied_consumers[ra].add(name)
        group_of[gfind(rb)] = gfind(ra)
    groups: dict[int, list[int]] = {}
    for r in g.spaces:
        groups.setdefault(gfind(r), []).append(r)

    keep: dict[int, list[int]] = {}  # space root -> kept channel indices
    for members in groups.values():
        sizes = {_space_channels(g.spaces[r], modules) for r in members} - {None}
        if len(sizes) != 1:
            continue
        n = sizes.pop()
        removable = torch.ones(n, dtype=torch.bool)
        for r in members:
            removable &= _removable(g, r, n, modules, values, tied_consumers[r])
        kept = [j for j in range(n) if not removable[j]]
        if not kept:
            kept = [0]
        if len(kept) < n:
            for r in members:
                keep[r] = kept

    layers, new_modules = _rebuild(g, keep, modules, values)
    before = sum(p.numel() for p in model.parameters())
    for name, new in new_modules.items():
        _set_module(model, name, new)
    after = sum(p.numel() for p in model.parameters())
    for name, (a, b) in layers.items():
        if a != b:
            log.debug("shrink: %s keeps %d of %d output channels (-%d)", name, b, a, a - b)
    return model.eval(), ShrinkReport(layers, before, after)


def _space_channels(sp: _Space, modules: dict) -> int | None:
    for p in sp.producers:
        m = modules[p]
        return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    for name in sp.per_channel:
        return modules[name].num_features
    return None


def _rebuild(g: _Graph, keep: dict[int, list[int]], modules: dict, values: dict) -> tuple[dict, dict[str, nn.Module]]:
    out_keep: dict[str, list[int]] = {}
    in_keep: dict[str, list[int]] = {}
    folds: dict[str, torch.Tensor] = {}
    bn_keep: dict[str, list[int]] = {}
    for root, sp in g.spaces.items():
        if root not in keep:
            continue
        kept = keep[root]
        for p in sp.producers:
            out_keep[p] = kept
        for name in sp.per_channel:
            bn_keep[name] = kept
        for name, node, hw in sp.consumers:
            m = modules[name]
            if _is_depthwise(m):
                continue
            n_in = m.in_channels if isinstance(m, nn.Conv2d) else m.in_features // hw
            removed = sorted(set(range(n_in)) - set(kept))
            in_keep[name] = [c for j in kept for c in _cols(j, hw)]
            delta = _fold(m, values[node], removed, hw)
            if delta is not None:
                folds[name] = folds.get(name, 0) + delta
    new: dict[str, nn.Module] = {}
    layers: dict[str, tuple[int, int]] = {}
    for name, m in modules.items():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and (name in out_keep or name in in_keep or name in folds):
            new[name] = _slice_layer(m, out_keep.get(name), in_keep.get(name), folds.get(name))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and name in bn_keep:
            new[name] = _slice_bn(m, bn_keep[name])
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            n_out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            layers[name] = (n_out, len(out_keep[name]) if name in out_keep else n_out)
    return layers, new


def _fold(m: nn.Module, x: torch.Tensor, removed: list[int], hw: int) -> torch.Tensor | None:
    """Bias change that replaces the removed (constant or unread) input channels of ``m``; None if zero."""
    if not removed:
        return None
    w = m.weight.detach()
    if isinstance(m, nn.Linear):
        cols = [c for j in removed for c in _cols(j, hw)]
        delta = w[:, cols] @ x[0, cols]
    else:
        # unread channels have zero weights; constant ones the same value everywhere (checked in _removable)
        delta = w[:, removed].sum(dim=(2, 3)) @ x[0, removed].reshape(len(removed), -1)[:, 0]
    return delta if bool((delta != 0).any()) else None


def _slice_layer(m: nn.Module, out_idx: list[int] | None, in_idx: list[int] | None,
                 fold: torch.Tensor | None) -> nn.Module:
    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    if fold is not None:
        b = fold.clone() if b is None else b + fold
    if isinstance(m, nn.Conv2d) and _is_depthwise(m):
        idx = out_idx if out_idx is not None else list(range(w.shape[0]))
        w = w[idx]
        b = b[idx] if b is not None else None
        n = len(idx)
        new = nn.Conv2d(n, n, m.kernel_size, m.stride, m.padding, m.dilation, groups=n, bias=b is not None,
                        padding_mode=m.padding_mode)
    else:
        if out_idx is not None:
            w = w[out_idx]
            b = b[out_idx] if b is not None else None
        if in_idx is not None:
            w = w[:, in_idx]
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation,
                            bias=b is not None, padding_mode=m.padding_mode)
        else:
            new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def _slice_bn(m: nn.Module, idx: list[int]) -> nn.Module:
    new = type(m)(len(idx), eps=m.eps, momentum=m.momentum, affine=m.affine,
                  track_running_stats=m.track_running_stats)
    sd = {k: (v[idx] if v.dim() == 1 else v) for k, v in m.state_dict().items()}
    new.load_state_dict(sd)
    return new


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _layer_specs(model: nn.Module) -> dict[str, dict]:
    """Constructor arguments of every Conv2d / Linear / BatchNorm, to rebuild a shrunk model without pickle."""
    specs = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            specs[name] = {"type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                           "groups": m.groups, "bias": m.bias is not None}
        elif isinstance(m, nn.Linear):
            specs[name] = {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                           "bias": m.bias is not None}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            specs[name] = {"type": type(m).__name__, "num_features": m.num_features}
    return specs


def _apply_specs(model: nn.Module, specs: dict[str, dict]) -> None:
    """Resize ``model``'s layers (built at full size) to the shapes in ``specs``."""
    modules = dict(model.named_modules())
    for name, s in specs.items():
        m = modules.get(name)
        if m is None:
            raise CheckpointError(f"the export names layer {name!r}, which this model does not have.")
        if s["type"] == "Conv2d":
            if (m.in_channels, m.out_channels, m.groups, m.bias is not None) == \
                    (s["in_channels"], s["out_channels"], s["groups"], s["bias"]):
                continue
            new = nn.Conv2d(s["in_channels"], s["out_channels"], m.kernel_size, m.stride, m.padding, m.dilation,
                            groups=s["groups"], bias=s["bias"], padding_mode=m.padding_mode)
        elif s["type"] == "Linear":
            if (m.in_features, m.out_features, m.bias is not None) == (s["in_features"], s["out_features"], s["bias"]):
                continue
            new = nn.Linear(s["in_features"], s["out_features"], bias=s["bias"])
        else:
            if m.num_features == s["num_features"]:
                continue
            new = type(m)(s["num_features"], eps=m.eps, momentum=m.momentum, affine=m.affine,
                          track_running_stats=m.track_running_stats)
        _set_module(model, name, new)


def save_shrunk(model: nn.Module, path: str | Path, metadata: dict, report: ShrinkReport | None = None) -> Path:
    """Write a model returned by :func:`shrink` (safetensors + JSON with every layer's new size)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    export = {"format": "shrunk", "layers": _layer_specs(model)}
    if report is not None:
        export["report"] = report.to_dict()
    return _save(state, path, _plain_meta(metadata) | {"export": export})


# =========================================================================== ONNX
def export_onnx(model: nn.Module, path: str | Path, metadata: dict, example_input: torch.Tensor,
                check_input: torch.Tensor | None = None, atol: float = 1e-4) -> tuple[Path, float]:
    """Export to ONNX (dynamic batch, input ``input``, output ``logits``) and check it with onnxruntime.

    Args:
        model: the network (pruned or shrunk).
        path: the ``.onnx`` file; ``metadata`` goes to the ``.json`` beside it.
        example_input: a batch shaped like real inputs (used for tracing).
        check_input: the batch compared between PyTorch and onnxruntime (default: ``example_input``).
            The input height and width are fixed to those of ``example_input`` (the batch is dynamic).
        atol: the largest accepted absolute difference of the logits.

    Returns:
        ``(path, max abs difference)``. Raises :class:`SabrError` when the difference exceeds ``atol``.
    """
    path = Path(path).with_suffix(".onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    exported = _onnx_friendly(model, example_input.cpu())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exported, (example_input.cpu(),), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    x = (check_input if check_input is not None else example_input).cpu()
    with torch.no_grad():
        expected = model(x)
    got = OnnxModel(path)(x)
    diff = float((got - expected).abs().max())
    if diff > atol:
        raise SabrError(f"the ONNX model differs from PyTorch by {diff:.2e} (> {atol:g}); export with opset 17 "
                        "or report the model that fails.")
    write_json(path.with_suffix(".json"), _plain_meta(metadata) | {"export": {"format": "onnx", "max_abs_diff": diff}})
    return path, diff


class _PoolAsMatmul(nn.Module):
    """Adaptive average pooling for one fixed input size as two matrix products (exportable to ONNX
    even when the output size does not divide the input size, e.g. VGG's 7x7 pool after a 2x2 map)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()

        def matrix(n_in: int, n_out: int) -> torch.Tensor:
            m = torch.zeros(n_out, n_in)
            for i in range(n_out):
                start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
                m[i, start:end] = 1.0 / (end - start)
            return m

        self.register_buffer("rows", matrix(in_hw[0], out_hw[0]))
        self.register_buffer("cols", matrix(in_hw[1], out_hw[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols.t()


def _onnx_friendly(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose AdaptiveAvgPool2d layers that ONNX cannot express are matrix products."""
    seen: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(
        name, (tuple(i[0].shape[2:]), tuple(o.shape[2:]))))
        for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    todo = {n: io for n, io in seen.items() if any(i % o for i, o in zip(*io))}
    if not todo:
        return model
    model = copy.deepcopy(model)
    for name, (in_hw, out_hw) in todo.items():
        _set_module(model, name, _PoolAsMatmul(in_hw, out_hw))
    return model


class OnnxModel:
    """An onnxruntime session that behaves like a model: ``OnnxModel(path)(x)`` -> logits tensor.

    ``x`` is a float32 tensor ``(N, C, H, W)``; the result is a CPU tensor ``(N, classes)``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)

    def eval(self) -> "OnnxModel":
        return self


# =========================================================================== one loader for everything
def load_model(path: str | Path, phase: str = "pruned", device: str | torch.device = "cpu") -> tuple[Any, dict]:
    """Load any sabr model: a run folder, a phase checkpoint, or a ``sparse`` / ``shrunk`` / ``onnx`` export.

    Args:
        path: a run folder (its ``phase`` checkpoint is loaded), or a ``.safetensors`` / ``.onnx`` file
            (or its ``.json``) written by ``sabr run`` or ``sabr export``.
        phase: for run folders, ``"base"``, ``"sabr"`` or ``"pruned"``.
        device: where to put a PyTorch model (ONNX models always run on the CPU).

    Returns:
        ``(model, metadata)``: an ``nn.Module`` in eval mode (an :class:`OnnxModel` for ``.onnx``,
        called the same way: tensor in, logits out); ``metadata`` holds ``classes``, ``model``,
        ``preprocess`` and ``transform`` (the :class:`~sabr.data.Preprocess` to call on a PIL image),
        plus ``export`` for exports.
    """
    path = Path(path)
    if path.is_dir():
        return load_run(path, phase, device)
    if path.suffix == ".json":
        meta = json.loads(path.read_text()) if path.is_file() else {}
        fmt = (meta.get("export") or {}).get("format")
        path = path.with_suffix(".onnx" if fmt == "onnx" else ".safetensors")
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist.")
        meta = read_metadata(path)
        model: Any = OnnxModel(path)
    else:
        path = path.with_suffix(".safetensors")
        meta = read_metadata(path)
        fmt = (meta.get("export") or {}).get("format")
        if fmt is None:
            return load_checkpoint(path, device)
        tensors = read_weights(path, meta.get("weights_sha256"))
        model = build_model(meta)
        if fmt == "sparse":
            state = dense_state_dict(tensors, meta["export"]["tensors"])
        elif fmt == "shrunk":
            _apply_specs(model, meta["export"]["layers"])
            state = tensors
        else:
            raise CheckpointError(f"{path} has export format {fmt!r}, which this sabr cannot load.")
        load_weights_into(model, state, source=str(path))
        model.to(device).eval()
    if "preprocess" in meta:
        meta["transform"] = Preprocess.from_dict(meta["preprocess"])
    return model, meta


# =========================================================================== sabr export
def example_input(meta: dict, batch: int = 2) -> torch.Tensor:
    """Zeros shaped like the model's input, from a checkpoint's metadata."""
    p = meta["preprocess"]
    return torch.zeros(batch, int(p["channels"]), int(p["image_size"]), int(p["image_size"]))


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, phase: str = "pruned",
               check_input: torch.Tensor | None = None) -> dict:
    """Export one phase of a run (default: ``pruned``) as ``sparse``, ``shrunk`` or ``onnx``.

    Args:
        run_dir: a folder written by ``sabr run``.
        fmt: one of :data:`FORMATS`.
        out: the output file (default: ``<run_dir>/export/<phase>-<fmt>.safetensors`` or ``.onnx``).
        phase: which checkpoint to export.
        check_input: a batch of real inputs to compare outputs on (default: zeros).

    Returns:
        a dict with ``path``, ``format``, ``bytes``, ``max_abs_diff`` (export vs. the dense model on
        ``check_input``) and, for ``shrunk``, ``layers`` (output channels before/after per layer).
    """
    if fmt not in FORMATS:
        raise SabrError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    model, meta = load_run(run_dir, phase)
    x = check_input if check_input is not None else example_input(meta)
    suffix = ".onnx" if fmt == "onnx" else ".safetensors"
    out = Path(out) if out else Path(run_dir) / "export" / f"{phase}-{fmt}{suffix}"
    result: dict = {"format": fmt}
    with torch.no_grad():
        reference = model(x)
    if fmt == "sparse":
        path = save_sparse(model, out, meta)
    elif fmt == "shrunk":
        small, rep = shrink(model, example_input(meta))
        path = save_shrunk(small, out, meta, rep)
        result["layers"] = rep.to_dict()["layers"]
        result["params_before"], result["params_after"] = rep.params_before, rep.params_after
    else:
        path, _ = export_onnx(model, out, meta, example_input(meta, 1), check_input=x)
    loaded, _ = load_model(path)
    with torch.no_grad():
        result["max_abs_diff"] = float((loaded(x) - reference).abs().max())
    result["path"] = str(path)
    result["bytes"] = path.stat().st_size
    log.debug("exported %s to %s (%d bytes, max abs diff %.2e)", fmt, path, result["bytes"], result["max_abs_diff"])
    return result
