"""The channel graph: which tensors of a model share channel ``j``, found by tracing it with :mod:`torch.fx`.

A *channel space* is a set of tensors whose channel ``j`` is the same channel: the output of a Conv2d
or Linear and everything that only passes it on (BatchNorm, activations, pooling, dropout), joined with
the other operand of a residual addition. Each space knows the layers that write it (``producers``),
read it (``consumers``) and scale it per channel (BatchNorm). A space the tracer does not understand
(the input, the output, anything unusual) is ``locked``: none of its channels may be removed.
No table of layer names: any traceable model of these operations works.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from ..errors import SabrError

_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU,
                 nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d, nn.AvgPool2d)
_PASS_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.dropout,
                   torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.max_pool2d,
                   torch.nn.functional.avg_pool2d, torch.nn.functional.hardswish, torch.sigmoid, torch.tanh}
_PASS_METHODS = {"relu", "relu_", "contiguous", "sigmoid", "tanh", "clone"}
_ADD = (operator.add, torch.add, "add", operator.iadd)
_FLATTEN = (torch.flatten, "flatten", "view", "reshape")


def is_depthwise(m: nn.Module) -> bool:
    """True for a Conv2d with one filter per input channel (``groups == in_channels == out_channels > 1``)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


class UnionFind:
    """Disjoint sets of integer ids (path halving); ``union(a, b)`` puts ``b``'s set under ``a``'s root."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, i: int) -> None:
        """Make ``i`` a set of its own."""
        self.parent[i] = i

    def find(self, i: int) -> int:
        """The root of ``i``'s set."""
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        """Join the sets of ``a`` and ``b``; returns the root of the joined set (``a``'s root)."""
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[b] = a
        return a


@dataclass
class Space:
    """One channel space: tensors whose channel ``j`` is the same channel (pass-through ops, residual adds)."""

    producers: list[str] = field(default_factory=list)  # conv/linear modules writing this space
    consumers: list[tuple[str, str, int]] = field(default_factory=list)  # (module, input node, hw)
    per_channel: list[str] = field(default_factory=list)  # BatchNorm modules living in this space
    locked: bool = False


class ChannelGraph(UnionFind):
    """The channel spaces of one traced forward pass, joined by residual additions.

    ``spaces`` maps each root id to its :class:`Space`; ``ties`` lists ``(input space, output space)``
    of every depthwise convolution, whose two sides must lose the same channels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spaces: dict[int, Space] = {}
        self.ties: list[tuple[int, int]] = []

    def new(self, locked: bool = False) -> int:
        """A fresh space; returns its id."""
        i = len(self.parent)
        self.add(i)
        self.spaces[i] = Space(locked=locked)
        return i

    def union(self, a: int, b: int) -> int:
        """Join two spaces (a residual addition): their producers, consumers and BatchNorms become one space."""
        a, b = self.find(a), self.find(b)
        if a != b:
            sa, sb = self.spaces.pop(b), self.spaces[a]
            sb.producers += sa.producers
            sb.consumers += sa.consumers
            sb.per_channel += sa.per_channel
            sb.locked |= sa.locked
        return super().union(a, b)

    def space(self, i: int) -> Space:
        """The space that id ``i`` belongs to."""
        return self.spaces[self.find(i)]


@dataclass
class TiedGroup:
    """Channel spaces that must lose the same channels: one space, or several tied by depthwise convolutions.

    ``members`` are space roots; ``tied_consumers[root]`` names the depthwise convolutions that carry
    channel ``j`` of that space to the next member (they read the space but are part of the group, not
    readers to fold into); ``channels`` is the common channel count (None when the spaces disagree or
    nothing in them says); ``locked`` is True when any member is.
    """

    members: list[int]
    tied_consumers: dict[int, set[str]]
    channels: int | None
    locked: bool


def space_channels(sp: Space, modules: dict) -> int | None:
    """The number of channels of a space (None if nothing in it says)."""
    for p in sp.producers:
        m = modules[p]
        return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    for name in sp.per_channel:
        return modules[name].num_features
    return None


def tied_groups(g: ChannelGraph, modules: dict) -> list[TiedGroup]:
    """Every space of ``g`` in exactly one :class:`TiedGroup`, in the order the spaces were created."""
    groups = UnionFind()
    for r in g.spaces:
        groups.add(r)
    tied_consumers: dict[int, set[str]] = {r: set() for r in g.spaces}
    for a, b in g.ties:
        ra, rb = g.find(a), g.find(b)
        for name, _, _ in g.spaces[ra].consumers:
            if is_depthwise(modules[name]) and name in g.spaces[rb].producers:
                tied_consumers[ra].add(name)
        groups.union(ra, rb)
    members_of: dict[int, list[int]] = {}
    for r in g.spaces:
        members_of.setdefault(groups.find(r), []).append(r)
    out = []
    for members in members_of.values():
        sizes = {space_channels(g.spaces[r], modules) for r in members} - {None}
        out.append(TiedGroup(members, {r: tied_consumers[r] for r in members},
                             sizes.pop() if len(sizes) == 1 else None, any(g.spaces[r].locked for r in members)))
    return out


class _Recorder(torch.fx.Interpreter):
    """Runs the traced model and keeps every node's output (for shapes and constant values)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out.detach() if isinstance(out, torch.Tensor) else out
        return out


def trace_channels(model: nn.Module, example_input: torch.Tensor) -> tuple[ChannelGraph, dict[str, Any]]:
    """Trace ``model`` (on the CPU, as it is) and run it on ``example_input``.

    Returns ``(graph, values)``: the channel graph, and every fx node's output by node name (the
    consumers' ``input node`` entries name these). Raises :class:`SabrError` if torch.fx cannot trace it.
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - tracing errors come in many types
        raise SabrError(f"cannot shrink this model: torch.fx could not trace it ({exc}).") from exc
    rec = _Recorder(gm)
    rec.run(example_input.cpu())
    return _Builder(gm, rec.values).build(), rec.values


class _Builder:
    """Walks the fx graph once, giving every tensor node ``(space id, hw)``; ``hw > 1`` after a flatten
    (then channel ``j`` is the ``hw`` consecutive features ``j * hw ... (j + 1) * hw - 1``)."""

    def __init__(self, gm: torch.fx.GraphModule, values: dict[str, Any]) -> None:
        self.gm, self.values = gm, values
        self.modules = dict(gm.named_modules())
        self.g = ChannelGraph()
        self.where: dict[str, tuple[int, int]] = {}

    def build(self) -> ChannelGraph:
        """The graph of every node, in execution order."""
        for n in self.gm.graph.nodes:
            self._node(n)
        return self.g

    def _tensor_args(self, n: torch.fx.Node) -> list[torch.fx.Node]:
        return [a for a in n.all_input_nodes if isinstance(self.values.get(a.name), torch.Tensor)]

    def _lock_all(self, n: torch.fx.Node) -> None:
        """Keep every channel of ``n``'s inputs and give its output a locked space of its own."""
        for a in self._tensor_args(n):
            if a.name in self.where:
                self.g.space(self.where[a.name][0]).locked = True
        if isinstance(self.values.get(n.name), torch.Tensor):
            self.where[n.name] = (self.g.new(locked=True), 1)

    def _node(self, n: torch.fx.Node) -> None:
        if n.op == "placeholder":
            self.where[n.name] = (self.g.new(locked=True), 1)
            return
        if n.op == "output":
            for a in n.all_input_nodes:
                if a.name in self.where:
                    self.g.space(self.where[a.name][0]).locked = True
            return
        if not isinstance(self.values.get(n.name), torch.Tensor):
            return
        args = self._tensor_args(n)
        if any(a.name not in self.where for a in args) or not args:
            understood = False
        elif n.op == "call_module":
            understood = self._module(n, self.modules[n.target], args)
        elif n.op in ("call_function", "call_method"):
            understood = self._function(n, args)
        else:  # get_attr
            understood = False
        if not understood:
            self._lock_all(n)

    def _flat_hw(self, n: torch.fx.Node, src: torch.fx.Node) -> None:
        """``n`` flattens the 4-d ``src`` to ``(N, C * H * W)``: the same space, ``hw = H * W``."""
        self.where[n.name] = (self.where[src.name][0], math.prod(self.values[src.name].shape[2:]))

    def _module(self, n: torch.fx.Node, m: nn.Module, args: list[torch.fx.Node]) -> bool:
        """Place the output of module call ``n``; False when the tracer does not understand it."""
        first = args[0]
        src_space, src_hw = self.where[first.name]
        x = self.values[first.name]
        if isinstance(m, (nn.Conv2d, nn.Linear)) and len(args) == 1:
            ok_input = (x.dim() == 4 and src_hw == 1) if isinstance(m, nn.Conv2d) else x.dim() == 2
            if not ok_input or (isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m)):
                return False
            self.g.space(src_space).consumers.append((n.target, first.name, src_hw))
            new = self.g.new()
            self.g.space(new).producers.append(n.target)
            self.where[n.name] = (new, 1)
            if is_depthwise(m):
                self.g.ties.append((src_space, new))
        elif isinstance(m, _PASS_MODULES) and len(args) == 1:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if src_hw != 1:
                    return False
                self.g.space(src_space).per_channel.append(n.target)
            self.where[n.name] = self.where[first.name]
        elif isinstance(m, nn.Flatten) and m.start_dim == 1 and x.dim() == 4 and src_hw == 1:
            self._flat_hw(n, first)
        else:
            return False
        return True

    def _function(self, n: torch.fx.Node, args: list[torch.fx.Node]) -> bool:
        """Place the output of function or method call ``n``; False when the tracer does not understand it."""
        first, target, out = args[0], n.target, self.values[n.name]
        src_space, src_hw = self.where[first.name]
        x = self.values[first.name]
        if target in _ADD and len(args) == 2 and x.shape == self.values[args[1].name].shape:
            s2, hw2 = self.where[args[1].name]
            if hw2 != src_hw:
                return False
            self.where[n.name] = (self.g.union(src_space, s2), src_hw)
        elif (target in _PASS_FUNCTIONS or target in _PASS_METHODS) and len(args) == 1:
            self.where[n.name] = self.where[first.name]
        elif target in _FLATTEN and len(args) == 1 and x.dim() == 4 and src_hw == 1 and out.dim() == 2 \
                and out.shape[0] == x.shape[0]:
            self._flat_hw(n, first)
        else:
            return False
        return True
