"""Image decoding: any image file or array -> 8 bits per channel showing what the file shows.

One set of rules for training (:mod:`sabr.data`, :mod:`sabr.streaming`) and the applications (reference
images, image-folder sources):

* integer images are scaled from their type's full range to 8 bits, never clipped: 16-bit images
  (PIL's ``I;16`` modes, ``uint16`` arrays) are divided by 257, so 65535 is 255; PIL's 32-bit ``I`` mode
  is read as 16-bit when its values fit (that is how 16-bit files decode), and refused otherwise;
* float images (PIL's ``F`` mode, float arrays) are taken as values in [0, 1]; one outside that range,
  or not finite, is refused;
* a mode PIL cannot convert to grayscale or RGB (e.g. ``LAB``) is refused.

A refused file raises :class:`~sabr.errors.DataError`, so a dataset skips and lists it like a corrupt file
(``--on-bad-image``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import DataError

_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for a file it cannot read (corrupt, truncated, not an image, too large)."""

_EIGHT_BIT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"}
"""PIL modes that convert to ``L`` / ``RGB`` without losing range."""


def printable(name: str) -> str:
    """``name`` as valid text: a file or class name whose bytes are not UTF-8 (e.g. from an old Latin-1
    archive; Python holds those bytes as surrogates) gets them as ``\\xNN`` escapes, so it can be printed,
    logged and drawn. Valid names are returned unchanged."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def open_image(path: str | Path) -> Image.Image:
    """Open an image file fully (EXIF orientation applied) as an 8-bit image (:func:`to_8bit`).

    Raises:
        DataError: the file is unreadable, or its pixels cannot be shown in 8 bits (see the module).
    """
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_8bit(im.copy(), path)
    except _UNREADABLE as exc:
        raise DataError(f"cannot read image {printable(str(path))}: {exc}") from exc


def check_image(path: str | Path) -> None:
    """Check an image file without decoding its pixels where it can (PIL's ``verify``: the header, and the
    chunks' checksums of a PNG), as a streamed folder is scanned; a mode that cannot be converted is
    refused, and 32-bit or float images are decoded to check their range. Raises ``DataError``."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            im.verify()
    except _UNREADABLE as exc:
        raise DataError(f"cannot read image {printable(str(path))}: {exc}") from exc
    if mode in ("I", "F"):
        open_image(path)
    elif mode not in _EIGHT_BIT and not mode.startswith("I;16"):
        raise DataError(_mode_error(path, mode))


def to_8bit(image: Image.Image, name: str | Path = "image") -> Image.Image:
    """``image`` in a mode with 8 bits per channel (``L``, ``RGB``, ``RGBA``, ...; CMYK becomes RGB).

    Raises:
        DataError: naming ``name``, for a float image outside [0, 1], a 32-bit image beyond 16 bits, or a
            mode that cannot be converted.
    """
    mode = image.mode
    if mode == "CMYK":
        return image.convert("RGB")
    if mode in _EIGHT_BIT:
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image)
        if mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(f"image {printable(str(name))} holds 32-bit values beyond 16 bits "
                            f"({array.min()} .. {array.max()}); save it as an 8- or 16-bit image.")
        if mode == "I" or mode.startswith("I;16"):
            array = array.astype(np.uint16)
        return Image.fromarray(as_uint8(array, name))
    raise DataError(_mode_error(name, mode))


def as_uint8(array: np.ndarray, name: str | Path = "array") -> np.ndarray:
    """An image array as ``uint8`` by the module's rules: ``uint8`` as is, ``bool`` as 0 / 255, 8- and
    16-bit integers scaled from their type's full range (``uint16`` / 257), floats taken as [0, 1].

    Raises:
        DataError: a float array outside [0, 1] or not finite, or an integer type wider than 16 bits
            (ambiguous: convert it to ``uint8`` or ``uint16`` first).
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.bits > 16:
            raise DataError(f"image {printable(str(name))} is a {array.dtype} array, whose range is ambiguous; "
                            "convert it to uint8 (0-255) or uint16 (0-65535).")
        return np.rint((array.astype(np.float64) - info.min) * 255.0 / (info.max - info.min)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise DataError(f"image {printable(str(name))} holds float values outside [0, 1] (or not finite); "
                            "sabr reads float images as fractions: scale it to [0, 1] or save it as 8-bit.")
        return np.rint(array * 255.0).astype(np.uint8)
    raise DataError(f"image {printable(str(name))} has pixels of type {array.dtype}, which sabr cannot read.")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """An 8-bit ``image`` as ``"L"`` or ``"RGB"``; transparency is composited onto white (as training does)."""
    if image.mode == mode:
        return image
    if image.mode in ("RGBA", "LA", "P", "PA") and mode == "RGB":
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert(mode)


def _mode_error(name: str | Path, mode: str) -> str:
    return (f"image {printable(str(name))} has the pixel mode {mode!r}, which cannot be converted to grayscale "
            "or RGB; save it as an ordinary 8-bit image.")
