"""IDX files (the MNIST / Fashion-MNIST format): finding them in a folder, reading them, naming their classes.

Pure readers returning numpy arrays and names; :func:`sabr.data.load_dataset` turns them into a dataset.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from .errors import DataError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


def find_idx(path: Path) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images, labels), "t10k": ...}`` for the IDX files in a folder (empty when there are none)."""
    if not path.is_dir():
        return {}
    found = {}
    for images in sorted(path.glob("*-images-idx3-ubyte*")):
        prefix = images.name.split("-images-")[0]
        labels = sorted(path.glob(f"{prefix}-labels-idx1-ubyte*"))
        if labels:
            found[prefix] = (images, labels[0])
    return found


def read_idx(path: Path) -> np.ndarray:
    """The unsigned-byte array an IDX file (optionally gzipped) holds, in its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DataError(f"cannot read IDX file {path}: not an unsigned-byte IDX file")
        shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` images and ``(N,)`` labels of one part (``train``, ``t10k``), checked to match."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(f"{images} holds {x.ndim}-dimensional data and {labels} {y.ndim}-dimensional; "
                        "IDX images are (count, height, width) and labels (count,).")
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels.")
    return x, y


def class_names(path: Path, n: int) -> list[str]:
    """The names of labels ``0 .. n-1``: the folder's ``classes.txt`` (one per line), Fashion-MNIST's, or numbers."""
    names_file = path / "classes.txt"
    if names_file.exists():
        try:
            text = names_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {names_file} ({exc}); write it as UTF-8 text, one class name per line.") \
                from exc
        classes = [line.strip() for line in text.splitlines() if line.strip()]
        if len(classes) != n:
            raise DataError(f"{names_file} names {len(classes)} classes but the labels are 0 .. {n - 1}; give one "
                            f"name per line for each of the {n} labels, or delete it to number them.")
        return classes
    if "fashion" in path.name.lower() and n == 10:
        return list(FASHION_MNIST_CLASSES)
    return [str(i) for i in range(n)]
