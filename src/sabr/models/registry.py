"""The registry of built-in models: :func:`register_model` files a factory under its name (below the factory in
:mod:`sabr.models`, so that the modules defining models import it without importing the factory)."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_MIN_SIZE: dict[str, int] = {}


def register_model(name: str | None = None, min_image_size: int = 1):
    """Decorator: register a model factory under ``name`` (default: the function's name)."""

    def wrap(fn):
        key = name or fn.__name__
        _REGISTRY[key] = fn
        _MIN_SIZE[key] = min_image_size
        return fn

    return wrap
