"""The unit kinds: what SABR regularises, pruning removes and the budget scores, as one argument.

A :class:`Units` is a mapping ``unit name -> the names of its weight tensors`` that carries the rules of its kind:

* :class:`TensorUnits` (the default): every regularised tensor is a unit; its term is ``sum(|w|)``, pruning
  zeroes single weights below ``teta1 * std`` of the tensor's kept weights (:func:`prune_threshold`), and the
  tensor with the fewest weights ``|w| >= zero_eps`` freezes first;
* :class:`ChannelGroupUnits` (``--structured``): every channel group (:mod:`sabr.channels`) is a unit; its term
  is the group lasso, pruning removes whole channels below the same threshold taken over the channels' root
  mean squares (keeping a multiple of :data:`CHANNEL_MULTIPLE`), and the group with the largest share of
  removable channels freezes first (none before one has such a channel).

Units name tensors, not parameters, so the same units act on a model and on its copies. A further kind
(attention heads, 2:4 blocks) is one more subclass; :class:`sabr.SABR`, :func:`sabr.prune`,
:func:`sabr.pruning.prunable_sparsity` and :mod:`sabr.budget` take any.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .channels import (STRUCTURED_FACTOR, ChannelGroup, channel_rms, channel_rows, channel_scale, group_lasso,
                       group_parameters, groups_by_name)
from .errors import ConfigError
from .fields import check_number
from .weights import population_std, resolve_params

CHANNEL_MULTIPLE = 8
"""Structured pruning keeps a multiple of this many channels per group (the largest of those the rule would
remove are kept back), or all of them. Dense kernels run much slower on odd widths, enough that a shrunk
model with odd widths can run slower than the full one (measured: docs/spec.md, structured mode)."""


@dataclass
class LayerPruning:
    """What pruning did to one tensor. ``sparsity`` is zeros / elements, a fraction."""

    name: str
    threshold: float
    total: int
    nonzero: int
    sparsity: float

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor, threshold: float) -> "LayerPruning":
        """The figures of ``tensor`` as it is now, pruned at ``threshold``."""
        nonzero = int(torch.count_nonzero(tensor))
        return cls(name, threshold, tensor.numel(), nonzero, 1.0 - nonzero / tensor.numel())


def check_factors(teta1: float, gamma: float, epsilon: float | None = None) -> None:
    """Pruning factors are finite numbers >= 0 (NaN would prune nothing, silently); :class:`ConfigError` else."""
    for name, value in (("teta1", teta1), ("gamma", gamma), ("epsilon", epsilon)):
        if value is not None:
            check_number(name, value, min=0)


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


class Units(Mapping, ABC):
    """The units one kind of SABR acts on: ``unit name -> its weight tensor names``, in order, and the rules.

    ``members``: unit name -> its tensor names, in order. ``named`` below is ``parameter name -> tensor`` (e.g.
    ``dict(model.named_parameters())``); ``model`` is any model with the units' tensors (the one they were found
    on, or a copy).
    """

    kind: str = "unit"
    """What one unit is, in words (for messages)."""

    def __init__(self, members: Mapping[str, tuple[str, ...]]) -> None:
        self._members = dict(members)

    def __getitem__(self, unit: str) -> tuple[str, ...]:
        return self._members[unit]

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    @property
    @abstractmethod
    def parameters(self) -> tuple[str, ...]:
        """Every parameter name pruning may set to zero (a fine-tune keeps their zeros)."""

    @abstractmethod
    def norm(self, named: dict[str, torch.Tensor], unit: str) -> torch.Tensor:
        """The unit's regularisation term (before its lambda), with gradients."""

    @abstractmethod
    def freeze_score(self, named: dict[str, torch.Tensor], unit: str, zero_eps: float) -> float | None:
        """How ready the unit is to freeze: SABR freezes the highest score (the first of equal ones); ``None``:
        not ready at all."""

    @torch.no_grad()
    def prune(self, model: nn.Module, teta1: float = 0.2, gamma: float = 0.1,
              epsilon: float | None = None) -> list[LayerPruning]:
        """Set what falls below each unit's threshold to exactly 0 in ``model``, in place (``epsilon``: one fixed
        threshold instead); one :class:`LayerPruning` per weight tensor, unit by unit."""
        check_factors(teta1, gamma, epsilon)
        return self._prune(model, teta1, gamma, epsilon)

    @abstractmethod
    def _prune(self, model: nn.Module, teta1: float, gamma: float, epsilon: float | None) -> list[LayerPruning]:
        """:meth:`prune`'s work once its factors are checked (under ``torch.no_grad``): what a kind implements."""

    @abstractmethod
    def prunable_sparsity(self, model: nn.Module, teta1: float = 0.2, gamma: float = 0.1) -> float:
        """The share of the units' weights :meth:`prune` at these factors would zero; ``model`` is unchanged."""

    def to_json(self) -> list[dict] | None:
        """What the unit names do not say about the units, JSON-ready (:meth:`sabr.SABR.state_dict`'s
        ``"groups"``); ``None`` when they say it all."""
        return None


class TensorUnits(Units):
    """Every regularised tensor is a unit (SABR as the spec states it). ``names``: the tensors' names;
    :meth:`of` resolves them against a model."""

    kind = "tensor"

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        super().__init__({n: (n,) for n in self.names})

    @classmethod
    def of(cls, model: nn.Module | None, params: Iterable[str] | None = None) -> "TensorUnits":
        """The tensors ``params`` of ``model`` in ``named_parameters()`` order (default: every Conv and Linear
        weight, :func:`sabr.weights.default_param_names`); raises :class:`~sabr.errors.ConfigError` on an
        unknown name or an empty selection. Without a model: ``params`` as given, checked where pruned."""
        return cls(resolve_params(model, params) if model is not None else params)

    @property
    def parameters(self) -> tuple[str, ...]:
        return self.names

    def norm(self, named: dict[str, torch.Tensor], unit: str) -> torch.Tensor:
        return named[unit].abs().sum()

    def freeze_score(self, named: dict[str, torch.Tensor], unit: str, zero_eps: float) -> float:
        return -float(int((named[unit].detach().abs() >= zero_eps).sum()))  # the fewest live weights first

    def _prune(self, model: nn.Module, teta1: float, gamma: float, epsilon: float | None) -> list[LayerPruning]:
        stats = []
        for name, p in resolve_params(model, self.names).items():
            threshold = float(epsilon) if epsilon is not None else prune_threshold(p, teta1, gamma)
            p.masked_fill_(p.abs() < threshold, 0.0)
            stats.append(LayerPruning.of(name, p, threshold))
        return stats

    @torch.no_grad()
    def prunable_sparsity(self, model: nn.Module, teta1: float = 0.2, gamma: float = 0.1) -> float:
        zeros = total = 0
        for p in resolve_params(model, self.names).values():
            zeros += int((p.abs() < prune_threshold(p, teta1, gamma)).sum())
            total += p.numel()
        return zeros / max(total, 1)


class ChannelGroupUnits(Units):
    """Every channel group is a unit (structured SABR): ``groups`` from :func:`sabr.channel_groups`, with unique
    names. Attributes: ``groups``, name -> :class:`~sabr.channels.ChannelGroup`, in the given order."""

    kind = "channel group"

    def __init__(self, groups: Sequence[ChannelGroup]) -> None:
        self.groups = groups_by_name(groups)
        super().__init__({name: g.weights for name, g in self.groups.items()})

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(group_parameters(list(self.groups.values())))

    def norm(self, named: dict[str, torch.Tensor], unit: str) -> torch.Tensor:
        return group_lasso(named, self.groups[unit])

    def freeze_score(self, named: dict[str, torch.Tensor], unit: str, zero_eps: float) -> float | None:
        share = float(removed_channels(named, self.groups[unit], STRUCTURED_FACTOR).float().mean())
        return share if share > 0 else None  # no removable channel yet: freezing would keep them all

    def _prune(self, model: nn.Module, teta1: float, gamma: float, epsilon: float | None) -> list[LayerPruning]:
        named = dict(model.named_parameters())
        stats = []
        for group in self.groups.values():
            stats += _zero_channels(named, group, *_removed_channels(named, group, teta1, gamma, epsilon))
        return stats

    @torch.no_grad()
    def prunable_sparsity(self, model: nn.Module, teta1: float = 0.2, gamma: float = 0.1) -> float:
        zeros = total = 0
        named = dict(model.named_parameters())
        for group in self.groups.values():
            drop, _ = _removed_channels(named, group, teta1, gamma, None)
            d = sum(named[w][0].numel() for w in group.weights)
            zeros, total = zeros + int(drop.sum()) * d, total + group.channels * d
        return zeros / max(total, 1)

    @torch.no_grad()
    def prune_share(self, model: nn.Module, share: float,
                    rank: Callable[[nn.Module, ChannelGroup], torch.Tensor] = channel_scale) -> list[LayerPruning]:
        """:func:`sabr.pruning.prune_channel_share` over these groups."""
        if not 0.0 <= share < 1.0:
            raise ConfigError(f"a channel share must be in [0, 1) (got {share}).")
        named = dict(model.named_parameters())
        stats = []
        for group in self.groups.values():
            scale = rank(model, group)
            dead = ~_live_channels(named, group).to(scale.device)
            order = torch.argsort(scale.masked_fill(dead, float("-inf")), stable=True)  # zero channels first
            drop = order[:int(share * group.channels) // CHANNEL_MULTIPLE * CHANNEL_MULTIPLE]
            live = drop[~dead[drop]]
            stats += _zero_channels(named, group, drop, float(scale[live].max()) if len(live) else 0.0)
        return stats

    @torch.no_grad()
    def revive(self, model: nn.Module, reference: nn.Module, share: float,
               rank: Callable[[nn.Module, ChannelGroup], torch.Tensor] = channel_scale) -> list[LayerPruning]:
        """:func:`sabr.pruning.revive_channels` over these groups."""
        lower = copy.deepcopy(reference)
        stats = self.prune_share(lower, share, rank)
        named, source = dict(model.named_parameters()), dict(lower.named_parameters())
        for group in self.groups.values():
            back = ~_live_channels(named, group) & _live_channels(source, group)
            for name in group.parameters:
                rows = back.to(named[name].device)
                named[name][rows] = source[name][rows]
        return stats

    def to_json(self) -> list[dict]:
        return [g.to_dict() for g in self.groups.values()]


def removed_channels(named: dict, group: ChannelGroup, teta1: float = 0.2, gamma: float = 0.1) -> torch.Tensor:
    """Boolean ``(channels,)``: the channels of ``group`` that pruning at ``teta1`` would remove
    (``named``: parameter name -> tensor); nothing is changed."""
    return _removed_channels(named, group, teta1, gamma, None)[0]


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


def _zero_channels(named: dict, group: ChannelGroup, drop: torch.Tensor, threshold: float) -> list[LayerPruning]:
    """Zero the channels ``drop`` (a boolean mask or indices) of ``group``; its weight tensors' figures."""
    for name in group.parameters:
        named[name][drop.to(named[name].device)] = 0.0
    return [LayerPruning.of(name, named[name], threshold) for name in group.weights]


def _live_channels(named: dict, group: ChannelGroup) -> torch.Tensor:
    """``(channels,)`` booleans: which channels of ``group`` have a non-zero weight."""
    return channel_rows(named, group).detach().ne(0).any(1)


def make_units(model: nn.Module, params: Iterable[str] | None = None, groups: Sequence[ChannelGroup] | None = None,
               units: Units | None = None) -> Units:
    """The units the public entry points' conveniences name: ``units`` itself, else the channel ``groups``
    (``params`` is then ignored), else the tensors ``params`` of ``model`` (default: every Conv/Linear weight).

    Raises:
        ConfigError: ``units`` comes with ``params`` or ``groups``.
    """
    if units is not None:
        if params is not None or groups is not None:
            raise ConfigError("pass the units alone: units= replaces params= and groups=, drop those.")
        return units
    return TensorUnits.of(model, params) if groups is None else ChannelGroupUnits(groups)


def legacy_units(owner: str, units: Units | Iterable[str] | None, params: Iterable[str] | None = None,
                 groups: Sequence[ChannelGroup] | None = None, stacklevel: int = 3) -> Units | None:
    """``units`` as given, or the units named the deprecated way (with a :class:`DeprecationWarning` that names
    ``owner``, ``stacklevel`` frames up): by ``params`` / ``groups``, or by tensor names in the place of ``units``."""
    if units is not None and not isinstance(units, Units):  # tensor names where params used to be
        params, units = units, None
    if params is None and groups is None:
        return units
    warnings.warn(f"{owner}(params=..., groups=...) is deprecated: pass units= (sabr.units.TensorUnits.of(model, "
                  "params) or ChannelGroupUnits(groups)).", DeprecationWarning, stacklevel=stacklevel)
    return make_units(None, params, groups, units)


def takes_units(fn: Callable) -> Callable:
    """Let ``fn(..., units=...)`` still be called as before it took units, the deprecated way
    (:func:`legacy_units`)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def call(*args, params: Iterable[str] | None = None, groups: Sequence[ChannelGroup] | None = None, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["units"] = legacy_units(fn.__name__, bound.arguments.get("units"), params, groups)
        return fn(*bound.args, **bound.kwargs)
    return call
