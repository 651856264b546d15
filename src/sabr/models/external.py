"""Models from outside sabr: torchvision's classification models, timm's, and the user's own code.

Each builder here takes ``(name, num_classes, in_chans, image_size, pretrained)`` and returns an
``nn.Module`` whose head gives ``num_classes`` logits and whose stem takes ``in_chans`` channels;
:func:`sabr.models.create_model` chooses the builder from the ``--model`` string:

* a torchvision name (``resnet18``; ``torchvision:vgg11`` for the torchvision model a built-in shadows);
* ``timm:<name>`` (the optional ``timm`` extra);
* user code, ``path/to/file.py:factory`` or ``package.module:factory``: the factory is called with the
  keyword arguments among ``num_classes``, ``in_chans``, ``image_size`` (and ``pretrained`` when asked
  for) that it accepts.

User code is *pinned* for a run's records (:func:`pin`): ``/abs/path/file.py:factory@sha256:<hex>``,
the SHA-256 of the file; building from a pinned source refuses a file that changed since.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

TIMM = "timm:"
TORCHVISION = "torchvision:"
_PIN = "@sha256:"
# constructor arguments some torchvision models need beside num_classes (their input size, no auxiliary heads)
_TV_SIZE_ARG = {"vit_": "image_size", "maxvit_": "input_size"}
_TV_NO_AUX = ("googlenet", "inception_v3")


def torchvision_names() -> list[str]:
    """The names of torchvision's image classification models (``torchvision.models.list_models``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def timm_names() -> list[str]:
    """timm's model names, prefixed ``timm:``; empty when timm is not installed."""
    try:
        import timm
    except ModuleNotFoundError:
        return []
    return [TIMM + n for n in timm.list_models()]


def adapt_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """Return ``conv`` taking ``in_chans`` inputs; pretrained RGB filters are summed for grayscale."""
    if conv.in_channels == in_chans:
        return conv
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        if in_chans == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _adapt_stem(model: nn.Module, in_chans: int) -> None:
    """Give the first convolution (the stem) ``in_chans`` input channels."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            _replace(model, name, adapt_first_conv(module, in_chans))
            return


def _replace_head(model: nn.Module, old_classes: int, num_classes: int) -> None:
    """Swap every layer giving ``old_classes`` outputs (pretrained heads) for one giving ``num_classes``."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and m.out_features == old_classes:
            _replace(model, name, nn.Linear(m.in_features, num_classes, bias=m.bias is not None))
        elif isinstance(m, nn.Conv2d) and m.out_channels == old_classes:
            _replace(model, name, nn.Conv2d(m.in_channels, num_classes, m.kernel_size, m.stride, m.padding))


def build_torchvision(name: str, num_classes: int, in_chans: int, image_size: int, pretrained: bool) -> nn.Module:
    """A torchvision classification model with its head, stem and (ViT, MaxViT) input size adapted."""
    from torchvision.models import get_model

    kwargs: dict = {}
    for prefix, arg in _TV_SIZE_ARG.items():
        if name.startswith(prefix):
            kwargs[arg] = image_size if arg == "image_size" else (image_size, image_size)
    if name in _TV_NO_AUX:
        kwargs.update(aux_logits=False, **({} if pretrained else {"init_weights": True}))
    if pretrained:
        model = get_model(name, weights="DEFAULT", **kwargs)
        _replace_head(model, 1000, num_classes)
    else:
        model = get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3 and getattr(model, "transform_input", False):
        model.transform_input = False  # Inception's RGB re-normalisation needs three channels
    _adapt_stem(model, in_chans)
    return model


def build_timm(name: str, num_classes: int, in_chans: int, image_size: int, pretrained: bool) -> nn.Module:
    """``timm.create_model`` with ``num_classes`` and ``in_chans`` (and ``img_size`` where the model takes it)."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}; list them with `sabr models 'timm:*'`.")
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, "pretrained": pretrained}
    try:
        return timm.create_model(name, img_size=image_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
        return timm.create_model(name, **kwargs)


@dataclass(frozen=True)
class UserCode:
    """A ``location:factory`` source: a Python file (``is_file``) or an importable module, optionally pinned."""

    location: str
    factory: str
    sha256: str | None
    is_file: bool


def parse_user_code(source: str) -> UserCode | None:
    """The :class:`UserCode` that ``source`` names, or ``None`` for a library model name."""
    if ":" not in source or source.startswith((TIMM, TORCHVISION)):
        return None
    body, _, digest = source.partition(_PIN)
    location, _, factory = body.rpartition(":")
    is_file = location.endswith(".py") or "/" in location or "\\" in location
    if not factory.isidentifier() or not location or (
            not is_file and not all(p.isidentifier() for p in location.split("."))):
        raise ConfigError(f"--model {source!r} is neither a model name nor user code; write path/to/file.py:factory "
                          "or package.module:factory.")
    return UserCode(location, factory, digest or None, is_file)


def is_user_code(source: str) -> bool:
    """Whether ``source`` names code from outside sabr, torchvision and timm."""
    return parse_user_code(source) is not None


def _origin(code: UserCode) -> Path:
    """The file holding the factory (for a module, found without running it; its parent packages are imported)."""
    if code.is_file:
        path = Path(code.location).expanduser()
        if not path.is_file():
            raise ConfigError(f"model file {path} does not exist; pass --model path/to/file.py:factory.")
        return path.resolve()
    try:
        spec = importlib.util.find_spec(code.location)
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ConfigError(f"cannot find the Python module {code.location!r}; install it or add its folder to "
                          "PYTHONPATH, or pass --model path/to/file.py:factory.")
    return Path(spec.origin)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin(source: str) -> str:
    """``source`` with user code made absolute and pinned to its file's SHA-256 (library names unchanged)."""
    code = parse_user_code(source)
    if code is None or code.sha256:
        return source
    origin = _origin(code)
    return f"{origin if code.is_file else code.location}:{code.factory}{_PIN}{_sha256(origin)}"


def display_name(source: str) -> str:
    """A short name for reports: ``file.py:factory`` for user files, the source without its pin otherwise."""
    code = parse_user_code(source)
    if code is None:
        return source
    return f"{Path(code.location).name if code.is_file else code.location}:{code.factory}"


def _load_factory(code: UserCode) -> Callable:
    """Import the user's module (after checking a pinned file's SHA-256) and return the factory."""
    origin = _origin(code)
    digest = _sha256(origin)
    if code.sha256 and digest != code.sha256:
        raise CheckpointError(f"the model file {origin} changed after training (its SHA-256 is not the one the run "
                              "recorded); restore the version the run was trained with, or train a new run.")
    if code.is_file:
        name = f"sabr_user_model_{digest[:16]}"  # one module per file content: an edited file is imported anew
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, origin)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        module = importlib.import_module(code.location)
    factory = getattr(module, code.factory, None)
    if not callable(factory):
        raise ConfigError(f"{origin} has no function {code.factory!r}; name the factory after the colon.")
    return factory


def build_user_model(code: UserCode, num_classes: int, in_chans: int, image_size: int, pretrained: bool) -> nn.Module:
    """Call the user's factory with the keyword arguments it accepts."""
    factory = _load_factory(code)
    offered = {"num_classes": num_classes, "in_chans": in_chans, "image_size": image_size}
    if pretrained:
        offered["pretrained"] = True
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = offered
    else:
        kwargs = {k: v for k, v in offered.items() if k in params}
    if pretrained and "pretrained" not in kwargs:
        raise ConfigError(f"{code.factory}() takes no `pretrained` argument; drop --pretrained.")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{code.factory}() returned {type(model).__name__}, not a torch.nn.Module.")
    return model
