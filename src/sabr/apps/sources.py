"""Frame sources: a webcam index, a video file, or a folder of images, all yielding RGB frames.

:func:`open_source` picks the kind from the argument (``"0"`` -> webcam 0; a folder -> its images; a
file -> a video) and raises :class:`SourceError` with a clear message when there is nothing to read.
:func:`write_video` writes frames to an mp4 (used for annotated output and the demo video).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..data import IMAGE_SUFFIXES, natural_key
from ..images import open_image, to_mode
from ..errors import DataError, SabrError

log = logging.getLogger(__name__)


class SourceError(SabrError):
    """A frame source cannot be opened or read (no camera, unreadable video, empty folder)."""


@dataclass
class Frame:
    """One frame: ``image`` is RGB ``uint8`` ``(H, W, 3)``; ``name`` is the file name for image folders."""

    index: int
    image: np.ndarray
    name: str


class FrameSource:
    """Iterable of :class:`Frame`. ``fps`` is the rate to play or write the frames at; ``is_live`` for cameras."""

    fps: float = 10.0
    is_live: bool = False
    description: str = ""

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


class ImageFolderSource(FrameSource):
    """The ``.jpg/.jpeg/.png`` files of a folder (not its sub-folders), in natural order."""

    def __init__(self, folder: str | Path, fps: float = 2.0) -> None:
        self.folder = Path(folder)
        self.files = sorted((f for f in self.folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                            key=lambda f: natural_key(f.name))
        if not self.files:
            raise SourceError(f"image folder {self.folder} holds no .jpg/.jpeg/.png file; pass a folder with images "
                              "(sub-folders are not searched), a video file, or a webcam index.")
        self.fps = fps
        self.description = f"{len(self.files)} images in {self.folder}"

    def __iter__(self) -> Iterator[Frame]:
        for i, f in enumerate(self.files):
            try:
                image = to_mode(open_image(f), "RGB")
            except DataError as exc:
                log.warning("skipping %s", exc)
                continue
            yield Frame(i, np.asarray(image, dtype=np.uint8), f.name)


class VideoSource(FrameSource):
    """A video file (anything OpenCV's FFmpeg backend reads), or a webcam when ``target`` is an int."""

    def __init__(self, target: str | Path | int) -> None:
        import cv2

        self.is_live = isinstance(target, int)
        self._cap = cv2.VideoCapture(target if self.is_live else str(target))
        if not self._cap.isOpened():
            self._cap.release()
            if self.is_live:
                raise SourceError(f"cannot open webcam {target}: no camera with that index (or it is busy). "
                                  "Try another index, or pass a video file or a folder of images as --source.")
            raise SourceError(f"cannot read video {target}: OpenCV could not open it (unsupported or damaged file).")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 240 else 30.0
        self.description = f"webcam {target}" if self.is_live else f"video {target}"
        self._name = "camera" if self.is_live else Path(str(target)).stem

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        i = 0
        while True:
            ok, bgr = self._cap.read()
            if not ok:
                if i == 0:
                    raise SourceError(f"{self.description} gave no frame; the file is empty or unreadable.")
                return
            yield Frame(i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), f"{self._name}-{i:06d}")
            i += 1

    def close(self) -> None:
        """Release the capture."""
        self._cap.release()


def open_source(spec: str | int | Path) -> FrameSource:
    """Open ``spec``: a webcam index (``0`` or ``"0"``), a folder of images, or a video file."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return VideoSource(int(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path)
    if not path.exists():
        raise SourceError(f"source {spec} does not exist; pass a webcam index (0), a video file or a folder of images.")
    return VideoSource(path)


class VideoWriter:
    """Writes RGB frames to an mp4 file (``mp4v``); the size is fixed by the first frame.

    Args:
        path: the ``.mp4`` file to write.
        fps: frames per second of the file.
    """

    def __init__(self, path: str | Path, fps: float = 10.0) -> None:
        self.path = Path(path)
        self.fps = fps
        self._writer = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one RGB frame (resized to the first frame's size)."""
        import cv2

        h, w = rgb.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise SourceError(f"cannot write video {self.path}: this OpenCV build has no mp4v encoder.")
        if (w, h) != self._size:
            rgb = cv2.resize(rgb, self._size)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(frames: Sequence[np.ndarray] | Iterator[np.ndarray], path: str | Path, fps: float = 10.0) -> int:
    """Write RGB frames to ``path`` (mp4); returns the number of frames written."""
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
        return writer.frames


def demo_frames(images: Sequence[np.ndarray], hold: int = 10, size: tuple[int, int] = (320, 240),
                fraction: float = 0.75, background: int = 40) -> Iterator[np.ndarray]:
    """Frames of a demo video: each RGB photo, scaled into the default centred ROI of a ``size`` canvas,
    held for ``hold`` frames (so that a recogniser with the same ROI sees exactly the photo).
    """
    import cv2

    from .roi import Roi

    roi = Roi.centered(size[0], size[1], fraction)
    for image in images:
        canvas = np.full((size[1], size[0], 3), background, dtype=np.uint8)
        canvas[roi.y:roi.y + roi.height, roi.x:roi.x + roi.width] = cv2.resize(
            image, (roi.width, roi.height), interpolation=cv2.INTER_AREA)
        for _ in range(hold):
            yield canvas
