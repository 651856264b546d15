import gzip
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from sabr import DataError, Preprocess, load_dataset, split_dataset
from sabr.data import natural_key

from .conftest import shared_path


def test_natural_order():
    names = [f"Gesture_{i}" for i in range(14)]
    assert sorted(names[::-1], key=natural_key) == names
    assert sorted(names) != names  # plain text order would put Gesture_10 before Gesture_2


def make_folder(tmp_path, n_classes=14, per_class=3):
    """An HG14-like folder from the real reference photos: Gesture_0..Gesture_13, mixed suffix case."""
    src = shared_path("hg14-samples")
    root = tmp_path / "hg"
    for c in range(n_classes):
        d = root / f"Gesture_{c}"
        d.mkdir(parents=True)
        im = Image.open(src / f"gesture_{c}.jpg").convert("RGB").resize((48, 48))
        for k, suffix in zip(range(per_class), [".jpg", ".JPG", ".png", ".JPEG", ".Png"]):
            im.rotate(10 * k).save(d / f"img{k}{suffix}")
        (d / "notes.txt").write_text("not an image")
    return root


def test_image_folder_natural_class_order_and_suffixes(tmp_path):
    root = make_folder(tmp_path)
    ds = load_dataset(root, Preprocess(16, 3), progress=False)
    assert ds.classes == [f"Gesture_{i}" for i in range(14)]
    assert ds.images.shape == (42, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.labels, torch.arange(14).repeat_interleave(3))


def test_exif_orientation_is_applied(tmp_path):
    src = shared_path("hg14-samples", "gesture_0.jpg")
    im = Image.open(src).convert("RGB").resize((40, 20))  # wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    from sabr.data import open_image

    assert open_image(path).size == (20, 40)  # tall after applying EXIF


def test_preprocess_modes_and_normalisation():
    pre = Preprocess(8, 3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    gray = np.full((20, 30), 255, np.uint8)
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))  # transparent -> white background
    palette = Image.new("P", (10, 10))
    for image in (gray, rgba, palette.convert("P"), Image.new("CMYK", (9, 9))):
        x = pre(image)
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(pre(gray), torch.full((3, 8, 8), 2.0))  # (1 - 0.5) / 0.25
    assert torch.allclose(pre(rgba), torch.full((3, 8, 8), 2.0))
    d = Preprocess.from_dict(pre.to_dict())
    assert d == Preprocess(8, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_digits_split_is_stratified_72_18_10():
    ds = load_dataset("digits", Preprocess(8, 1))
    assert len(ds) == 1797 and ds.images.shape[1:] == (1, 8, 8)
    s = split_dataset(ds, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (1293, 324, 180)
    assert not set(s.train) & set(s.val) and not set(s.train) & set(s.test) and not set(s.val) & set(s.test)
    for part in (s.train, s.val, s.test):
        frac = np.bincount(ds.labels[part].numpy(), minlength=10) / len(part)
        assert np.abs(frac - 0.1).max() < 0.02
    again = split_dataset(ds, seed=0)
    assert np.array_equal(again.test, s.test)


def test_train_per_class_subsamples_the_training_split_only():
    ds = load_dataset("digits", Preprocess(8, 1))
    whole, small = split_dataset(ds, seed=3), split_dataset(ds, seed=3, train_per_class=20)
    assert np.array_equal(small.val, whole.val) and np.array_equal(small.test, whole.test)
    assert set(small.train) <= set(whole.train) and len(small.train) == 200
    assert np.bincount(ds.labels[small.train].numpy()).tolist() == [20] * 10
    assert np.array_equal(split_dataset(ds, seed=3, train_per_class=20).train, small.train)  # seeded
    assert not np.array_equal(split_dataset(ds, seed=4, train_per_class=20).train, small.train)
    assert np.array_equal(split_dataset(ds, seed=3, train_per_class=10**6).train, whole.train)


def test_val_per_class_subsamples_the_validation_split_only():
    ds = load_dataset("digits", Preprocess(8, 1))
    whole, small = split_dataset(ds, seed=3), split_dataset(ds, seed=3, val_per_class=5)
    assert len(small.val) == 50 and np.isin(small.val, whole.val).all()
    assert np.array_equal(small.train, whole.train) and np.array_equal(small.test, whole.test)
    assert np.bincount(ds.labels.numpy()[small.val]).tolist() == [5] * 10


def write_idx(path, array):
    dims = array.shape
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes())


def test_idx_folder_keeps_its_test_split(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 15).astype(np.uint8)
    y = d.target.astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x[:1500])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y[:1500])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x[1500:])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[1500:])
    ds = load_dataset(tmp_path, Preprocess(8, 1))
    assert len(ds) == 1797 and ds.classes == [str(i) for i in range(10)]
    assert torch.equal(ds.images[0, 0], torch.from_numpy(x[0]))
    s = split_dataset(ds)
    assert np.array_equal(s.test, np.arange(1500, 1797))
    assert len(s.train) + len(s.val) == 1500


def test_sign_language_digits_load():
    root = shared_path("sign-language-digits", "Dataset")
    ds = load_dataset(root, Preprocess(32, 3), max_per_class=5, progress=False)
    assert ds.name == "sign-language-digits" and ds.classes == [str(i) for i in range(10)]
    assert ds.images.shape == (50, 3, 32, 32)


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing", Preprocess(8, 1))
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(tmp_path, Preprocess(8, 1))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(shared_path("hg14-samples", "gesture_0.jpg"), tmp_path / "a" / "x.jpg")
    with pytest.raises(DataError, match="b in .* hold no"):
        load_dataset(tmp_path, Preprocess(8, 1), progress=False)


def test_a_split_too_small_is_explained_in_sabrs_words():
    ds = load_dataset("digits", Preprocess(8, 1), max_per_class=3)
    with pytest.raises(DataError) as err:
        split_dataset(ds)
    text = str(err.value)
    assert "30 images are too few to split 10 classes" in text and "test split would hold 3" in text
    assert "test_size" not in text and "should be" not in text  # no scikit-learn text inside sabr's sentence
