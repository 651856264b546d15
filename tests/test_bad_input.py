"""Bad input gets one clear paragraph, a non-zero exit, no traceback, and nothing already written is damaged."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

import sabr.checkpoint as checkpoint
from sabr import load_run
from sabr.checkpoint import load_checkpoint, save_checkpoint
from sabr.cli import main
from sabr.data import Preprocess, load_dataset
from sabr.errors import CheckpointError, DataError, StorageError
from sabr.models import create_model

from .conftest import shared_path

RUN = ["--model", "lenet5", "--image-size", "16", "--batch-size", "32", "--sweep", "0.2", "--device", "cpu"]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _digit_images(n_per_class: int = 6, classes: int = 3) -> list[list[Image.Image]]:
    """Real handwritten digits (sklearn's scans), upscaled to 24x24 grayscale PIL images."""
    d = load_digits()
    out = []
    for c in range(classes):
        rows = d.images[d.target == c][:n_per_class]
        out.append([Image.fromarray(np.uint8(np.rint(a / 16 * 255))).resize((24, 24)) for a in rows])
    return out


def _folder(root: Path, classes: int = 3, n: int = 6) -> Path:
    for c, images in enumerate(_digit_images(n, classes)):
        (root / f"digit_{c}").mkdir(parents=True)
        for i, im in enumerate(images):
            im.convert("RGB").save(root / f"digit_{c}" / f"{i}.png")
    return root


# --------------------------------------------------------------------------- data
def test_missing_and_empty_data_paths(tmp_path, capsys):
    code, err = _cli(["run", "--quiet", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "does not exist" in err and "--data" in err
    (tmp_path / "empty").mkdir()
    code, err = _cli(["run", "--quiet", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no class sub-folders" in err
    assert not (tmp_path / "o").exists()  # nothing is written before the data are read


def test_class_folder_without_images_and_single_class(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    (root / "digit_9").mkdir()
    (root / "digit_9" / "notes.txt").write_text("no images here")
    code, err = _cli(["run", "--quiet", "--data", str(root)], capsys)
    assert code == 2 and "digit_9" in err and "hold no" in err
    one = _folder(tmp_path / "one", classes=1)
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(one, Preprocess(16, 3), progress=False)
    few = _folder(tmp_path / "few", n=6)  # 18 images: a 10% test split cannot hold all 3 classes
    code, err = _cli(["run", "--quiet", "--data", str(few), *RUN, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "too few to split" in err


def test_odd_image_modes_and_sizes_are_converted(tmp_path):
    root = tmp_path / "modes"
    images = _digit_images(4, 2)
    for c, ims in enumerate(images):
        (root / str(c)).mkdir(parents=True)
        ims[0].save(root / str(c) / "gray.png")                                  # L
        ims[1].convert("RGBA").resize((40, 31)).save(root / str(c) / "rgba.png")  # RGBA, other size
        ims[2].convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(root / str(c) / "palette.png")
        ims[3].convert("CMYK").save(root / str(c) / "cmyk.JPG")                   # CMYK JPEG
    for channels in (1, 3):
        ds = load_dataset(root, Preprocess(16, channels), progress=False)
        assert ds.images.shape == (8, channels, 16, 16) and ds.skipped == []
        assert ds.images.float().std() > 10  # real content, not blank


def test_real_photos_in_odd_modes_are_converted(tmp_path):
    source = shared_path("sign-language-digits", "Dataset")
    root = tmp_path / "signs"
    for c in ("0", "1"):
        photos = sorted((source / c).iterdir())[:4]
        (root / c).mkdir(parents=True)
        with Image.open(photos[0]) as im:
            im.convert("CMYK").save(root / c / "cmyk.jpg")
        with Image.open(photos[1]) as im:
            im.convert("L").resize((50, 70)).save(root / c / "gray.png")
        with Image.open(photos[2]) as im:
            im.convert("RGBA").save(root / c / "rgba.png")
        with Image.open(photos[3]) as im:
            im.convert("P").save(root / c / "palette.png")
    ds = load_dataset(root, Preprocess(32, 3), progress=False)
    assert ds.images.shape == (8, 3, 32, 32) and ds.skipped == []


def _bad_files(root: Path) -> list[Path]:
    good = root / "digit_0" / "0.png"
    corrupt = root / "digit_0" / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    truncated = root / "digit_1" / "truncated.jpg"
    Image.open(good).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    not_image = root / "digit_2" / "readme.png"
    not_image.write_text("this is text, not a PNG")
    return [corrupt, truncated, not_image]


def test_bad_image_files_error_mode(tmp_path, capsys):
    root = _folder(tmp_path / "data")
    _bad_files(root)
    code, err = _cli(["run", "--quiet", "--data", str(root), "--on-bad-image", "error", *RUN,
                      "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "cannot read image" in err and "--on-bad-image skip" in err


@pytest.mark.slow
def test_bad_image_files_are_skipped_counted_and_listed(tmp_path, capsys):
    root = _folder(tmp_path / "data", n=12)
    bad = _bad_files(root)
    out = tmp_path / "run"
    code, _ = _cli(["run", "--quiet", "--data", str(root), *RUN, "--epochs-base", "1", "--epochs-sabr", "1",
                    "--out", str(out)], capsys)
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["dataset"]["skipped_images"] == 3
    listed = (out / "skipped_images.txt").read_text().split()
    assert sorted(listed) == sorted(str(p) for p in bad)


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture
def saved(tmp_path) -> Path:
    model = create_model("lenet5", num_classes=10, in_chans=1, image_size=16)
    (tmp_path / "ck").mkdir()
    return save_checkpoint(model, tmp_path / "ck" / "sabr", {
        "phase": "sabr", "model": {"name": "lenet5", "num_classes": 10, "in_chans": 1, "image_size": 16},
        "classes": [str(i) for i in range(10)], "preprocess": Preprocess(16, 1).to_dict()})


def test_checkpoint_from_another_model_or_class_count(saved):
    meta_path = saved.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    # consistent metadata (classes and preprocessing edited to match) for weights of another model
    for change, rest in (({"num_classes": 3}, {"classes": ["0", "1", "2"]}),
                         ({"name": "compact_cnn", "image_size": 8}, {"preprocess": Preprocess(8, 1).to_dict()})):
        meta_path.write_text(json.dumps({**meta, "model": {**meta["model"], **change}, **rest}))
        with pytest.raises(CheckpointError, match="does not fit this model"):
            load_checkpoint(saved)


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pwned",))


def test_pickle_given_as_checkpoint_is_never_unpickled(saved, capsys, tmp_path):
    marker = tmp_path / "executed.txt"
    torch.save({"weight": _Payload(str(marker))}, saved)  # a pickle where the safetensors file was
    with pytest.raises(CheckpointError, match="pickles are never executed"):
        load_checkpoint(saved)
    code, err = _cli(["prune", "--quiet", "--run", str(saved.parent)], capsys)
    assert code == 2 and "safetensors" in err
    assert not marker.exists()


def test_tampered_and_truncated_safetensors_are_refused(saved):
    data = bytearray(saved.read_bytes())
    data[-10] ^= 0xFF  # one weight changed, header intact: only the recorded SHA-256 can tell
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="modified after sabr wrote it"):
        load_checkpoint(saved)
    saved.write_bytes(bytes(data[:100]))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(saved)


def test_full_disk_keeps_the_previous_checkpoint(saved, monkeypatch):
    before = {k: v.clone() for k, v in load_checkpoint(saved)[0].state_dict().items()}

    def disk_full(path, data):
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_bytes", disk_full)
    other = create_model("lenet5", num_classes=10, in_chans=1, image_size=16)
    with pytest.raises(StorageError, match="disk is full") as info:
        save_checkpoint(other, saved, json.loads(saved.with_suffix(".json").read_text()))
    assert "run the command again" in str(info.value)  # not a run folder: no `sabr run --resume` (issue 32)
    monkeypatch.undo()
    after = load_checkpoint(saved)[0].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not list(saved.parent.glob("*.tmp"))


# --------------------------------------------------------------------------- training and run folder
@pytest.mark.slow
def test_nan_loss_stops_the_phase_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(["run", "--quiet", *RUN, "--max-per-class", "15", "--epochs-base", "1", "--epochs-sabr", "3",
                      "--lr-sabr", "1e30", "--out", str(out)], capsys)
    assert code == 2 and "NaN or infinite" in err and "--lr-sabr" in err and "phase 2" in err
    model, meta = load_run(out, "base")  # phase 1's checkpoint is intact
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert not (out / "sabr.safetensors").exists()


def test_out_folder_holding_a_run_is_refused_without_overwrite_or_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("data: digits\n")
    (out / "base.json").write_text("{}\n")
    code, err = _cli(["run", "--quiet", "--out", str(out), "--epochs-base", "1", "--epochs-sabr", "0"], capsys)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert (out / "config.yaml").read_text() == "data: digits\n" and (out / "base.json").read_text() == "{}\n"
