"""Model registry and factory: the built-ins, torchvision, timm and the user's own code.

:func:`create_model` builds any model ``--model`` names, adapted to the dataset (classes, channels,
image size); :func:`list_models` lists the names. Built-in models are functions decorated with
:func:`register_model` that take ``num_classes``, ``in_chans``, ``image_size`` and ``pretrained`` and
return an ``nn.Module`` producing logits (never a Softmax); adding one touches one place.
Everything else comes from :mod:`sabr.models.external`.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from . import builtin  # noqa: F401  (registers the built-in models)
from .external import (TIMM, TORCHVISION, build_timm, build_torchvision, build_user_model, display_name,
                       is_user_code, parse_user_code, pin, timm_names, torchvision_names)
from .registry import _MIN_SIZE, _REGISTRY, register_model

log = logging.getLogger(__name__)

__all__ = ["register_model", "list_models", "create_model", "set_dropout", "pin", "display_name", "is_user_code"]


def list_models(pattern: str = "*") -> list[str]:
    """Model names matching a shell-style ``pattern`` (e.g. ``"resnet*"``), sorted.

    The built-ins and torchvision's classification models; timm's (``timm:<name>``) only for a pattern
    that starts with ``timm:`` (there are over a thousand). User code is not listed: pass it as
    ``path/to/file.py:factory`` or ``package.module:factory``.
    """
    if pattern.startswith(TIMM):
        return sorted(n for n in timm_names() if fnmatch.fnmatch(n, pattern))
    names = set(_REGISTRY) | set(torchvision_names())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def _builder(name: str) -> Callable[..., nn.Module]:
    """``(num_classes, in_chans, image_size, pretrained) -> model`` for a name that is not a built-in."""
    code = parse_user_code(name)
    if code is not None:
        return lambda *args: build_user_model(code, *args)
    if name.startswith(TIMM):
        return lambda *args: build_timm(name[len(TIMM):], *args)
    tv = name[len(TORCHVISION):] if name.startswith(TORCHVISION) else name
    if tv in torchvision_names():
        return lambda *args: build_torchvision(tv, *args)
    raise ConfigError(f"unknown model {name!r}; built-in: {', '.join(sorted(_REGISTRY))}; see `sabr models` for "
                      "torchvision's, timm:<name> for timm's, or pass path/to/file.py:factory.")


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 64,
    pretrained: bool = False,
) -> nn.Module:
    """Build a model adapted to the dataset.

    Args:
        name: a built-in or torchvision name from :func:`list_models`, ``timm:<name>``, or user code as
            ``path/to/file.py:factory`` / ``package.module:factory`` (pinned sources, from :func:`pin`,
            are refused when the file changed).
        num_classes: size of the output layer (logits).
        in_chans: input channels (1 for grayscale, 3 for RGB).
        image_size: side of the square input, in pixels.
        pretrained: load the library's ImageNet weights where they exist (downloads them once).

    Raises:
        ConfigError: unknown name, fewer than 2 classes, or an image size the model cannot take (the
            message names the smallest one it takes).
    """
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}.")
    if name in _REGISTRY:
        if image_size < _MIN_SIZE[name]:
            raise _size_error(name, image_size, _MIN_SIZE[name])
        return _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                               pretrained=pretrained)
    build = _builder(name)
    checked = _check_size(name, lambda size: build(num_classes, in_chans, size, pretrained), in_chans, image_size,
                          num_classes)
    model = build(num_classes, in_chans, image_size, pretrained)
    if not checked and torch.get_default_device().type != "meta":  # not on meta: one real pass instead
        was_training = model.training
        why = _try_size(lambda _: model, in_chans, image_size, num_classes, device=None)
        model.train(was_training)
        if why is not None:
            raise ConfigError(f"model {display_name(name)!r} cannot take {image_size}x{image_size} images with "
                              f"{in_chans} channel(s) ({why}); try another --image-size.")
    return model


def _size_error(name: str, got: int, smallest: int, why: str = "") -> ConfigError:
    return ConfigError(f"model {display_name(name)!r} needs images of at least {smallest}x{smallest} pixels, got "
                       f"{got}{f' ({why})' if why else ''}; pass --image-size {smallest} or larger.")


def _try_size(build: Callable[[int], nn.Module], in_chans: int, size: int, num_classes: int,
              device: str | None = "meta") -> str | None:
    """``None`` when the model built for ``size`` maps one image to ``num_classes`` logits, else why not.

    On the ``meta`` device (the default) only shapes are computed: nothing is allocated.
    """
    try:
        with torch.device(device or torch.get_default_device()), torch.no_grad():
            out = build(size).eval()(torch.zeros(1, in_chans, size, size))
    except Exception as exc:  # any failure at this size: the caller looks for a size that works
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model returns {shape} for one image instead of (1, {num_classes}) logits; give its "
                          "factory a num_classes argument and return a tensor of logits.")
    return None


def _check_size(name: str, build: Callable[[int], nn.Module], in_chans: int, size: int, num_classes: int) -> bool:
    """Refuse, naming the smallest size that works, an ``image_size`` the model cannot take.

    Returns ``False`` when the meta device cannot run the model at any size (nothing was checked).
    """
    def works(s: int) -> bool:
        return _try_size(build, in_chans, s, num_classes) is None

    why = _try_size(build, in_chans, size, num_classes)
    if why is None:
        return True
    hi = next((s for s in (8, 16, 32, 64, 128, 224, 256, 512) if works(s)), None)
    if hi is None:
        log.debug("model %s cannot be checked on the meta device (%s)", name, why)
        return False
    lo = hi // 2
    while hi - lo > 1:  # bisect between the last failing and the first working size of the grid
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    smallest = next((d for d in range(1, hi) if hi % d == 0 and works(d)), hi)  # sizes that must divide evenly
    raise _size_error(name, size, smallest, why)


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every Dropout module to ``p``; returns how many were changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = p
            n += 1
    return n
