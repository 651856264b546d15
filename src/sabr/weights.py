"""Which tensors of a model are its weights, and the one statistic every rule takes of them.

The bottom layer of the regulariser, pruning, the unit kinds and the metrics: it imports nothing of sabr but
its errors.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .errors import ConfigError

_ATTENTION_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def population_std(t: torch.Tensor) -> float:
    """numpy's ``np.std`` of a tensor (population std, no Bessel correction), as the seed's code takes it."""
    return float(t.detach().double().std(correction=0)) if t.numel() > 1 else 0.0


def default_param_names(model: nn.Module) -> list[str]:
    """Names of every weight matrix, in ``named_parameters()`` order: the ``weight`` of every ``Conv*d`` and
    ``Linear`` module (attention output projections included) and the input projections of every
    ``nn.MultiheadAttention`` (``in_proj_weight``, or ``q/k/v_proj_weight``)."""
    wanted = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and module.weight is not None:
            wanted.add(prefix + "weight")
        elif isinstance(module, nn.MultiheadAttention):
            wanted.update(prefix + n for n in _ATTENTION_WEIGHTS if getattr(module, n, None) is not None)
    return [name for name, _ in model.named_parameters() if name in wanted]


def resolve_params(model: nn.Module, params: Iterable[str] | None = None) -> dict[str, nn.Parameter]:
    """Map the regularised tensor names to the model's parameters.

    Args:
        model: the network.
        params: parameter names (as in ``model.named_parameters()``); ``None`` selects the weights of
            every Conv and Linear module.

    Returns:
        name -> parameter, in ``named_parameters()`` order.

    Raises:
        ConfigError: a name is not a parameter of the model, or nothing is selected.
    """
    named = dict(model.named_parameters())
    names = default_param_names(model) if params is None else list(params)
    missing = [n for n in names if n not in named]
    if missing:
        raise ConfigError(
            f"these names are not parameters of the model: {missing[:5]}. "
            "Use names from model.named_parameters(), e.g. 'features.0.weight'."
        )
    if not names:
        raise ConfigError("no tensor to regularise: the model has no Conv or Linear weight; pass params=[...].")
    order = {n: i for i, n in enumerate(named)}
    return {n: named[n] for n in sorted(names, key=order.__getitem__)}
