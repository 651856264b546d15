"""Training-time augmentation of ``uint8`` images ``(C, H, W)``, with every random draw from an explicit
generator (the phase's batch-order generator in memory, the worker's seeded RNG when streaming), so a
resumed run draws exactly what an uninterrupted one would.

Off by default. ``standard`` is ``crop rotate color``: no flip, because a mirrored hand is another gesture;
add ``flip`` for data where left and right mean the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError

AUGMENTATIONS = ("crop", "rotate", "color", "flip")
"""The operations :class:`Augment` knows, in the order it applies them."""
STANDARD = ("crop", "rotate", "color")
"""What ``standard`` stands for."""


def parse_augment(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The operations of ``--augment`` (``standard`` expanded), in :data:`AUGMENTATIONS` order; () for none."""
    wanted: set[str] = set()
    for name in names or ():
        if name == "standard":
            wanted.update(STANDARD)
        elif name in AUGMENTATIONS:
            wanted.add(name)
        else:
            raise ConfigError(f"unknown augmentation {name!r}; choose from standard, {', '.join(AUGMENTATIONS)}.")
    return tuple(op for op in AUGMENTATIONS if op in wanted)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


@dataclass(frozen=True)
class Augment:
    """Random changes of one ``uint8`` image ``(C, H, W)`` (output of the same shape and dtype).

    Args:
        ops: operations from :data:`AUGMENTATIONS`: ``crop`` (random resized crop of ``crop_scale`` of the
            area, aspect ``crop_ratio``, back to the input size), ``rotate`` (uniform in +-``degrees``,
            corners black), ``color`` (brightness and contrast, and saturation for RGB, each times a
            factor uniform in ``1 +- jitter``), ``flip`` (horizontal, probability 0.5).
    """

    ops: tuple[str, ...] = STANDARD
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 10.0
    jitter: float = 0.2

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        x = image
        if "crop" in self.ops:
            top, left, h, w = self._crop_box(x.shape[-2], x.shape[-1], generator)
            x = TF.resized_crop(x, top, left, h, w, list(x.shape[-2:]), antialias=True)
        if "rotate" in self.ops:
            x = TF.rotate(x, _uniform(-self.degrees, self.degrees, generator),
                          interpolation=TF.InterpolationMode.BILINEAR)
        if "color" in self.ops:
            lo, hi = 1 - self.jitter, 1 + self.jitter
            x = TF.adjust_brightness(x, _uniform(lo, hi, generator))
            x = TF.adjust_contrast(x, _uniform(lo, hi, generator))
            if x.shape[-3] == 3:
                x = TF.adjust_saturation(x, _uniform(lo, hi, generator))
        if "flip" in self.ops and float(torch.rand((), generator=generator)) < 0.5:
            x = TF.horizontal_flip(x)
        return x

    def batch(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """:meth:`__call__` on each image of a batch ``(N, C, H, W)``, in order."""
        return torch.stack([self(im, generator) for im in images]) if len(images) else images

    def _crop_box(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` as torchvision's ``RandomResizedCrop`` draws it (10 tries, then the whole image)."""
        area = height * width
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.crop_scale, generator)
            ratio = math.exp(_uniform(*log_ratio, generator))
            w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                return top, left, h, w
        return 0, 0, height, width
