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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A compact_cnn for 10 RGB classes at 16x16, saved with save_checkpoint like `sabr run` does.

    Trained for a few steps on real photos so that it is a real (if weak) classifier; the tests check
    the applications' behaviour, not accuracy.
    """
    from sabr import Preprocess, create_model, save_checkpoint

    photos = sign_photos(per_class=2)
    from sabr.data import open_image

    pre = Preprocess(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.stack([pre(open_image(f)) for f in photos])
    y = torch.tensor([int(f.parent.name) for f in photos])
    torch.manual_seed(0)
    model = create_model("compact_cnn", num_classes=10, in_chans=3, image_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    meta = {"phase": "pruned", "model": {"name": "compact_cnn", "num_classes": 10, "in_chans": 3, "image_size": 16},
            "classes": [str(i) for i in range(10)], "dataset": "sign", "preprocess": pre.to_dict()}
    return save_checkpoint(model, tmp_path_factory.mktemp("model") / "pruned", meta)
