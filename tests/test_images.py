"""sabr.images: every image decodes to 8 bits showing what it shows (issue 32, item 4), for training,
streaming and the applications' reference images alike. Real files written with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sabr.data import Preprocess, load_dataset
from sabr.errors import DataError
from sabr.images import as_uint8, check_image, open_image, to_8bit

RAMP16 = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535 in steps of 257


def _save(path: Path, image: Image.Image) -> Path:
    """``image`` saved in the format PIL picks from ``fmt`` (TIFF for float and LAB images), under ``path``'s
    name (a TIFF named ``.png`` is read by content, as PIL does)."""
    fmt = "TIFF" if image.mode in ("F", "LAB", "I") else "PNG"
    image.save(path, format=fmt)
    return path


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    path = _save(tmp_path / "g16.png", Image.fromarray(RAMP16))
    assert Image.open(path).mode == "I;16"
    image = open_image(path)
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), (RAMP16 // 257).astype(np.uint8))  # was all 255


def test_a_32_bit_image_holding_16_bit_values_reads_as_16_bit(tmp_path):
    path = _save(tmp_path / "i32.png", Image.fromarray(RAMP16.astype(np.int32)))
    assert Image.open(path).mode == "I"
    assert np.array_equal(np.asarray(open_image(path)), (RAMP16 // 257).astype(np.uint8))
    beyond = _save(tmp_path / "big.png", Image.fromarray(np.full((4, 4), 70000, np.int32)))
    with pytest.raises(DataError, match="beyond 16 bits"):
        open_image(beyond)


def test_float_images_are_fractions_and_refused_outside_them(tmp_path):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(np.asarray(open_image(_save(tmp_path / "f.png", Image.fromarray(ramp)))),
                          np.rint(ramp * 255).astype(np.uint8))
    for name, value in (("two.png", 2.0), ("nan.png", np.nan)):
        with pytest.raises(DataError, match=r"outside \[0, 1\]"):
            open_image(_save(tmp_path / name, Image.fromarray(np.full((8, 8), value, np.float32))))


def test_a_mode_that_cannot_be_converted_is_refused(tmp_path):
    with pytest.raises(DataError, match="'LAB'"):
        open_image(_save(tmp_path / "lab.png", Image.new("LAB", (8, 8))))
    with pytest.raises(DataError, match="'LAB'"):
        check_image(tmp_path / "lab.png")  # the streaming scan refuses it too, before training
    with pytest.raises(DataError, match="outside"):
        check_image(_save(tmp_path / "f.png", Image.fromarray(np.full((8, 8), 3.0, np.float32))))


def test_arrays_follow_the_same_rules():
    assert np.array_equal(as_uint8(RAMP16), (RAMP16 // 257).astype(np.uint8))
    assert as_uint8(np.array([[True, False]])).tolist() == [[255, 0]]
    assert as_uint8(np.array([[-128, 127]], np.int8)).tolist() == [[0, 255]]
    assert as_uint8(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 128, 255]]
    with pytest.raises(DataError, match="outside"):
        as_uint8(np.array([[0.0, 255.0]]))  # was clipped silently
    with pytest.raises(DataError, match="ambiguous"):
        as_uint8(np.zeros((2, 2), np.int64))
    assert to_8bit(Image.new("CMYK", (2, 2))).mode == "RGB"
    pre = Preprocess(4, 1)
    assert pre.to_uint8(RAMP16[:4, :4]).tolist() == pre.to_uint8((RAMP16[:4, :4] // 257).astype(np.uint8)).tolist()


def test_a_dataset_trains_on_16_bit_images_and_lists_the_unreadable_ones(tmp_path):
    root = tmp_path / "data"
    for c, value in enumerate((10_000, 50_000)):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            _save(root / f"c{c}" / f"{i}.png", Image.fromarray(np.full((8, 8), value + i, np.uint16)))
    bad = [_save(root / "c0" / "lab.png", Image.new("LAB", (8, 8))),
           _save(root / "c1" / "float.png", Image.fromarray(np.full((8, 8), 9.0, np.float32)))]
    ds = load_dataset(root, Preprocess(8, 1), progress=False)
    assert sorted(ds.skipped) == sorted(map(str, bad))
    means = [float(ds.images[ds.labels == c].float().mean()) for c in (0, 1)]
    assert means[0] == pytest.approx(10_001 / 257, abs=1) and means[1] == pytest.approx(50_001 / 257, abs=1)


def test_reference_images_skip_a_damaged_file_as_training_does(tmp_path):
    pytest.importorskip("cv2")
    from sabr.apps import load_references

    root = tmp_path / "refs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    (root / "a" / "0.png").write_bytes(b"not an image")  # first in natural order: stopped `sabr recognize`
    _save(root / "a" / "1.png", Image.fromarray(np.full((8, 8), 40000, np.uint16)))
    _save(root / "b" / "0.png", Image.fromarray(np.full((8, 8, 3), 7, np.uint8)))
    refs = load_references(["a", "b"], root)
    assert refs[0].shape == (8, 8, 3) and int(refs[0][0, 0, 0]) == round(40000 / 257)
    assert int(refs[1][0, 0, 0]) == 7
