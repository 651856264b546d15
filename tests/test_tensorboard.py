"""``sabr run --log tensorboard``: the event files hold the losses, accuracies, lambdas and freeze events."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from sabr.cli import main  # noqa: E402
from sabr.integrations.tensorboard import epoch_scalars  # noqa: E402


def test_epoch_scalars_names():
    row = {"epoch": 2, "train_loss": 0.5, "val_accuracy": 0.9, "frozen": 1, "froze": "fc.weight", "action": "grow"}
    assert epoch_scalars("sabr", row, {"fc.weight": 0.01}) == {
        "sabr/train_loss": 0.5, "sabr/val_accuracy": 0.9, "sabr/frozen": 1.0, "lambda/fc.weight": 0.01}


@pytest.mark.slow
def test_run_writes_event_files_that_read_back(tmp_path, monkeypatch):
    from sabr.integrations import tensorboard

    opened, closed = [], []
    monkeypatch.setattr(tensorboard.TensorBoardLogger, "close",
                        lambda self, real=tensorboard.TensorBoardLogger.close: (closed.append(self), real(self)))
    monkeypatch.setattr(tensorboard.TensorBoardLogger, "log_epoch",
                        lambda self, *a, real=tensorboard.TensorBoardLogger.log_epoch: (opened.append(self),
                                                                                         real(self, *a)))
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--max-per-class", "15", "--epochs-base", "1", "--epochs-sabr", "3", "--k-epoch",
                 "1", "--accuracy-threshold", "0", "--teta1", "0.05", "--sweep", "0.2", "--finetune-epochs", "2", "--device", "cpu",
                 "--log", "tensorboard", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    assert {"base/train_loss", "base/val_accuracy", "sabr/val_accuracy", "sabr/near_zero_sparsity",
            "sabr/frozen", "finetune/val_accuracy", "finetune/train_loss"} <= scalars
    assert [e.step for e in events.Scalars("finetune/val_accuracy")] == [1, 2]
    lambdas = sorted(t for t in scalars if t.startswith("lambda/"))
    assert len(lambdas) >= 2 and [e.step for e in events.Scalars(lambdas[0])] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    logged = [e.value for e in events.Scalars("sabr/val_accuracy")]
    history = (out / "history_sabr.csv").read_text().splitlines()
    assert len(logged) == len(history) - 1 == summary["sabr"]["epochs"]
    assert summary["sabr"]["frozen_tensors"] and "sabr/freeze/text_summary" in tags["tensors"]  # freeze events
    assert len(set(opened)) == 1 and closed == [opened[0]]  # one writer for the run, closed at its end
