"""The built-in models: small CNNs for the embedded digits and photos, a CIFAR-style ResNet-20, and two
torchvision models with the heads of the project description. Each is registered by name with
:func:`sabr.models.registry.register_model`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .external import adapt_first_conv
from .registry import register_model


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


class _BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut; a 1x1 conv-BN projection where the shape changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class _ResNet20(nn.Module):
    """The layout of torchvision's ResNets (``conv1``, ``bn1``, ``layer1``-``layer3``, ``fc``), so that layer
    names in reports read the same."""

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            stages.append(nn.Sequential(*(_BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                          for i in range(3))))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(min_image_size=8)
def resnet20(num_classes: int, in_chans: int = 3, image_size: int = 32, pretrained: bool = False) -> nn.Module:
    """The CIFAR-style ResNet-20 of He et al. (2016), section 4.2: about 0.27M parameters.

    A 3x3 conv-BN-ReLU stem with 16 channels, three stages of three basic blocks with 16, 32 and 64
    channels (stride 2 at the start of stages 2 and 3), global average pooling and a linear head. The
    shortcuts that change shape are 1x1 conv-BN projections (the paper's option B; its CIFAR runs used
    option A, zero-padded identities) because a projection is a layer the channel graph of
    ``--structured`` and Torch-Pruning both handle, as in torchvision's ResNets, while a zero-padded
    shortcut ties channels through a padding neither removes. The projections add 2,752 parameters to
    option A's 269,722 (10 classes, 3 input channels).
    """
    _scratch_only("resnet20", pretrained)
    return _ResNet20(num_classes, in_chans)
