"""A real image folder for the tests: scikit-learn's digits written as PNG files, one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def digits_folder(root: Path, per_class: int = 12, classes: int = 4) -> Path:
    """``root/digit_<c>/<i>.png`` for the first ``per_class`` images of the first ``classes`` digits (RGB, 16x16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for c in range(classes):
        folder = root / f"digit_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(bunch.images[bunch.target == c][:per_class]):
            gray = np.rint(image / 16 * 255).astype(np.uint8)
            Image.fromarray(gray).convert("RGB").resize((16, 16), Image.Resampling.NEAREST).save(folder / f"{i}.png")
    return root
