"""The region of interest: the square of the frame that is classified, and dragging it with the mouse.

Pure objects (no OpenCV window needed): :class:`Roi` is a box in pixel coordinates, :class:`RoiDragger`
turns mouse press / move / release events into new boxes, clamped inside the frame.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roi:
    """A box ``(x, y, width, height)`` in pixels; ``(x, y)`` is the top-left corner."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def centered(cls, frame_width: int, frame_height: int, fraction: float = 0.75) -> "Roi":
        """The default ROI: a centred square whose side is ``fraction`` of the frame's shorter side.

        Args:
            frame_width, frame_height: the frame size in pixels.
            fraction: side of the square over ``min(frame_width, frame_height)``, in (0, 1].
        """
        if not 0 < fraction <= 1:
            raise ConfigError(f"the ROI fraction must be in (0, 1], got {fraction}.")
        side = max(1, int(round(fraction * min(frame_width, frame_height))))
        return cls((frame_width - side) // 2, (frame_height - side) // 2, side, side)

    @classmethod
    def parse(cls, text: str) -> "Roi":
        """``"x,y,w,h"`` (pixels) -> :class:`Roi`."""
        try:
            x, y, w, h = (int(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"--roi expects four integers x,y,w,h in pixels, got {text!r}.") from None
        if w < 1 or h < 1:
            raise ConfigError(f"the ROI needs a positive width and height, got {text!r}.")
        return cls(x, y, w, h)

    def contains(self, px: int, py: int) -> bool:
        """Whether the pixel ``(px, py)`` lies inside the box."""
        return self.x <= px < self.x + self.width and self.y <= py < self.y + self.height

    def moved(self, dx: int, dy: int) -> "Roi":
        """The same box shifted by ``(dx, dy)`` pixels."""
        return Roi(self.x + dx, self.y + dy, self.width, self.height)

    def clamped(self, frame_width: int, frame_height: int) -> "Roi":
        """The box moved (and, if larger than the frame, shrunk) so that it lies inside the frame."""
        w, h = min(self.width, frame_width), min(self.height, frame_height)
        x = min(max(self.x, 0), frame_width - w)
        y = min(max(self.y, 0), frame_height - h)
        return Roi(x, y, w, h)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """The pixels of ``frame`` (``(H, W[, C])``) inside the box, after clamping it to the frame."""
        r = self.clamped(frame.shape[1], frame.shape[0])
        return frame[r.y:r.y + r.height, r.x:r.x + r.width]


def start_roi(roi: Roi | None, frame_width: int, frame_height: int, fraction: float = 0.75) -> Roi:
    """The box a ``frame_width`` x ``frame_height`` frame starts with: ``roi`` (``--roi``) or else the centred
    square of ``fraction``. A given ``roi`` that does not lie inside the frame is moved inside it (shrunk if
    larger), with a warning that names both boxes: never silently."""
    if roi is None:
        return Roi.centered(frame_width, frame_height, fraction)
    inside = roi.clamped(frame_width, frame_height)
    if inside != roi:
        log.warning("--roi %d,%d,%d,%d does not lie inside the %dx%d frame; using %d,%d,%d,%d instead", roi.x, roi.y,
                    roi.width, roi.height, frame_width, frame_height, inside.x, inside.y, inside.width, inside.height)
    return inside


class RoiDragger:
    """Mouse dragging of a :class:`Roi`: press inside the box, move, release.

    Args:
        roi: the initial box.
        frame_size: ``(width, height)`` of the frames; the box never leaves them.
    """

    def __init__(self, roi: Roi, frame_size: tuple[int, int]) -> None:
        self.frame_size = frame_size
        self.roi = roi.clamped(*frame_size)
        self._grab: tuple[int, int] | None = None  # pointer offset from the box corner while dragging

    @property
    def dragging(self) -> bool:
        """Whether a drag is in progress."""
        return self._grab is not None

    def press(self, px: int, py: int) -> None:
        """Mouse button down at ``(px, py)``: starts a drag when the pointer is inside the box."""
        if self.roi.contains(px, py):
            self._grab = (px - self.roi.x, py - self.roi.y)

    def move(self, px: int, py: int) -> Roi:
        """Pointer moved to ``(px, py)``: while dragging, the box follows it (clamped to the frame)."""
        if self._grab is not None:
            self.roi = Roi(px - self._grab[0], py - self._grab[1], self.roi.width,
                           self.roi.height).clamped(*self.frame_size)
        return self.roi

    def release(self) -> None:
        """Mouse button up: the drag ends, the box stays where it is."""
        self._grab = None

    def on_mouse(self, event: int, px: int, py: int, flags: int = 0, param: object = None) -> None:
        """An OpenCV mouse callback (``cv2.setMouseCallback(window, dragger.on_mouse)``)."""
        import cv2

        if event == cv2.EVENT_LBUTTONDOWN:
            self.press(px, py)
        elif event == cv2.EVENT_MOUSEMOVE:
            self.move(px, py)
        elif event == cv2.EVENT_LBUTTONUP:
            self.release()
