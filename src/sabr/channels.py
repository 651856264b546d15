"""Channel groups: the units of structured SABR, and the rule that removes whole channels.

A *channel group* is a set of output channels that can only be removed together: the output channels of
every Conv2d / Linear writing one channel space (several when residual additions join their outputs),
and of the spaces a depthwise convolution ties to it (MobileNet's expand and depthwise layers). The
groups come from the same channel graph that :func:`sabr.export.shrink` uses. Pruning a channel sets all
of its parameters to zero (its weight rows, biases and BatchNorm scale and shift), so it carries exactly
zero and ``shrink`` removes it: the smaller model gives the same outputs. Spaces the tracer does not
understand, the input and the model's output are never grouped.

Channel ``j`` of a group is the row ``j`` of each of its weight tensors, concatenated (``d`` weights);
its size is its root mean square ``||row_j|| / sqrt(d)``, on the scale of single weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from .errors import ConfigError


STRUCTURED_FACTOR = 1.0
"""The pruning factor at which phase 2 of structured SABR counts a channel as removable: to track the prunable
sparsity (:data:`sabr.budget.TRACK_FACTOR_STRUCTURED`) and to choose the group to freeze. Channel sizes
spread far less than single weights, so at the unstructured rule's 0.2 no channel is removable until it
reaches zero (measured: docs/spec.md, structured mode)."""


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels removed together.

    Attributes:
        name: the group's name: its first weight tensor's module (e.g. ``"layer1.0.conv1"``).
        weights: the names of the weight tensors whose rows are the channels (``named_parameters()`` order).
        channels: the number of channels.
        extras: the channels' other parameters, one entry per channel: the producers' biases and the
            BatchNorm scales and shifts of the group's spaces (zeroed with a pruned channel, not penalised).
        readers: the weight tensors of the layers that read the channels (the next convolutions and Linear
            layers; not the depthwise convolutions of the group itself), each with the number of input columns
            one channel feeds (``H * W`` where a flatten feeds a Linear layer, else 1). ``shrink`` removes a
            pruned channel's columns there; :func:`channel_scale` counts them.
    """

    name: str
    weights: tuple[str, ...]
    channels: int
    extras: tuple[str, ...] = ()
    readers: tuple[tuple[str, int], ...] = ()

    @property
    def parameters(self) -> tuple[str, ...]:
        """Every parameter name of the group: ``weights`` then ``extras``."""
        return self.weights + self.extras

    def to_dict(self) -> dict:
        """JSON-ready ``{"name", "weights", "channels", "extras", "readers"}``."""
        return asdict(self) | {"weights": list(self.weights), "extras": list(self.extras),
                               "readers": [list(r) for r in self.readers]}


def channel_groups(model: nn.Module, example_input: torch.Tensor,
                   params: Iterable[str] | None = None) -> list[ChannelGroup]:
    """The channel groups of ``model`` (traced with :mod:`torch.fx` on a CPU copy, in eval mode).

    Args:
        model: any torch.fx-traceable network of Conv2d / Linear / BatchNorm layers, pooling, activations,
            flatten and residual additions (the built-ins, VGG, ResNet, MobileNetV2 ...).
        example_input: a batch shaped like the real inputs, e.g. ``torch.zeros(1, 3, 32, 32)``.
        params: keep only the groups whose weights are all among these names (default: every group).

    Returns:
        One :class:`ChannelGroup` per removable group of channels, in ``named_parameters()`` order of their
        first weights.

    Raises:
        SabrError: torch.fx cannot trace the model.
    """
    from .export.graph import tied_groups, trace_channels

    traced = copy.deepcopy(model).cpu().eval()
    g, _ = trace_channels(traced, example_input.detach().cpu())
    modules = dict(traced.named_modules())
    order = {n: i for i, (n, _) in enumerate(traced.named_parameters())}
    allowed = None if params is None else set(params)
    groups = []
    for tied in tied_groups(g, modules):
        spaces = [g.spaces[r] for r in tied.members]
        weights = sorted((f"{p}.weight" for sp in spaces for p in sp.producers), key=order.__getitem__)
        if tied.locked or tied.channels is None or not weights:
            continue
        if allowed is not None and not set(weights) <= allowed:
            continue
        extras = [f"{m}.{k}" for sp in spaces for m in sp.producers + sp.per_channel for k in ("bias", "weight")
                  if f"{m}.{k}" in order and f"{m}.{k}" not in weights]
        readers = {(f"{m}.weight", hw) for r in tied.members for m, _, hw in g.spaces[r].consumers
                   if m not in tied.tied_consumers[r]}
        groups.append(ChannelGroup(weights[0].rpartition(".")[0], tuple(weights), tied.channels,
                                   tuple(sorted(set(extras), key=order.__getitem__)),
                                   tuple(sorted(readers, key=lambda r: order[r[0]]))))
    return sorted(groups, key=lambda grp: order[grp.weights[0]])


def channel_rows(named: dict[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """``(channels, d)``: row ``j`` holds every weight of channel ``j`` of ``group`` (``named``: name -> tensor)."""
    return torch.cat([named[w].reshape(group.channels, -1) for w in group.weights], dim=1)


def channel_rms(named: dict[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """``(channels,)``: the root mean square of each channel's weights (detached, float64)."""
    rows = channel_rows(named, group).detach().double()
    return rows.norm(dim=1) / math.sqrt(rows.shape[1])


def channel_columns(named: dict[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """``(channels, e)``: row ``j`` holds every weight that reads channel ``j`` of ``group`` (its input columns
    in each of the group's ``readers``; ``e`` is 0 when nothing reads it)."""
    cols = [named[w].reshape(named[w].shape[0], group.channels, -1).transpose(0, 1).reshape(group.channels, -1)
            for w, _ in group.readers if w in named]
    return torch.cat(cols, dim=1) if cols else named[group.weights[0]].new_zeros(group.channels, 0)


def channel_scale(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """``(channels,)``: how much each channel of ``group`` carries on (detached, float64), by which the
    structured fine-tune ranks channels (:func:`sabr.prune_channel_share`).

    With BatchNorm layers in the group it is the sum of their ``|gamma|``: a BatchNorm divides out the size of
    the weights before it, so their root mean square says little about its output. Without one it is the L2
    norm of every weight the channel touches: its rows in the layers that write it and its columns in the
    layers that read it, since a channel that is written strongly but read weakly carries little. Both
    rankings were chosen by measurement (``benchmarks/channel_ranking.py``; figures in docs/spec.md,
    structured mode).
    """
    modules, named = dict(model.named_modules()), dict(model.named_parameters())
    scales = [named[e].detach().double().abs() for e in group.extras if e.endswith(".weight")
              and isinstance(modules.get(e.rpartition(".")[0]), nn.modules.batchnorm._BatchNorm)]
    if scales:
        return torch.stack(scales).sum(0)
    touched = torch.cat([channel_rows(named, group), channel_columns(named, group)], 1)
    return touched.detach().double().norm(dim=1)


def group_lasso(named: dict[str, torch.Tensor], group: ChannelGroup) -> torch.Tensor:
    """The structured SABR term of one group, ``sqrt(d) * sum_j ||row_j||``, with gradients.

    ``sqrt(d)`` keeps it on the scale of ``sum(|w|)`` (a row of ``d`` weights of size ``a`` gives ``a * d``
    either way), so ``teta1`` means the same in both modes.
    """
    rows = channel_rows(named, group)
    return rows.norm(dim=1).sum() * math.sqrt(rows.shape[1])


def group_parameters(groups: Sequence[ChannelGroup]) -> list[str]:
    """Every parameter name of ``groups`` (weights and extras), e.g. to keep pruned channels at zero."""
    return [n for g in groups for n in g.parameters]


def groups_by_name(groups: Sequence[ChannelGroup]) -> dict[str, ChannelGroup]:
    """``name -> group``; raises :class:`~sabr.errors.ConfigError` on a repeated name."""
    out = {g.name: g for g in groups}
    if len(out) != len(groups):
        repeated = sorted({g.name for g in groups if sum(h.name == g.name for h in groups) > 1})
        raise ConfigError(f"channel group names must be unique, but {repeated[:3]} repeat; pass each group once.")
    return out
