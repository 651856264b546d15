"""Issue 14, the data and application side: odd files and names, checkpoint metadata checked against
its weights, options checked before any output is opened. Real files; OS faults simulated by patching
the OS call (everything runs as root)."""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sabr.apps.render import ascii_text, put_text, reference_panel
from sabr.cli import main
from sabr.data import Preprocess, load_dataset
from sabr.rundir import RunDir

from ._apps_fixtures import checkpoint_and_frames
from .test_robustness import _cli, _one_sentence

LATIN1 = "caf\udce9"  # the folder name b"caf\xe9" (Latin-1 'café') as Python holds it on a UTF-8 system


def _png(path: Path, side: int = 12, value: int = 0) -> Path:
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(path)
    return path


def _bomb(path: Path, side: int = 30000) -> Path:
    """A real PNG that declares a 30000x30000 image (PIL refuses it as a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _folder(root: Path, names: list[str], n: int = 3) -> Path:
    for c, name in enumerate(names):
        os.makedirs(os.fsencode(root / name))
        for i in range(n):
            _png(root / name / f"{i}.png", value=40 * c + i)
    return root


# --------------------------------------------------------------------------- data
def test_decompression_bomb_is_skipped_like_a_corrupt_image(tmp_path):
    root = _folder(tmp_path / "data", ["a", "b"])
    bomb = _bomb(root / "a" / "huge.png")
    ds = load_dataset(root, Preprocess(8, 1), progress=False)
    assert len(ds) == 6 and ds.skipped == [str(bomb)]


def test_unreadable_folder_is_one_sentence(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "data", ["a", "b"])
    real = Path.iterdir

    def iterdir(self):
        if self.name == "b":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    code, err = _cli(["run", "--quiet", "--data", str(root), "--out", str(tmp_path / "o")], capsys)
    _one_sentence(code, err, "cannot read the folder", "Permission denied")


def test_non_utf8_class_and_file_names_are_listed_and_drawn(tmp_path):
    root = _folder(tmp_path / "data", [LATIN1, "d"])
    bad = root / LATIN1 / "corrupt\udcff.png"
    os.close(os.open(os.fsencode(bad), os.O_CREAT | os.O_WRONLY))  # an empty file: not an image
    ds = load_dataset(root, Preprocess(8, 3), progress=False)
    assert ds.classes == [LATIN1, "d"] and ds.skipped == [str(bad)]
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.write_skipped(ds.skipped)
    assert run.skipped_images.read_bytes() == os.fsencode(bad) + b"\n"  # the file system's own bytes
    frame = np.zeros((120, 160, 3), np.uint8)
    put_text(frame, LATIN1, (5, 5))  # OpenCV crashed (segmentation fault) on this
    panel = reference_panel(ds.classes, None, 120, highlight=0)
    assert panel.shape[0] == 120 and frame.any()
    assert ascii_text(LATIN1) == "caf\\xe9" and ascii_text("café") == "cafe"


# --------------------------------------------------------------------------- checkpoints and the apps
@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A checkpoint and a folder of frames."""
    return checkpoint_and_frames(tmp_path)


def _recognize(d: Path, *extra: str) -> list[str]:
    return ["recognize", "--quiet", "--model", str(d / "ck" / "m.safetensors"), "--source", str(d / "frames"),
            "--headless", *extra]


def test_recognize_draws_and_writes_classes_that_are_not_valid_text(model_dir, capsys):
    meta_path = model_dir / "ck" / "m.json"
    meta_path.write_text(meta_path.read_text().replace('"a"', '"caf\\udce9"'))  # a class from b"caf\xe9"
    out = model_dir / "out"
    code, _ = _cli(_recognize(model_dir, "--out", str(out)), capsys)  # OpenCV crashed drawing that name
    assert code == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["label"] for r in rows} <= {LATIN1, "b", "c"}


def test_refused_options_leave_earlier_output_alone(model_dir, capsys):
    out = model_dir / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"frame": 0}\n')
    code, err = _cli(_recognize(model_dir, "--out", str(out), "--window", "0"), capsys)
    _one_sentence(code, err, "window must be >= 1")
    assert (out / "predictions.jsonl").read_text() == '{"frame": 0}\n'
    a_file = model_dir / "file.txt"
    a_file.write_text("keep me")
    code, err = _cli(_recognize(model_dir, "--out", str(a_file)), capsys)
    _one_sentence(code, err, "is a file, not a folder")
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.update(classes=["a", "b"]), ["'classes' has 2 names", "3 outputs"]),
    (lambda m: m["preprocess"].update(channels=3, mean=[0.5] * 3, std=[0.5] * 3), ["3 channel(s)"]),
    (lambda m: m["preprocess"].update(image_size=64), ["of 64 pixels"]),
    (lambda m: m.pop("weights_sha256"), ["'weights_sha256' is missing"]),
])
def test_checkpoint_metadata_is_checked_against_the_weights(model_dir, capsys, edit, words):
    meta_path = model_dir / "ck" / "m.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    code, err = _cli(_recognize(model_dir, "--out", str(model_dir / "out")), capsys)
    _one_sentence(code, err, *words)


def test_elevator_options_and_script_times_are_checked(tmp_path, capsys):
    script = tmp_path / "s.txt"
    script.write_text("0 1\n")
    out = tmp_path / "out"
    base = ["elevator", "--quiet", "--script", str(script), "--floors", "3", "--headless", "--out", str(out)]
    code, err = _cli([*base, "--fps", "-1"], capsys)
    _one_sentence(code, err, "fps must be > 0")
    assert not out.exists()
    for line in ("nan 1\n", "0 1 inf\n"):
        script.write_text(line)
        code, err = _cli(base, capsys)
        _one_sentence(code, err, "finite number")


@pytest.mark.parametrize("flags, words", [
    (["--runs", "0"], ["--runs must be >= 1"]),
    (["--batch-sizes", "0"], ["batch sizes must be whole numbers >= 1"]),
    (["--max-density", "nan"], ["--max-density"]),
])
def test_bench_options_are_checked_before_measuring(runs, flags, words, capsys):
    code, err = _cli(["bench", "--quiet", "--run", str(runs["done"]), *flags], capsys)
    _one_sentence(code, err, *words)
