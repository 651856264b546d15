"""Image folders read from disk batch by batch, for folders that do not fit in memory (``--stream``).

:class:`FileImages` stands where a split's ``uint8`` image tensor would (``Split(FileImages(...), labels)``):
indexing it reads and converts the files (:meth:`sabr.data.Preprocess.to_uint8`, the one preprocessing
path), and :func:`sabr.train.batches` reads its batches through a :class:`torch.utils.data.DataLoader`
with ``workers`` processes, in the same seeded order as the in-memory path. Augmentation runs in the
workers, seeded from the phase's generator, so the batches are reproducible (and a resumed run exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .augment import Augment
from .data import ImageDataset, Preprocess, read_folder
from .images import check_image, open_image

STATS_SAMPLE = 512
"""Training images (a seeded sample) whose pixels give the normalisation when the folder is streamed."""


class FileImages:
    """Image files that behave like a ``uint8`` tensor ``(N, C, H, W)`` when indexed (read on demand).

    Args:
        files: the image paths, one per sample.
        preprocess: converts each file (channels, size).
        workers: DataLoader worker processes for :meth:`batches` (0: read in this process).
    """

    def __init__(self, files: Sequence[str | Path], preprocess: Preprocess, workers: int = 0) -> None:
        self.files = [str(f) for f in files]
        self.preprocess, self.workers = preprocess, workers

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> torch.Tensor:
        """The ``uint8`` tensor ``(C, H, W)`` of file ``i``."""
        return self.preprocess.to_uint8(open_image(self.files[i]))

    def __getitem__(self, index) -> "torch.Tensor | FileImages":
        """A slice gives a :class:`FileImages` of those files; an index tensor or list gives their images."""
        if isinstance(index, slice):
            return FileImages(self.files[index], self.preprocess, self.workers)
        return torch.stack([self.read(int(i)) for i in index])

    def subset(self, index: Sequence[int], preprocess: Preprocess | None = None) -> "FileImages":
        """The files at ``index``, read with ``preprocess`` (default: this one's)."""
        return FileImages([self.files[int(i)] for i in index], preprocess or self.preprocess, self.workers)

    def batches(self, chunks: list[torch.Tensor], labels: torch.Tensor, augment: Augment | None,
                generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(uint8 images, labels)`` for each chunk of indices, read by the DataLoader's workers.

        The workers' seeds are drawn from ``generator`` (when given), so ``augment`` draws the same on
        every run with the same generator state.
        """
        loader = torch.utils.data.DataLoader(
            _Samples(self, labels, augment), batch_sampler=[c.tolist() for c in chunks], num_workers=self.workers,
            generator=generator, collate_fn=_collate, persistent_workers=False)
        yield from loader


@dataclass
class _Samples(torch.utils.data.Dataset):
    """One sample per file: ``(uint8 image, label)``, augmented in the worker when ``augment`` is set."""

    images: FileImages
    labels: torch.Tensor
    augment: Augment | None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images.read(i)
        if self.augment is not None:
            image = self.augment(image)  # the worker's torch RNG, seeded by the DataLoader from the generator
        return image, self.labels[i]


def _collate(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def scan_folder(path: str | Path, preprocess: Preprocess, max_per_class: int | None = None, seed: int = 0,
                workers: int = 0, on_bad_image: str = "skip", progress: bool = False) -> ImageDataset:
    """An image folder's classes, labels and files, without decoding the images: the dataset's ``images``
    is a :class:`FileImages`. ``max_per_class`` keeps a seeded choice of files per class, as
    :func:`sabr.data.load_dataset` does. Every file's structure is checked first
    (:func:`sabr.images.check_image`), so that a file that is not an image is skipped (listed in the
    dataset's ``skipped``) or, with ``on_bad_image="error"``, refused before training rather than found
    in the middle of an epoch."""
    from .data import _folder_name

    def checked(f: Path) -> Path:
        check_image(f)
        return f

    path = Path(path).expanduser()
    classes, labels, files, skipped = read_folder(path, checked, on_bad_image, progress, "checking", max_per_class,
                                                  seed)
    images, targets = FileImages(files, preprocess, workers), torch.as_tensor(labels, dtype=torch.int64)
    return ImageDataset(_folder_name(path), images, targets, classes, skipped=skipped)  # type: ignore[arg-type]


def sample_images(images: FileImages, index: np.ndarray, seed: int = 0, limit: int = STATS_SAMPLE) -> torch.Tensor:
    """The ``uint8`` images of at most ``limit`` of ``index`` (a seeded choice), e.g. for channel statistics."""
    if len(index) > limit:
        index = np.sort(np.random.default_rng(seed).choice(index, limit, replace=False))
    return images[torch.as_tensor(index)]
