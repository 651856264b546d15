"""sabr.train: device resolution, the per-phase seeds and fit()'s keep-best rules and hooks."""

import pytest
import torch

from sabr import SabrError
from sabr.train import SEED_OFFSETS, EpochStats, FitHooks, FitState, fit, phase_generator, resolve_device


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(SabrError, match="no CUDA GPU is visible"):
        resolve_device("cuda")


def test_each_phase_draws_its_batches_from_seed_plus_its_offset():
    assert SEED_OFFSETS == {"base": 0, "sabr": 1, "finetune": 2, "gmp": 3}
    assert torch.equal(torch.randperm(9, generator=phase_generator(5, "finetune")),
                       torch.randperm(9, generator=torch.Generator().manual_seed(7)))


class Toy:
    """A one-weight model whose 'training' sets the weight to the epoch number; validation accuracy is
    looked up from ``accuracies`` by the current weight (index 0: the starting weights)."""

    def __init__(self, accuracies):
        self.model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.model.weight)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.accuracies = accuracies
        self.validated = []

    def train(self, epoch):
        with torch.no_grad():
            self.model.weight.fill_(epoch)
        return EpochStats(loss=1.0 / epoch, accuracy=0.5, seconds=0.0)

    def validate(self):
        self.validated.append(self.weight)
        return 1.0 - self.accuracies[self.weight], self.accuracies[self.weight]

    @property
    def weight(self):
        return int(self.model.weight.item())

    def fit(self, epochs, **kw):
        return fit(self.model, self.opt, self.train, self.validate, epochs, **kw)


def test_keep_last_best_and_best_including_the_start():
    acc = [0.9, 0.5, 0.7, 0.7, 0.6]  # epoch 2 is best; epoch 3 only ties it
    toy = Toy(acc)
    state = toy.fit(4, keep="last")
    assert toy.weight == 4 and state.epoch == 4 and [r["epoch"] for r in state.rows] == [1, 2, 3, 4]
    assert state.rows[1] == {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.5, "val_loss": pytest.approx(0.3),
                             "val_accuracy": 0.7, "lr": 0.1, "seconds": 0.0}
    toy = Toy(acc)
    assert toy.fit(4, keep="best").best_accuracy == 0.7 and toy.weight == 2  # strictly greater wins
    toy = Toy(acc)
    state = toy.fit(4, keep="best_or_start")
    assert toy.weight == 0 and toy.validated[0] == 0 and len(state.rows) == 4  # the start beats every epoch


def test_best_among_validated_epochs_only():
    toy = Toy([0.0, 0.99, 0.2, 0.5, 0.3])
    state = toy.fit(4, keep="best", hooks=FitHooks(validate_now=lambda epoch: epoch >= 3))
    assert toy.validated == [3, 4] and toy.weight == 3  # epoch 1 was better but not validated
    assert "val_accuracy" not in state.rows[0] and state.rows[2]["val_accuracy"] == 0.5


def test_keep_now_leaves_epochs_out_of_the_best_rule_but_validates_them():
    toy = Toy([0.0, 0.99, 0.2, 0.5, 0.3])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(toy.opt, factor=0.5, patience=0)
    state = toy.fit(4, keep="best", scheduler=sched, hooks=FitHooks(keep_now=lambda epoch: epoch >= 3))
    assert toy.validated == [1, 2, 3, 4] and toy.weight == 3  # epoch 1 was better but short of the target
    assert state.rows[2]["lr"] < 0.1  # every validation stepped the scheduler (val loss rose after epoch 1)


def test_hooks_scheduler_stop_and_resume():
    toy = Toy([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(toy.opt, factor=0.5, patience=0)
    saved, logged = [], []
    hooks = FitHooks(row_fields=lambda row: {"double": 2 * row["val_accuracy"]}, on_row=logged.append,
                     on_epoch=lambda s: saved.append((s.epoch, len(s.rows))), stop=lambda: toy.weight >= 3)
    state = toy.fit(5, keep="last", scheduler=sched, hooks=hooks)
    assert state.epoch == 3 and saved == [(1, 1), (2, 2), (3, 3)] and logged == state.rows
    assert [r["double"] for r in state.rows] == [0.2, 0.4, 0.6]
    assert [r["lr"] for r in state.rows] == [0.1, 0.1, 0.1]  # the validation loss keeps falling
    resumed = Toy([0.0, 0.1, 0.9, 0.3, 0.4, 0.5])
    state = resumed.fit(5, keep="best", state=FitState(epoch=3, rows=[{}] * 3, best_accuracy=0.95,
                                                       best_model={"weight": torch.full((1, 1), 7.0)}))
    assert resumed.validated == [4, 5] and len(state.rows) == 5 and resumed.weight == 7  # the saved best stays


# --------------------------------------------------------------------------- training options
def _tiny_split():
    from sklearn.datasets import load_digits

    from sabr.train import Split

    d = load_digits()
    images = torch.as_tensor(d.images[:64] / 16 * 255).round().to(torch.uint8)[:, None]
    return Split(images, torch.as_tensor(d.target[:64]))


def _one_epoch(optimizer_name, weight_decay=0.0, amp=False):
    from sabr.data import Preprocess
    from sabr.models import create_model
    from sabr.train import build_optimizer, train_epoch

    torch.manual_seed(0)
    model = create_model("compact_cnn", 10, 1, 8)
    opt = build_optimizer(model.parameters(), optimizer_name, lr=0.01, weight_decay=weight_decay, momentum=0.8)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_epoch(model, opt, _tiny_split(), Preprocess(8, 1), torch.device("cpu"), 16,
                        torch.Generator().manual_seed(0), amp=amp)
    return model, opt, stats, before


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_each_optimizer_trains_with_its_weight_decay(name, cls):
    model, opt, stats, before = _one_epoch(name, weight_decay=0.01)
    assert type(opt) is cls and opt.param_groups[0]["weight_decay"] == 0.01
    assert name != "sgd" or opt.param_groups[0]["momentum"] == 0.8
    assert stats.loss == stats.loss and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    plain = _one_epoch(name)[0]
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))  # decay acts


def test_unknown_optimizer_is_refused():
    from sabr.config import RunConfig
    from sabr.errors import ConfigError
    from sabr.train import build_optimizer

    with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
        build_optimizer(torch.nn.Linear(1, 1).parameters(), "lion")
    for bad in ({"weight_decay": -1.0}, {"momentum": 1.0}, {"workers": -1}):
        with pytest.raises(ConfigError):
            RunConfig(**bad)


def test_amp_changes_nothing_on_the_cpu():
    a, _, stats_a, _ = _one_epoch("adam")
    b, _, stats_b, _ = _one_epoch("adam", amp=True)
    assert stats_a.loss == stats_b.loss
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_progress_lines_when_the_output_is_not_a_terminal(caplog, monkeypatch):
    import sys

    from sabr.train import log_progress, progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)

    with caplog.at_level("INFO", logger="sabr.train"):
        assert list(log_progress(range(4), total=4, desc="base 1/3", interval=0.0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("base 1/3: batch 1/4 (25%)") and len(lines) == 3  # none once the epoch ends
    bar = progress_bar(True)  # log lines, not tqdm
    assert bar(range(2), 2, "x").__class__.__name__ == "generator"
