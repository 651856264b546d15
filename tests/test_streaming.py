"""Streaming an image folder from disk: the same images, splits and batch order as in memory; exact resume
with augmentation and two DataLoader workers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sabr.config import RunConfig
from sabr.errors import ConfigError, DataError
from sabr.experiment import prepare
from sabr.phases import train_base
from sabr.resume import load_state, save_state
from sabr.streaming import FileImages
from sabr.train import batches

from ._folders import digits_folder


def _config(folder, **kw) -> RunConfig:
    return RunConfig(data=str(folder), model="lenet5", image_size=16, batch_size=8, device="cpu", **kw)


def test_streamed_splits_and_batches_equal_the_in_memory_ones(tmp_path):
    folder = digits_folder(tmp_path / "digits")
    memory = prepare(_config(folder), progress=False)
    stream = prepare(_config(folder, stream=True, workers=2), progress=False)
    assert isinstance(stream.train.images, FileImages) and stream.preprocess == memory.preprocess
    assert torch.equal(stream.train.labels, memory.train.labels)
    assert torch.equal(stream.val.images[torch.arange(len(stream.val))], memory.val.images)
    got = list(batches(stream.train, 8, torch.Generator().manual_seed(3)))
    want = list(batches(memory.train, 8, torch.Generator().manual_seed(3)))
    assert len(got) == len(want)
    for (xs, ys), (xm, ym) in zip(got, want):
        assert torch.equal(xs, xm) and torch.equal(ys, ym)


def test_stream_needs_an_image_folder_and_workers_need_stream():
    with pytest.raises(ConfigError, match="--stream reads an image folder"):
        prepare(RunConfig(stream=True, device="cpu"), progress=False)
    with pytest.raises(ConfigError, match="needs --stream"):
        RunConfig(workers=2)


def test_a_file_that_is_not_an_image_is_skipped_or_refused_before_training(tmp_path):
    folder = digits_folder(tmp_path / "digits")
    first = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    good = sorted(first.iterdir())[0]
    (first / "broken.png").write_bytes(good.read_bytes()[:40])  # a PNG cut off in its header chunk
    (first / "notes.png").write_text("not an image")
    exp = prepare(_config(folder, stream=True), progress=False)
    assert sorted(Path(f).name for f in exp.skipped) == ["broken.png", "notes.png"]
    every = exp.train.images.files + exp.val.images.files + exp.test.images.files
    assert not [f for f in every if Path(f).name in ("broken.png", "notes.png")]
    with pytest.raises(DataError, match="notes.png|broken.png"):
        prepare(_config(folder, stream=True, on_bad_image="error"), progress=False)


@pytest.mark.slow
def test_exact_resume_with_augmentation_and_two_workers(tmp_path):
    folder = digits_folder(tmp_path / "digits")
    exp = prepare(_config(folder, stream=True, workers=2, augment=["standard", "flip"]), progress=False)

    def trained(epochs, resume=None, keep=False):
        torch.manual_seed(0)
        model = exp.new_model()
        on_epoch = None if not keep else (lambda s: save_state(tmp_path / f"e{s.epoch}.safetensors", s))
        return train_base(exp, model, epochs=epochs, progress=False, resume=resume, on_epoch=on_epoch)

    full, rows = trained(3, keep=True)
    torch.manual_seed(123)  # the resumed run starts from other global RNG states: the saved ones must win
    resumed, resumed_rows = trained(3, resume=load_state(tmp_path / "e1.safetensors"))
    assert [r["train_loss"] for r in resumed_rows] == [r["train_loss"] for r in rows]
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
