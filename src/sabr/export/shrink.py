"""The ``shrunk`` export format: a physically smaller dense model with the same outputs.

Output channels (or neurons) that no consumer uses, or that carry only a constant, are removed together
with the matching inputs of the next layers; constants are folded into the next layer's bias. Which
channels move together comes from the channel graph (:mod:`sabr.export.graph`): BatchNorm, depthwise
convolutions, residual additions and the flatten before a Linear are respected.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ._files import plain_meta, save_export
from .graph import ChannelGraph, Space, is_depthwise, trace_channels, tied_groups

log = logging.getLogger(__name__)


@dataclass
class ShrinkReport:
    """What :func:`shrink` removed: per layer ``(channels before, channels after)`` of its output."""

    layers: dict[str, tuple[int, int]]
    params_before: int
    params_after: int

    def to_dict(self) -> dict:
        """JSON-ready: ``{"layers": {name: [before, after]}, "params_before", "params_after"}``."""
        return {"layers": {k: list(v) for k, v in self.layers.items()}, "params_before": self.params_before,
                "params_after": self.params_after}


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
    g, values = trace_channels(model, example_input)
    modules = dict(model.named_modules())
    keep = _kept_channels(g, modules, values)
    layers, new_modules = _rebuild(g, keep, modules, values)
    before = sum(p.numel() for p in model.parameters())
    for name, new in new_modules.items():
        model.set_submodule(name, new)
    after = sum(p.numel() for p in model.parameters())
    for name, (a, b) in layers.items():
        if a != b:
            log.debug("shrink: %s keeps %d of %d output channels (-%d)", name, b, a, a - b)
    return model.eval(), ShrinkReport(layers, before, after)


def _kept_channels(g: ChannelGraph, modules: dict, values: dict) -> dict[int, list[int]]:
    """Space root -> the channel indices it keeps, for the spaces that lose any.

    Spaces tied by depthwise convolutions form one group (:func:`~sabr.export.graph.tied_groups`) and
    remove the same channels: a channel goes only when every space of its group can lose it (at least one
    channel always stays).
    """
    keep: dict[int, list[int]] = {}
    for group in tied_groups(g, modules):
        if group.channels is None:
            continue
        n = group.channels
        removable = torch.ones(n, dtype=torch.bool)
        for r in group.members:
            removable &= _removable(g.spaces[r], n, modules, values, group.tied_consumers[r])
        kept = [j for j in range(n) if not removable[j]] or [0]
        if len(kept) < n:
            for r in group.members:
                keep[r] = kept
    return keep


def _cols(j: int, hw: int) -> range:
    """The input features of channel ``j`` after a flatten of ``hw`` positions per channel."""
    return range(j * hw, (j + 1) * hw)


def _removable(sp: Space, n: int, modules: dict, values: dict, tied: set[str]) -> torch.Tensor:
    """Boolean ``(n,)``: channel ``j`` of space ``sp`` may go, because nobody reads it, or because it
    carries a constant (its producers' weights for ``j`` are all zero) that every reader can fold."""
    if sp.locked:
        return torch.zeros(n, dtype=torch.bool)
    readers = [c for c in sp.consumers if c[0] not in tied]
    unread = torch.ones(n, dtype=torch.bool)
    foldable = torch.ones(n, dtype=torch.bool)
    for name, node, hw in readers:
        m, v = modules[name], values[node]
        w = m.weight.detach()
        if is_depthwise(m):
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


def _rebuild(g: ChannelGraph, keep: dict[int, list[int]], modules: dict,
             values: dict) -> tuple[dict[str, tuple[int, int]], dict[str, nn.Module]]:
    """``(per layer (outputs before, after), the new modules by name)`` for the channels in ``keep``."""
    out_keep: dict[str, list[int]] = {}
    in_keep: dict[str, list[int]] = {}
    folds: dict[str, Any] = {}
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
            if is_depthwise(m):
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
    """A new Conv2d / Linear keeping outputs ``out_idx`` and inputs ``in_idx`` (None: all), bias + ``fold``."""
    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    if fold is not None:
        b = fold.clone() if b is None else b + fold
    if isinstance(m, nn.Conv2d) and is_depthwise(m):
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
    """A new BatchNorm keeping the channels ``idx``."""
    new = type(m)(len(idx), eps=m.eps, momentum=m.momentum, affine=m.affine,
                  track_running_stats=m.track_running_stats)
    sd = {k: (v[idx] if v.dim() == 1 else v) for k, v in m.state_dict().items()}
    new.load_state_dict(sd)
    return new


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


def apply_layer_specs(model: nn.Module, specs: dict[str, dict]) -> None:
    """Resize ``model``'s layers (built at full size) to the shapes a shrunk export recorded in ``specs``."""
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
        model.set_submodule(name, new)


def save_shrunk(model: nn.Module, path: str | Path, metadata: dict, report: ShrinkReport | None = None) -> Path:
    """Write a model returned by :func:`shrink` (safetensors + JSON with every layer's new size).

    Args:
        model: the shrunk model.
        path: the weights file (``.safetensors``); ``metadata`` (as for :func:`~sabr.save_checkpoint`)
            and the layer sizes go to the ``.json`` beside it.
        report: :func:`shrink`'s report, stored with the export when given.

    Returns the ``.safetensors`` path; :func:`~sabr.export.load_model` reads it back.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    export = {"format": "shrunk", "layers": _layer_specs(model)}
    if report is not None:
        export["report"] = report.to_dict()
    return save_export(state, path, plain_meta(metadata) | {"export": export})
