"""Shared fixtures of the apps tests: real sign-language photos and a small model saved by sabr."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .conftest import shared_path


def sign_folder() -> Path:
    """The sign-language digits (one sub-folder per class); skips the test when they are absent."""
    return shared_path("sign-language-digits", "Dataset")


def sign_photos(per_class: int = 1, classes=range(10)) -> list[Path]:
    """The first ``per_class`` photos of each class of the sign-language digits (skip if absent)."""
    folder = sign_folder()
    files = []
    for c in classes:
        files += sorted((folder / str(c)).glob("*.JPG"))[:per_class]
    return files


def trained_checkpoint(x: torch.Tensor, y: torch.Tensor, steps: int, path: Path) -> Path:
    """A compact_cnn for 10 RGB classes at 16x16 trained ``steps`` full-batch Adam steps on ``x``/``y`` (made
    with :func:`sign_preprocess`), saved with save_checkpoint like `sabr run` does."""
    from sabr import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("compact_cnn", num_classes=10, in_chans=3, image_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    meta = {"phase": "pruned", "model": {"name": "compact_cnn", "num_classes": 10, "in_chans": 3, "image_size": 16},
            "classes": [str(i) for i in range(10)], "dataset": "sign", "preprocess": sign_preprocess().to_dict()}
    return save_checkpoint(model, path, meta)


def sign_preprocess():
    """The preprocessing of the apps tests' small models."""
    from sabr import Preprocess

    return Preprocess(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def checkpoint_and_frames(folder: Path) -> Path:
    """``folder/ck/m``: an untrained 3-class compact_cnn checkpoint; ``folder/frames``: three grey 32x32 PNGs."""
    import numpy as np
    from PIL import Image

    from sabr import Preprocess, create_model, save_checkpoint

    model = create_model("compact_cnn", num_classes=3, in_chans=1, image_size=8)
    (folder / "ck").mkdir()
    save_checkpoint(model, folder / "ck" / "m", {
        "model": {"name": "compact_cnn", "num_classes": 3, "in_chans": 1, "image_size": 8},
        "classes": ["a", "b", "c"], "preprocess": Preprocess(8, 1, (0.5,), (0.5,)).to_dict()})
    (folder / "frames").mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(folder / "frames" / f"{i}.png")
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A compact_cnn for 10 RGB classes at 16x16, saved with save_checkpoint like `sabr run` does.

    Trained for a few steps on real photos so that it is a real (if weak) classifier; the tests check
    the applications' behaviour, not accuracy.
    """
    from sabr.data import open_image

    photos = sign_photos(per_class=2)
    pre = sign_preprocess()
    x = torch.stack([pre(open_image(f)) for f in photos])
    y = torch.tensor([int(f.parent.name) for f in photos])
    return trained_checkpoint(x, y, 5, tmp_path_factory.mktemp("model") / "pruned")
