"""Model registry and factory.

Every model is a function decorated with :func:`register_model` that takes ``num_classes``,
``in_chans``, ``image_size`` and ``pretrained`` and returns an ``nn.Module`` producing logits (never a
Softmax). :func:`create_model` builds any of them by name; :func:`list_models` lists what exists.

Adding a model touches one place: write the function here (or anywhere) and decorate it.
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)

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


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``"vgg*"``), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    image_size: int = 64,
    pretrained: bool = False,
) -> nn.Module:
    """Build a registered model adapted to the dataset.

    Args:
        name: a name from :func:`list_models`.
        num_classes: size of the output layer (logits).
        in_chans: input channels (1 for grayscale, 3 for RGB).
        image_size: side of the square input, in pixels.
        pretrained: load torchvision's ImageNet weights where they exist (downloads them once).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}.")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}.")
    if image_size < _MIN_SIZE[name]:
        raise ConfigError(
            f"model {name!r} needs images of at least {_MIN_SIZE[name]}x{_MIN_SIZE[name]} pixels, "
            f"got {image_size}; pass --image-size {_MIN_SIZE[name]} or larger."
        )
    return _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained)


def _flat_features(body: nn.Module, in_chans: int, image_size: int) -> int:
    with torch.no_grad():
        return body(torch.zeros(1, in_chans, image_size, image_size)).flatten(1).shape[1]


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _ConvNet(nn.Module):
    """A feature extractor followed by a classifier head (the layout every builder here uses)."""

    def __init__(self, features: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(min_image_size=8)
def compact_cnn(num_classes: int, in_chans: int = 1, image_size: int = 8, pretrained: bool = False) -> nn.Module:
    """A small CPU-friendly CNN: three conv-BN-ReLU blocks (32-64-128) and a 256-unit hidden layer.

    Deliberately wider than the embedded 8x8 digits need, like the ImageNet models users fine-tune:
    SABR's job is to find the part of it the task needs.
    """
    if pretrained:
        raise ConfigError("compact_cnn has no pretrained weights; drop --pretrained.")
    features = nn.Sequential(
        *_conv_bn(in_chans, 32), *_conv_bn(32, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), nn.AdaptiveAvgPool2d(4),
    )
    classifier = nn.Sequential(
        nn.Linear(128 * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.3), nn.Linear(256, num_classes)
    )
    return _ConvNet(features, classifier)


@register_model(min_image_size=16)
def lenet5(num_classes: int, in_chans: int = 1, image_size: int = 28, pretrained: bool = False) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling: conv 6@5x5, conv 16@5x5, FC 120-84."""
    if pretrained:
        raise ConfigError("lenet5 has no pretrained weights; drop --pretrained.")
    features = nn.Sequential(
        nn.Conv2d(in_chans, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )
    n = _flat_features(features, in_chans, image_size)
    classifier = nn.Sequential(
        nn.Linear(n, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )
    return _ConvNet(features, classifier)


@register_model(min_image_size=16)
def small_vgg(num_classes: int, in_chans: int = 1, image_size: int = 28, pretrained: bool = False) -> nn.Module:
    """A small VGG-style CNN: (32-32-pool)(64-64-pool)(128-pool) conv-BN-ReLU blocks, FC 256, dropout."""
    if pretrained:
        raise ConfigError("small_vgg has no pretrained weights; drop --pretrained.")
    features = nn.Sequential(
        *_conv_bn(in_chans, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
        *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), nn.MaxPool2d(2),
    )
    n = _flat_features(features, in_chans, image_size)
    classifier = nn.Sequential(nn.Linear(n, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, num_classes))
    return _ConvNet(features, classifier)


def _adapt_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
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


@register_model(min_image_size=32)
def vgg11(num_classes: int, in_chans: int = 3, image_size: int = 64, pretrained: bool = False) -> nn.Module:
    """torchvision VGG11 with the project description's head: Linear(25088, 512)-ReLU-Dropout-Linear(512, classes).

    With 14 classes this has 22,069,952 Conv/Linear weights, the reference figure.
    """
    from torchvision.models import VGG11_Weights, vgg11 as tv_vgg11

    model = tv_vgg11(weights=VGG11_Weights.IMAGENET1K_V1 if pretrained else None)
    model.features[0] = _adapt_first_conv(model.features[0], in_chans)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 512), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(512, num_classes)
    )
    return model


@register_model(min_image_size=32)
def mobilenet_v2(num_classes: int, in_chans: int = 3, image_size: int = 64, pretrained: bool = False) -> nn.Module:
    """torchvision MobileNetV2 with its head Dropout(0.2)-Linear(1280, classes).

    With 14 classes this has 2,224,736 weights (Conv, Linear and BatchNorm), the reference figure.
    """
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2 as tv_mobilenet_v2

    model = tv_mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained else None)
    model.features[0][0] = _adapt_first_conv(model.features[0][0], in_chans)
    model.classifier[-1] = nn.Linear(model.last_channel, num_classes)
    return model


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every Dropout module to ``p``; returns how many were changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = p
            n += 1
    return n
