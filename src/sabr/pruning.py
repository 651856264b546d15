"""Phase 3: post-training pruning to exact zeros.

For each regularised tensor ``w`` (spec, phase 3)::

    s = std(w)
    kept = w[|w| >= gamma * s]          # all of w if that is empty
    threshold = teta1 * std(kept)
    w[|w| < threshold] = 0

A plain mode with one fixed ``epsilon`` threshold for every tensor exists too.

Structured mode (``groups=``, :mod:`sabr.channels`) applies the same rule to the channels of each group:
``s`` is the std of the channels' root mean squares, and a channel below the threshold has every weight
of its row, its biases and its BatchNorm scale and shift set to zero (each group keeps a multiple of
:data:`CHANNEL_MULTIPLE` channels, its largest, or all of them): the channel then carries exactly zero and
:func:`sabr.shrink` removes it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .channels import ChannelGroup, channel_rms, channel_rows, channel_scale
from .errors import ConfigError
from .fields import check_number
from .regularizer import population_std, resolve_params


@dataclass
class LayerPruning:
    """What pruning did to one tensor. ``sparsity`` is zeros / elements, a fraction."""

    name: str
    threshold: float
    total: int
    nonzero: int
    sparsity: float


def prune_threshold(weight: torch.Tensor, teta1: float = 0.2, gamma: float = 0.1) -> float:
    """The SABR pruning threshold of one tensor: ``teta1 * std(w[|w| >= gamma * std(w)])``.

    ``std`` is the population standard deviation (numpy's ``np.std``, as the seed's code), taken in
    float64. A tensor with a single element has threshold 0.
    """
    w = weight.detach().flatten()
    if w.numel() < 2:
        return 0.0
    kept = w[w.abs() >= gamma * population_std(w)]
    if kept.numel() == 0:
        kept = w
    return teta1 * population_std(kept)


@torch.no_grad()
def prune(
    model: nn.Module,
    teta1: float = 0.2,
    gamma: float = 0.1,
    epsilon: float | None = None,
    params: Iterable[str] | None = None,
    groups: Sequence[ChannelGroup] | None = None,
) -> list[LayerPruning]:
    """Set every weight below its layer's threshold to exactly 0, in place.

    Args:
        model: the trained (usually SABR-regularised) network.
        teta1: threshold factor on the std of the kept weights (default 0.2).
        gamma: weights with ``|w| < gamma * std(w)`` are left out of that std (default 0.1).
        epsilon: if given, a fixed threshold used for every tensor instead (plain mode).
        params: names of the tensors to prune; default: weights of every Conv and Linear module.
        groups: structured mode: remove whole channels of these groups instead (``params`` is ignored;
            ``epsilon`` is then a fixed threshold on the channels' root mean square).

    Returns:
        One :class:`LayerPruning` per tensor, in ``named_parameters()`` order (in structured mode, per
        tensor of each group in turn, with its group's threshold).
    """
    _check_factors(teta1, gamma, epsilon)
    if groups is not None:
        return _prune_channels(model, groups, teta1, gamma, epsilon)
    stats = []
    for name, p in resolve_params(model, params).items():
        threshold = float(epsilon) if epsilon is not None else prune_threshold(p, teta1, gamma)
        p.masked_fill_(p.abs() < threshold, 0.0)
        total = p.numel()
        nonzero = int(torch.count_nonzero(p))
        stats.append(LayerPruning(name, threshold, total, nonzero, 1.0 - nonzero / total))
    return stats


def _check_factors(teta1: float, gamma: float, epsilon: float | None = None) -> None:
    """Pruning factors are finite numbers >= 0 (NaN would prune nothing, silently)."""
    for name, value in (("teta1", teta1), ("gamma", gamma), ("epsilon", epsilon)):
        if value is not None:
            check_number(name, value, min=0)


CHANNEL_MULTIPLE = 8
"""Structured pruning keeps a multiple of this many channels per group (the largest of those the rule would
remove are kept back), or all of them. Dense kernels run much slower on odd widths, enough that a shrunk
model with odd widths can run slower than the full one (measured: docs/spec.md, structured mode)."""


def _removed_channels(named: dict, group: ChannelGroup, teta1: float, gamma: float,
                      epsilon: float | None) -> tuple[torch.Tensor, float]:
    """``(boolean mask of the channels the rule removes, threshold)`` for one group: the channels below the
    threshold, less the largest of them so that a multiple of :data:`CHANNEL_MULTIPLE` channels (at least
    one multiple, at most all) stays."""
    rms = channel_rms(named, group)
    threshold = float(epsilon) if epsilon is not None else prune_threshold(rms, teta1, gamma)
    drop = rms < threshold
    kept = group.channels - int(drop.sum())
    keep = min(group.channels, max(1, math.ceil(kept / CHANNEL_MULTIPLE)) * CHANNEL_MULTIPLE)
    if keep > kept:
        order = torch.argsort(rms, descending=True)  # the largest first
        drop[order[:keep]] = False
    return drop, threshold


def removed_channels(named: dict, group: ChannelGroup, teta1: float = 0.2, gamma: float = 0.1) -> torch.Tensor:
    """Boolean ``(channels,)``: the channels of ``group`` that :func:`prune` at ``teta1`` would remove
    (``named``: parameter name -> tensor); nothing is changed."""
    return _removed_channels(named, group, teta1, gamma, None)[0]


def _prune_channels(model: nn.Module, groups: Sequence[ChannelGroup], teta1: float, gamma: float,
                    epsilon: float | None) -> list[LayerPruning]:
    named = dict(model.named_parameters())
    stats = []
    for group in groups:
        stats += _zero_channels(named, group, *_removed_channels(named, group, teta1, gamma, epsilon))
    return stats


def _zero_channels(named: dict, group: ChannelGroup, drop: torch.Tensor, threshold: float) -> list[LayerPruning]:
    """Zero the channels ``drop`` (a boolean mask or indices) of ``group``; its weight tensors' figures."""
    for name in group.parameters:
        named[name][drop.to(named[name].device)] = 0.0
    stats = []
    for name in group.weights:
        nonzero = int(torch.count_nonzero(named[name]))
        stats.append(LayerPruning(name, threshold, named[name].numel(), nonzero, 1.0 - nonzero / named[name].numel()))
    return stats


@torch.no_grad()
def prune_channel_share(model: nn.Module, groups: Sequence[ChannelGroup], share: float,
                        rank: Callable[[nn.Module, ChannelGroup], torch.Tensor] = channel_scale) -> list[LayerPruning]:
    """Remove the smallest channels of every group in place, by ``rank(model, group)`` (default
    :func:`sabr.channels.channel_scale`: the BatchNorm scales where the group has any, else the norm of the
    weights that write and read each channel): ``share`` of each group rounded down to a multiple of
    :data:`CHANNEL_MULTIPLE`, channels already zero counted first whatever their rank.

    The structured fine-tune's budget ramp steps through shares (:data:`sabr.budget.CHANNEL_SHARES`): where
    the channels of a group are near-uniform in size (resnet18's early layers after phase 2), no factor of the
    std rule removes any, while a rank removes the smallest whatever their spread. Returns one
    :class:`LayerPruning` per weight tensor of each group, as :func:`prune` does (the threshold is the
    largest rank among the channels it removed that were not zero already, 0 when there are none).
    """
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"a channel share must be in [0, 1) (got {share}).")
    named = dict(model.named_parameters())
    stats = []
    for group in groups:
        scale = rank(model, group)
        dead = ~_live_channels(named, group).to(scale.device)
        order = torch.argsort(scale.masked_fill(dead, float("-inf")), stable=True)  # zero channels first
        drop = order[:int(share * group.channels) // CHANNEL_MULTIPLE * CHANNEL_MULTIPLE]
        live = drop[~dead[drop]]
        stats += _zero_channels(named, group, drop, float(scale[live].max()) if len(live) else 0.0)
    return stats


@torch.no_grad()
def revive_channels(model: nn.Module, reference: nn.Module, groups: Sequence[ChannelGroup], share: float,
                    rank: Callable[[nn.Module, ChannelGroup], torch.Tensor] = channel_scale) -> list[LayerPruning]:
    """Give ``model`` back, in place, the channels that :func:`prune_channel_share` at ``share`` keeps in
    ``reference`` but ``model`` has zeroed, with ``reference``'s values (their weights, biases and BatchNorm
    affine parameters; BatchNorm statistics are the caller's to re-estimate).

    The structured fine-tune's downward ramp steps from a share to a smaller one this way: ``model`` was
    pruned from ``reference`` at a larger share by the same rank, so the channels it keeps are a subset of
    those the smaller share keeps, and the trained ones keep their training. Returns
    :func:`prune_channel_share`'s figures for ``reference`` at ``share`` (the zero pattern ``model`` now has).
    """
    lower = copy.deepcopy(reference)
    stats = prune_channel_share(lower, groups, share, rank)
    named, source = dict(model.named_parameters()), dict(lower.named_parameters())
    for group in groups:
        back = ~_live_channels(named, group) & _live_channels(source, group)
        for name in group.parameters:
            rows = back.to(named[name].device)
            named[name][rows] = source[name][rows]
    return stats


def _live_channels(named: dict, group: ChannelGroup) -> torch.Tensor:
    """``(channels,)`` booleans: which channels of ``group`` have a non-zero weight."""
    return channel_rows(named, group).detach().ne(0).any(1)


@torch.no_grad()
def prunable_sparsity(model: nn.Module, teta1: float = 0.2, gamma: float = 0.1,
                      params: Iterable[str] | None = None, groups: Sequence[ChannelGroup] | None = None) -> float:
    """The overall sparsity :func:`prune` with these factors would give, without changing the model.

    A cheap figure of merit (thresholds and counts, no forward pass) that phase 2 tracks every epoch. In
    structured mode (``groups``) it counts the weights of the channels the rule would remove.
    """
    _check_factors(teta1, gamma)
    zeros = total = 0
    if groups is not None:
        named = dict(model.named_parameters())
        for group in groups:
            drop, _ = _removed_channels(named, group, teta1, gamma, None)
            d = sum(named[w][0].numel() for w in group.weights)
            zeros, total = zeros + int(drop.sum()) * d, total + group.channels * d
        return zeros / max(total, 1)
    for p in resolve_params(model, params).values():
        zeros += int((p.abs() < prune_threshold(p, teta1, gamma)).sum())
        total += p.numel()
    return zeros / max(total, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running mean and variance after pruning; returns how many layers.

    Pruning shifts every layer's output statistics, so the running estimates phase 2 left no longer
    match and accuracy drops for a reason that has nothing to do with the zeros. The statistics are
    reset and re-averaged (cumulative average) over ``batches`` (normalised model inputs), the norm
    layers in train mode and everything else (dropout) in eval mode, with no weight update; the model's
    modes and the momenta are restored. Give every process the
    same batches in the same order and the result is identical everywhere.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in norms:
        m.train()
    for x in batches:
        model(x)
    for m, mode in modes.items():
        m.training = mode
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return len(norms)


@torch.no_grad()
def zero_masks(model: nn.Module, params: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (``True`` where the weight is non-zero) of the regularised tensors, by name.

    Take them right after :func:`prune` and re-apply them with :func:`apply_masks` after every
    optimizer step to fine-tune a pruned model without losing its zeros.
    """
    return {name: p.detach() != 0 for name, p in resolve_params(model, params).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Set every weight whose mask is ``False`` to exactly 0, in place (masks from :func:`zero_masks`)."""
    params = resolve_params(model, list(masks))
    for name, mask in masks.items():
        params[name].mul_(mask)
