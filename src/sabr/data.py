"""Datasets, splits and the one preprocessing path shared by training and the applications.

Three kinds of source are read:

* ``"digits"``: scikit-learn's embedded 8x8 handwritten digits (1,797 real images, no download);
* an IDX folder (e.g. Fashion-MNIST's ``train-images-idx3-ubyte.gz`` ...);
* an image folder with one sub-folder per class (e.g. HG14's ``Gesture_0 .. Gesture_13``), classes in
  natural order (``Gesture_2`` before ``Gesture_10``), ``jpg/jpeg/png`` in any letter case, EXIF
  orientation applied.

:class:`Preprocess` turns any image (PIL, or a numpy array) into the model's input tensor. Training
caches its first half (:meth:`Preprocess.to_uint8`: channels and size) and applies the second
(:meth:`Preprocess.normalize`) per batch, so the applications run exactly the code training ran. Files and
arrays are decoded to 8 bits by :mod:`sabr.images`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError, DataError
from .fields import check_number
from .idx import FASHION_MNIST_CLASSES, class_names, find_idx, read_idx_pair  # noqa: F401 (re-exported)
from .images import as_uint8, open_image, printable, to_8bit, to_mode

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocess:
    """Image -> normalised ``float32`` tensor ``(channels, image_size, image_size)``.

    Args:
        image_size: side of the square model input, in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        mean: per-channel mean subtracted from values scaled to [0, 1].
        std: per-channel standard deviation they are divided by.
    """

    image_size: int
    channels: int
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.5,)

    def __post_init__(self) -> None:
        for name, value in (("mean", self.mean), ("std", self.std)):
            if len(value) not in (1, self.channels):
                raise ConfigError(f"Preprocess {name} needs one value or one per channel ({self.channels}), got "
                                  f"{list(value)}.")
            for v in value:
                check_number(name, v, gt=0) if name == "std" else check_number(name, v)

    def to_uint8(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Convert channels and resize (bilinear, antialiased): ``uint8`` tensor ``(C, H, W)``.

        ``image`` is a PIL image or an RGB / grayscale array ``(H, W[, C])``, decoded to 8 bits by
        :mod:`sabr.images`' rules (16-bit scaled, floats as [0, 1]; ``DataError`` for what cannot be shown).
        """
        image = Image.fromarray(as_uint8(image)) if isinstance(image, np.ndarray) else to_8bit(image)
        image = to_mode(image, "L" if self.channels == 1 else "RGB")
        if image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """``uint8`` batch ``(N, C, H, W)`` (or one image) -> normalised ``float32``, on its device."""
        x = batch.float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Full preprocessing of one image: ``float32`` tensor ``(C, H, W)``."""
        return self.normalize(self.to_uint8(image))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["image_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))


# --------------------------------------------------------------------------- datasets
@dataclass
class ImageDataset:
    """Images in memory, already converted by :meth:`Preprocess.to_uint8`.

    Attributes:
        name: short dataset name (used in run folder names).
        images: ``uint8`` tensor ``(N, C, H, W)``.
        labels: ``int64`` tensor ``(N,)``.
        classes: class names in label order.
        test_index: indices of a test split the dataset ships with (e.g. IDX ``t10k``), else ``None``.
        skipped: files that could not be read and were left out.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    test_index: np.ndarray | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _folder_name(path: Path) -> str:
    """A short dataset name from its folder; generic names (``Dataset``, ``train``) take the parent's."""
    parts = [p for p in (path.resolve().parent.name, path.name) if p]
    if parts[-1].lower() not in {"dataset", "datasets", "data", "images", "train", "training"}:
        parts = parts[-1:]
    return re.sub(r"[^A-Za-z0-9]+", "-", parts[0]).strip("-").lower() or "images"


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically: ``Gesture_2`` < ``Gesture_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def default_image_size(source: str | Path) -> int:
    """The native size of the built-in sources; 64 for image folders."""
    if str(source) == "digits":
        return 8
    if find_idx(Path(source)):
        return 28
    return 64


def default_channels(source: str | Path) -> int:
    """1 for the grayscale sources (digits, IDX), 3 for image folders."""
    return 1 if str(source) == "digits" or find_idx(Path(source)) else 3


def load_dataset(
    source: str | Path,
    preprocess: Preprocess,
    max_per_class: int | None = None,
    on_bad_image: str = "skip",
    seed: int = 0,
    progress: bool = True,
) -> ImageDataset:
    """Read a dataset into memory, converting every image with ``preprocess.to_uint8``.

    Args:
        source: ``"digits"``, an IDX folder, or an image folder with one sub-folder per class.
        preprocess: fixes the image size and channels.
        max_per_class: keep at most this many images per class (a random, seeded choice), for quick runs.
        on_bad_image: ``"skip"`` unreadable files (they are listed in ``dataset.skipped``) or ``"error"``.
        seed: seed for the ``max_per_class`` choice.
    """
    if on_bad_image not in ("skip", "error"):
        raise DataError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}.")
    if str(source) == "digits":
        ds = _load_digits(preprocess)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"data path {path} does not exist; pass --data with an image folder, an IDX folder, "
                            "or leave it out for the embedded digits.")
        if not path.is_dir():
            raise DataError(f"data path {path} is not a folder; --data expects a folder with one sub-folder per class "
                            "(or IDX files).")
        idx = find_idx(path)
        ds = (_load_idx(path, idx, preprocess) if idx
              else _load_folder(path, preprocess, on_bad_image, progress, max_per_class, seed))
    if max_per_class and len(ds) > max_per_class * len(ds.classes):
        keep = per_class(np.arange(len(ds)), ds.labels.numpy(), max_per_class, seed)
        test_index = None if ds.test_index is None else np.flatnonzero(np.isin(keep, ds.test_index))
        ds = ImageDataset(ds.name, ds.images[keep], ds.labels[keep], ds.classes, test_index, ds.skipped)
    if len(ds.classes) < 2:
        raise DataError(f"dataset {source} has {len(ds.classes)} class; classification needs at least 2 "
                        "class folders with images.")
    return ds


def _load_digits(pre: Preprocess) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.rint(bunch.images / 16.0 * 255.0).astype(np.uint8)  # values 0..16 -> 0..255
    images = _convert_arrays(raw, pre)
    return ImageDataset("digits", images, torch.as_tensor(bunch.target, dtype=torch.int64),
                        [str(c) for c in bunch.target_names])


def _convert_arrays(raw: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """``(N, H, W)`` uint8 grayscale arrays -> ``(N, C, S, S)``; identical to ``to_uint8`` per image."""
    if raw.shape[1:] == (pre.image_size, pre.image_size) and pre.channels == 1:
        return torch.from_numpy(raw.copy()).unsqueeze(1)  # what to_uint8 returns for each, without the loop
    return torch.stack([pre.to_uint8(a) for a in raw])


def _load_idx(path: Path, idx: dict[str, tuple[Path, Path]], pre: Preprocess) -> ImageDataset:
    parts = sorted(idx, key=lambda k: k != "train")  # train first, then t10k/test
    images, labels, test_index, start = [], [], None, 0
    for part in parts:
        x, y = read_idx_pair(*idx[part])
        if part in ("t10k", "test"):
            test_index = np.arange(start, start + len(x))
        images.append(_convert_arrays(x, pre))
        labels.append(torch.as_tensor(y.astype(np.int64)))
        start += len(x)
    y = torch.cat(labels)
    return ImageDataset(_folder_name(path), torch.cat(images), y, class_names(path, int(y.max()) + 1), test_index)


def list_image_folder(path: Path) -> tuple[list[str], list[list[Path]]]:
    """Class names (natural order) and each class's image files (natural order)."""
    class_dirs = sorted((d for d in _entries(path) if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: natural_key(d.name))
    if not class_dirs:
        raise DataError(f"{path} has no class sub-folders; arrange images as {path}/<class name>/<image>.jpg.")
    files = [sorted((f for f in _entries(d) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda f: natural_key(f.name)) for d in class_dirs]
    empty = [d.name for d, fs in zip(class_dirs, files) if not fs]
    if empty:
        raise DataError(f"class folder(s) {', '.join(empty)} in {path} hold no .jpg/.jpeg/.png image; "
                        "add images or remove the folder(s).")
    return [d.name for d in class_dirs], files


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``; an unreadable folder (permissions, I/O error) is a :class:`DataError`."""
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read the folder {printable(str(folder))} ({exc.strerror or exc}); make it "
                        "readable (e.g. chmod -R a+rX) or leave it out of --data.") from None


def read_folder(path: Path, read: Callable[[Path], Any], on_bad_image: str, progress: bool, verb: str,
                max_per_class: int | None = None, seed: int = 0) -> tuple[list[str], list[int], list, list[str]]:
    """``(classes, labels, read(file) of each readable file, skipped files)`` of an image folder.

    ``max_per_class`` keeps a seeded choice of files per class, made before reading (a quick run reads only
    what it uses). A file ``read`` refuses with ``DataError`` is skipped (``on_bad_image="skip"``) or stops
    everything with how to fix it (``"error"``); a class left with no readable file is an error.
    """
    from tqdm.auto import tqdm

    classes, files = list_image_folder(path)
    if max_per_class:
        rng = np.random.default_rng(seed)
        files = [sorted((fs[i] for i in rng.permutation(len(fs))[:max_per_class]), key=lambda f: natural_key(f.name))
                 for fs in files]
    labels, values, skipped = [], [], []
    flat = [(label, f) for label, fs in enumerate(files) for f in fs]
    for label, f in tqdm(flat, desc=f"{verb} {path.name}", unit="img", disable=None if progress else True, leave=False):
        try:
            values.append(read(f))
        except DataError as exc:
            if on_bad_image == "error":
                raise DataError(f"{exc}. The file is corrupt, truncated or not an image: delete or replace it, or "
                                "pass --on-bad-image skip to leave such files out (they are listed in the run "
                                "folder's skipped_images.txt).") from exc
            skipped.append(str(f))
            continue
        labels.append(label)
    if skipped:
        log.warning("skipped %d unreadable image file(s) in %s (first: %s)", len(skipped), printable(str(path)),
                    printable(skipped[0]))
    missing = sorted(set(range(len(classes))) - set(labels))
    if missing:
        raise DataError(f"class folder(s) {', '.join(classes[i] for i in missing)} in {path} hold no readable image.")
    return classes, labels, values, skipped


def _load_folder(path: Path, pre: Preprocess, on_bad_image: str, progress: bool,
                 max_per_class: int | None = None, seed: int = 0) -> ImageDataset:
    classes, labels, images, skipped = read_folder(path, lambda f: pre.to_uint8(open_image(f)), on_bad_image,
                                                   progress, "reading", max_per_class, seed)
    return ImageDataset(_folder_name(path), torch.stack(images), torch.as_tensor(labels, dtype=torch.int64), classes,
                        skipped=skipped)


def per_class(index: np.ndarray, labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """At most ``n`` of ``index`` per class (a random choice seeded with ``seed``), sorted; ``labels`` are
    the whole dataset's (``labels[index]`` those of ``index``)."""
    rng = np.random.default_rng(seed)
    y = labels[index]
    return np.sort(np.concatenate([rng.permutation(index[y == c])[:n] for c in np.unique(y)]))


# --------------------------------------------------------------------------- splits
@dataclass
class Splits:
    """Index arrays of the three splits (stratified, fixed seed, shared by all phases)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def split_dataset(ds: ImageDataset, seed: int = 0, test_fraction: float = 0.1, val_fraction: float = 0.2,
                  train_per_class: int | None = None, val_per_class: int | None = None) -> Splits:
    """Stratified split: ``test_fraction`` for test, then ``val_fraction`` of the rest for validation.

    With the defaults that is 72/18/10. A dataset that ships its own test split (IDX ``t10k``) keeps it.
    ``train_per_class`` then keeps at most that many training images per class (:func:`per_class`,
    seeded): validation and test stay whole, so their figures keep their full precision.
    ``val_per_class`` likewise keeps at most that many validation images per class (a cheaper validation
    pass, at the price of precision: 2,000 images at 88% have a standard error of 0.73 points).
    """
    from sklearn.model_selection import train_test_split

    y = ds.labels.numpy()
    index = np.arange(len(y))
    counts = np.bincount(y, minlength=len(ds.classes))
    if counts.min() < 3:
        raise DataError(f"class {ds.classes[int(counts.argmin())]!r} has {counts.min()} image(s); "
                        "each class needs at least 3 (one each for training, validation and test).")
    try:
        if ds.test_index is not None:
            test = np.asarray(ds.test_index)
            rest = np.setdiff1d(index, test)
        else:
            rest, test = train_test_split(index, test_size=test_fraction, stratify=y, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction, stratify=y[rest], random_state=seed)
        if train_per_class:
            train = per_class(train, y, train_per_class, seed)
        if val_per_class:
            val = per_class(val, y, val_per_class, seed)
    except ValueError as exc:  # a split too small to hold one image of every class (said in sabr's words)
        n_test = len(ds.test_index) if ds.test_index is not None else math.ceil(test_fraction * len(y))
        n_val = math.ceil(val_fraction * (len(y) - n_test))
        raise DataError(f"{len(y)} images are too few to split {len(ds.classes)} classes into training, validation "
                        f"and test sets with every class in each: the test split would hold {n_test} and the "
                        f"validation split {n_val} images; add images, or raise --max-per-class.") from exc
    return Splits(np.sort(train), np.sort(val), np.sort(test))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``uint8`` images scaled to [0, 1] (for :class:`Preprocess`)."""
    x = images.float().div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    std = x.std(dim=1).clamp_min(1e-3)
    return tuple(round(float(v), 6) for v in x.mean(dim=1)), tuple(round(float(v), 6) for v in std)
