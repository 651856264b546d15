"""The built-in models: small CNNs for the embedded digits and photos, and two torchvision models with the
heads of the project description. Each is registered by name with :func:`sabr.models.register_model`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from . import register_model
from .external import adapt_first_conv


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


def _scratch_only(name: str, pretrained: bool) -> None:
    """Refuse ``--pretrained`` for a model that has no published weights."""
    if pretrained:
        raise ConfigError(f"{name} has no pretrained weights; drop --pretrained.")


@register_model(min_image_size=8)
def compact_cnn(num_classes: int, in_chans: int = 1, image_size: int = 8, pretrained: bool = False) -> nn.Module:
    """A small CPU-friendly CNN: three conv-BN-ReLU blocks (32-64-128) and a 256-unit hidden layer.

    Deliberately wider than the embedded 8x8 digits need, like the ImageNet models users fine-tune:
    SABR's job is to find the part of it the task needs.
    """
    _scratch_only("compact_cnn", pretrained)
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
    _scratch_only("lenet5", pretrained)
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
    _scratch_only("small_vgg", pretrained)
    features = nn.Sequential(
        *_conv_bn(in_chans, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
        *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), nn.MaxPool2d(2),
    )
    n = _flat_features(features, in_chans, image_size)
    classifier = nn.Sequential(nn.Linear(n, 256), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(256, num_classes))
    return _ConvNet(features, classifier)


@register_model(min_image_size=32)
def vgg11(num_classes: int, in_chans: int = 3, image_size: int = 64, pretrained: bool = False) -> nn.Module:
    """torchvision VGG11 with the project description's head: Linear(25088, 512)-ReLU-Dropout-Linear(512, classes).

    With 14 classes this has 22,069,952 Conv/Linear weights, the reference figure.
    """
    from torchvision.models import VGG11_Weights, vgg11 as tv_vgg11

    model = tv_vgg11(weights=VGG11_Weights.IMAGENET1K_V1 if pretrained else None)
    model.features[0] = adapt_first_conv(model.features[0], in_chans)
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
    model.features[0][0] = adapt_first_conv(model.features[0][0], in_chans)
    model.classifier[-1] = nn.Linear(model.last_channel, num_classes)
    return model
