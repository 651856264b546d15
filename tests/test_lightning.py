"""SABRCallback: a Lightning Trainer on the real digits; the callback's lambda/freeze sequence is sabr.SABR's
for the same validation accuracies, and it resumes from a Lightning checkpoint."""

from __future__ import annotations

import inspect

import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

from sabr import SABR  # noqa: E402
from sabr.data import Preprocess, load_dataset, split_dataset  # noqa: E402
from sabr.integrations.lightning import SABRCallback  # noqa: E402
from sabr.models import create_model  # noqa: E402

SETTINGS = dict(teta1=0.05, k_epoch=1, accuracy_threshold=0.0)  # strong: shrinks and freezes within a few epochs


class Digits(pl.LightningModule):
    """compact_cnn on 8x8 digits; logs its validation accuracy (a fraction) as ``val_acc``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = create_model("compact_cnn", 10, 1, 8)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), on_epoch=True, prog_bar=False)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _loaders():
    pre = Preprocess(8, 1)
    ds = load_dataset("digits", pre, max_per_class=40)
    s = split_dataset(ds)

    def loader(index, shuffle):
        data = torch.utils.data.TensorDataset(pre.normalize(ds.images[index]), ds.labels[index])
        return torch.utils.data.DataLoader(data, batch_size=32, shuffle=shuffle,
                                           generator=torch.Generator().manual_seed(0))
    return loader(s.train, True), loader(s.val, False)


def _trainer(epochs, callbacks, tmp_path, **kw):
    return pl.Trainer(max_epochs=epochs, callbacks=callbacks, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


class Replay(pl.Callback):
    """A plain sabr.SABR on the same module, stepped with the same logged accuracies right after the callback."""

    def on_train_start(self, trainer, module):
        self.sabr = SABR(module, **SETTINGS, steps_per_epoch=trainer.num_training_batches)

    def on_validation_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.sabr.step(float(trainer.callback_metrics["val_acc"]))


def test_arguments_match_sabr():
    ours = inspect.signature(SABRCallback).parameters
    for name, p in inspect.signature(SABR).parameters.items():
        if name != "model":
            assert name in ours and ours[name].default == p.default, name
    assert ours["monitor"].default == "val_acc"


@pytest.mark.slow
def test_trainer_matches_sabr_and_resumes_from_a_checkpoint(tmp_path):
    train, val = _loaders()
    callback, replay = SABRCallback(**SETTINGS), Replay()
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(4, [callback, replay, checkpoints], tmp_path).fit(Digits(), train, val)
    ours, plain = callback.sabr.state_dict(), replay.sabr.state_dict()
    assert ours == plain and len(ours["history"][ours["params"][0]]) == 5
    assert ours["frozen"] and callback.sabr.steps_per_epoch == len(train)

    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    resumed, seen = SABRCallback(**SETTINGS), {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer, module):
            seen["state"] = resumed.sabr.state_dict()
            seen["trainable"] = {n: p.requires_grad for n, p in module.named_parameters()}

    _trainer(6, [resumed, Probe()], tmp_path).fit(Digits(), train, val, ckpt_path=tmp_path / "last.ckpt")
    (state,) = [v for k, v in saved.items() if k.startswith("SABRCallback")]
    assert seen["state"] == ours == state["sabr"]
    assert all(not seen["trainable"][n] for n in ours["frozen"])
    assert resumed.sabr.epochs == 6 and len(resumed.sabr.history[ours["params"][0]]) == 7


def test_penalty_gradient_is_added_as_lightning_scales_the_loss():
    from types import SimpleNamespace

    module, x, y = Digits().eval(), torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])  # eval: no dropout
    callback = SABRCallback(teta1=0.5)
    callback.sabr = SABR(module, teta1=0.5)
    trainer = SimpleNamespace(accumulate_grad_batches=2, precision_plugin=SimpleNamespace())
    (torch.nn.functional.cross_entropy(module(x), y) / 2).backward()
    callback.on_after_backward(trainer, module)
    got = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    ((torch.nn.functional.cross_entropy(module(x), y) + callback.sabr.penalty()) / 2).backward()
    for a, b in zip(got, module.parameters()):
        torch.testing.assert_close(a, b.grad)
