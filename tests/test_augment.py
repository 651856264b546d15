"""Augmentation: each option changes images reproducibly from the generator, and only training passes."""

from __future__ import annotations

import pytest
import torch

from sabr.augment import AUGMENTATIONS, Augment, parse_augment
from sabr.errors import ConfigError
from sabr.train import Split, batches


def _images(n: int = 4, channels: int = 3) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().images[:n] / 16 * 255).round().to(torch.uint8)
    x = torch.nn.functional.interpolate(x[:, None].float(), size=16).to(torch.uint8)
    return x.expand(-1, channels, -1, -1).contiguous()


def test_parse_augment_expands_standard_without_flip():
    assert parse_augment(None) == ()
    assert parse_augment(["standard"]) == ("crop", "rotate", "color")
    assert parse_augment(["flip", "standard"]) == AUGMENTATIONS
    with pytest.raises(ConfigError, match="unknown augmentation 'blur'"):
        parse_augment(["blur"])


@pytest.mark.parametrize("op", AUGMENTATIONS)
@pytest.mark.parametrize("channels", [1, 3])
def test_each_option_changes_images_reproducibly(op, channels):
    images, aug = _images(8, channels), Augment((op,))
    out = aug.batch(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)  # eight draws: at least one image changes (a flip has p = 0.5 each)
    assert torch.equal(out, aug.batch(images, torch.Generator().manual_seed(1)))
    if op == "flip":
        for before, after in zip(images, out):
            assert torch.equal(after, before) or torch.equal(after, before.flip(-1))


def test_split_augments_shuffled_passes_only():
    images = _images(6)
    split = Split(images, torch.arange(6), Augment(("rotate",)))
    shuffled = list(batches(split, 3, torch.Generator().manual_seed(0)))
    assert not any(torch.equal(x, images[y]) for x, y in shuffled)
    ordered = torch.cat([x for x, _ in batches(split, 3)])
    assert torch.equal(ordered, images)  # evaluation sees the images as stored
