"""Drawing: the recognition overlay (ROI, label, confidence, top-3, FPS) and the reference panel.

Everything works on RGB ``uint8`` arrays and returns new arrays; OpenCV draws, nothing is shown here.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import IMAGE_SUFFIXES, list_image_folder, natural_key
from ..errors import DataError
from ..images import open_image, printable, to_mode
from .recognizer import Prediction
from .roi import Roi
from .smoothing import Smoothed

GREEN = (60, 200, 90)
GREY = (150, 150, 150)
WHITE = (255, 255, 255)
DARK = (25, 25, 25)
AMBER = (250, 180, 40)
RED = (220, 60, 60)
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
log = logging.getLogger(__name__)


def put_text(image: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
             color: tuple[int, int, int] = WHITE, background: tuple[int, int, int] | None = DARK,
             thickness: int = 1) -> int:
    """Draw ``text`` with its top-left at ``org`` on a filled box; returns the y below it.

    OpenCV's fonts draw ASCII only (and crash on text that is not valid Unicode), so ``text`` is drawn as
    :func:`ascii_text` makes it.
    """
    import cv2

    text = ascii_text(text)
    (w, h), base = cv2.getTextSize(text, FONT, scale, thickness)
    x, y = org
    if background is not None:
        cv2.rectangle(image, (x - 2, y - 2), (x + w + 2, y + h + base + 2), background, -1)
    cv2.putText(image, text, (x, y + h), FONT, scale, color, thickness, cv2.LINE_AA)
    return y + h + base + 5


def ascii_text(text: str) -> str:
    """``text`` in ASCII for drawing: accents dropped (``café`` -> ``cafe``), bytes that are not UTF-8
    as ``\\xNN`` (see :func:`sabr.data.printable`), any other character as ``?``."""
    decomposed = unicodedata.normalize("NFKD", printable(str(text)))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).encode("ascii", "replace").decode("ascii")


def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
    """A ``side x side`` RGB thumbnail (centre crop to square, then resize)."""
    import cv2

    h, w = image.shape[:2]
    s = min(h, w)
    crop = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if crop.ndim == 2:
        crop = np.repeat(crop[:, :, None], 3, axis=2)
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)


def load_references(classes: Sequence[str], folder: str | Path) -> list[np.ndarray]:
    """One RGB example image per class, in class order.

    ``folder`` either has one sub-folder per class (the first image of each that reads as training reads it is
    used, see :mod:`sabr.images`; the sub-folder
    names must be the class names, as in a training folder), or holds exactly one image per class
    directly (natural order, e.g. ``gesture_0.jpg .. gesture_13.jpg``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"reference folder {folder} does not exist.")
    if any(d.is_dir() for d in folder.iterdir()):
        names, files = list_image_folder(folder)
        if list(names) != list(classes):
            raise DataError(f"reference folder {folder} has classes {names} but the model has {list(classes)}; "
                            "pass --references made for this model's dataset.")
    else:
        chosen = sorted((f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES),
                        key=lambda f: natural_key(f.name))
        if len(chosen) != len(classes):
            raise DataError(f"reference folder {folder} holds {len(chosen)} images but the model has "
                            f"{len(classes)} classes; it needs one image per class (or one sub-folder per class).")
        files = [[f] for f in chosen]
    return [_first_readable(fs) for fs in files]


def _first_readable(files: Sequence[Path]) -> np.ndarray:
    """The first of ``files`` that reads as training reads images (:mod:`sabr.images`), as RGB; the others are
    skipped with a warning, and a class with none gets a blank grey example."""
    for f in files:
        try:
            return np.asarray(to_mode(open_image(f), "RGB"))
        except DataError as exc:
            log.warning("reference images: skipping %s", exc)
    return np.full((8, 8, 3), 35, np.uint8)


def reference_panel(classes: Sequence[str], references: Sequence[np.ndarray] | None, height: int,
                    highlight: int | None = None, columns: int = 2) -> np.ndarray:
    """A panel with one thumbnail per class and its name; ``highlight`` (a class index) is framed."""
    import cv2

    n = len(classes)
    rows = -(-n // columns)
    side = max(24, min(96, (height - 24) // rows - 14))
    cell_h = side + 14
    panel = np.full((max(height, 24 + rows * cell_h), columns * (side + 8) + 8, 3), 35, dtype=np.uint8)
    put_text(panel, "references", (6, 4), 0.45, GREY, None)
    for k, name in enumerate(classes):
        r, c = divmod(k, columns)
        x, y = 8 + c * (side + 8), 24 + r * cell_h
        if references is not None:
            panel[y:y + side, x:x + side] = thumbnail(references[k], side)
        color = GREEN if k == highlight else GREY
        cv2.rectangle(panel, (x - 1, y - 1), (x + side, y + side), color, 3 if k == highlight else 1)
        put_text(panel, str(name)[:10], (x, y + side + 1), 0.35, color, None)
    return panel


def draw_recognition(frame: np.ndarray, roi: Roi, prediction: Prediction, smoothed: Smoothed,
                     classes: Sequence[str], fps: float | None = None,
                     references: Sequence[np.ndarray] | None = None, min_height: int = 360) -> np.ndarray:
    """The on-screen view: the frame with its ROI and readings, and the reference panel to its right.

    Frames smaller than ``min_height`` pixels are enlarged for display (the ROI with them).
    """
    import cv2

    r = roi.clamped(frame.shape[1], frame.shape[0])
    scale = max(1.0, min_height / frame.shape[0])
    if scale > 1.0:
        view = cv2.resize(frame, (round(frame.shape[1] * scale), round(frame.shape[0] * scale)),
                          interpolation=cv2.INTER_LINEAR)
        r = Roi(round(r.x * scale), round(r.y * scale), round(r.width * scale), round(r.height * scale))
    else:
        view = frame.copy()
    claimed = smoothed.label is not None
    cv2.rectangle(view, (r.x, r.y), (r.x + r.width - 1, r.y + r.height - 1), GREEN if claimed else AMBER, 2)
    scale = max(0.4, min(0.7, view.shape[0] / 500))
    y = 6
    headline = (f"{classes[smoothed.label]}  {100 * smoothed.confidence:.0f}%" if claimed
                else f"--  ({100 * smoothed.confidence:.0f}% < threshold)")
    y = put_text(view, headline, (6, y), scale * 1.3, GREEN if claimed else AMBER, thickness=2)
    top3 = "  ".join(f"{classes[k]}:{100 * p:.0f}%" for k, p in prediction.top3)
    y = put_text(view, f"top-3 {top3}", (6, y), scale * 0.8)
    info = f"{prediction.latency_ms:.1f} ms/frame"
    if fps is not None:
        info = f"{fps:.1f} FPS  " + info
    put_text(view, info, (6, y), scale * 0.8, GREY)
    panel = reference_panel(classes, references, view.shape[0], smoothed.label)
    return hstack(view, panel)


def hstack(left: np.ndarray, right: np.ndarray, background: int = 35) -> np.ndarray:
    """Place two RGB images side by side, padding the shorter one at the bottom."""
    h = max(left.shape[0], right.shape[0])
    out = np.full((h, left.shape[1] + right.shape[1], 3), background, dtype=np.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1]:] = right
    return out
