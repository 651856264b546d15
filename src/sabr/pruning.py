"""Phase 3: post-training pruning to exact zeros.

For each regularised tensor ``w`` (spec, phase 3)::

    s = std(w)
    kept = w[|w| >= gamma * s]          # all of w if that is empty
    threshold = teta1 * std(kept)
    w[|w| < threshold] = 0

A plain mode with one fixed ``epsilon`` threshold for every tensor exists too.

The rules of each kind of unit live in :mod:`sabr.units`; these functions are their entry points.
Structured mode (``groups=``, :mod:`sabr.channels`) applies the same rule to the channels of each group:
``s`` is the std of the channels' root mean squares, and a channel below the threshold has every weight
of its row, its biases and its BatchNorm scale and shift set to zero (each group keeps a multiple of
:data:`CHANNEL_MULTIPLE` channels, its largest, or all of them): the channel then carries exactly zero and
:func:`sabr.shrink` removes it.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .channels import ChannelGroup, channel_scale
from .units import (CHANNEL_MULTIPLE, ChannelGroupUnits, LayerPruning, Units, check_factors, make_units,
                    prune_threshold, removed_channels)
from .weights import resolve_params

__all__ = ["CHANNEL_MULTIPLE", "LayerPruning", "apply_masks", "prunable_sparsity", "prune", "prune_channel_share",
           "prune_threshold", "recalibrate_batchnorm", "removed_channels", "revive_channels", "zero_masks"]


def prune(
    model: nn.Module,
    teta1: float = 0.2,
    gamma: float = 0.1,
    epsilon: float | None = None,
    params: Iterable[str] | None = None,
    groups: Sequence[ChannelGroup] | None = None,
    *,
    units: Units | None = None,
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
        units: what to prune, in place of ``params`` / ``groups`` (:mod:`sabr.units`).

    Returns:
        One :class:`LayerPruning` per tensor, in ``named_parameters()`` order (in structured mode, per
        tensor of each group in turn, with its group's threshold).
    """
    return make_units(model, params, groups, units).prune(model, teta1, gamma, epsilon)


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
    return ChannelGroupUnits(groups).prune_share(model, share, rank)


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
    return ChannelGroupUnits(groups).revive(model, reference, share, rank)


def prunable_sparsity(model: nn.Module, teta1: float = 0.2, gamma: float = 0.1,
                      params: Iterable[str] | None = None, groups: Sequence[ChannelGroup] | None = None, *,
                      units: Units | None = None) -> float:
    """The overall sparsity :func:`prune` with these factors would give, without changing the model.

    A cheap figure of merit (thresholds and counts, no forward pass) that phase 2 tracks every epoch. In
    structured mode (``groups``) it counts the weights of the channels the rule would remove. ``units``: in
    place of ``params`` / ``groups`` (:mod:`sabr.units`).
    """
    check_factors(teta1, gamma)
    return make_units(model, params, groups, units).prunable_sparsity(model, teta1, gamma)


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
