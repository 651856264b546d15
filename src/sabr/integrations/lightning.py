"""SABR in a Lightning ``Trainer``: :class:`SABRCallback` (needs ``pip install 'torch-sabr[lightning]'``).

::

    trainer = lightning.Trainer(max_epochs=60, callbacks=[SABRCallback(monitor="val_acc")])
    trainer.fit(module)          # the module logs its validation accuracy (a fraction) as "val_acc"
    sabr.prune(module)           # exact zeros at the end

The callback adds :meth:`sabr.SABR.penalty` to the training loss of every batch (its gradient is added
after the loss's backward pass, scaled as Lightning scales the loss: gradient accumulation and AMP
loss scaling), and runs :meth:`sabr.SABR.step` once per epoch on the validation accuracy logged under
``monitor``. Its state (lambdas, counters, frozen tensors) is saved in Lightning checkpoints and
restored from them, frozen tensors included.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from ..channels import ChannelGroup
from ..config import SABR_DEFAULTS as DEFAULTS
from ..errors import ConfigError
from ..regularizer import SABR, check_settings
from ..units import Units
from .tensorboard import epoch_scalars


class SABRCallback(pl.Callback):
    """Runs :class:`sabr.SABR` on a ``LightningModule`` trained by a ``Trainer``.

    Args:
        monitor: the metric (a validation accuracy, as a fraction) that :meth:`SABR.step` reads once per
            epoch, after validation; the module logs it with ``self.log(monitor, ...)``.
        teta1: as in :class:`sabr.SABR`, with the same default; so are ``growth_rate``, ``decrease_rate``,
            ``accuracy_threshold``, ``k_epoch``, ``zero_eps``, ``fast_start``, ``params``, ``groups``,
            ``steps_per_epoch`` and ``units``.
        scale_teta1: when ``steps_per_epoch`` is None, give SABR the trainer's number of training batches
            per epoch (``sabr run``'s ``--scale-teta1``: an epoch pulls as 100 steps would, whatever the
            dataset size); False keeps the spec's per-step lambdas.

    Attributes:
        sabr: the :class:`sabr.SABR` (created when training starts; ``None`` before).
    """

    def __init__(self, monitor: str = "val_acc", teta1: float = DEFAULTS.teta1,
                 growth_rate: float = DEFAULTS.growth_rate, decrease_rate: float = DEFAULTS.decrease_rate,
                 accuracy_threshold: float = DEFAULTS.accuracy_threshold, k_epoch: int = DEFAULTS.k_epoch,
                 zero_eps: float = DEFAULTS.zero_eps, params: Iterable[str] | None = None,
                 groups: Sequence[ChannelGroup] | None = None,
                 steps_per_epoch: int | None = None, scale_teta1: bool = True,
                 fast_start: float | None = DEFAULTS.fast_start, *, units: Units | None = None) -> None:
        check_settings(teta1=teta1, growth_rate=growth_rate, decrease_rate=decrease_rate,
                       accuracy_threshold=accuracy_threshold, k_epoch=k_epoch, zero_eps=zero_eps,
                       steps_per_epoch=steps_per_epoch, fast_start=fast_start)  # refused now, not when training starts
        self.monitor, self.scale_teta1 = monitor, scale_teta1
        self.settings = dict(teta1=teta1, growth_rate=growth_rate, decrease_rate=decrease_rate,
                             accuracy_threshold=accuracy_threshold, k_epoch=k_epoch, zero_eps=zero_eps,
                             params=None if params is None else list(params), groups=groups,
                             steps_per_epoch=steps_per_epoch, fast_start=fast_start, units=units)
        self.sabr: SABR | None = None
        self._pending: dict | None = None  # a checkpoint's state, loaded before training starts
        self._stepped_epoch = -1
        self._warned = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        settings = dict(self.settings)
        if settings["steps_per_epoch"] is None and self.scale_teta1:
            settings["steps_per_epoch"] = max(1, int(trainer.num_training_batches))
        self.sabr = SABR(pl_module, **settings)
        if self._pending is not None:
            self.sabr.load_state_dict(self._pending["sabr"])
            self._stepped_epoch, self._pending = self._pending["stepped_epoch"], None

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sabr is None or self.sabr.all_frozen:
            return
        penalty = self.sabr.penalty() / trainer.accumulate_grad_batches
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        (scaler.scale(penalty) if scaler is not None else penalty).backward()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sabr is None or trainer.sanity_checking or trainer.current_epoch == self._stepped_epoch:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise ConfigError(f"SABRCallback reads the validation accuracy logged as {self.monitor!r}, but the "
                              f"module logged only {sorted(trainer.callback_metrics) or 'nothing'}; log it with "
                              f"self.log({self.monitor!r}, accuracy) in validation_step, or pass monitor=.")
        result = self.sabr.step(float(value))
        self._stepped_epoch = trainer.current_epoch
        row = {"val_accuracy": float(value), "mean_lambda": self.sabr.mean_lambda(),
               "near_zero_sparsity": self.sabr.near_zero_sparsity(), "frozen": len(self.sabr.frozen)}
        for logger in trainer.loggers:
            logger.log_metrics(epoch_scalars("sabr", row, self.sabr.lambdas), step=trainer.global_step)
        if result.frozen:
            pl_module.print(f"SABR: epoch {trainer.current_epoch}: froze {result.frozen}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sabr is None or trainer.current_epoch == self._stepped_epoch or self._warned:
            return
        self._warned = True  # said once: every epoch without validation is the same mistake
        rank_zero_warn(f"SABRCallback: epoch {trainer.current_epoch} ended without a validation loop, so SABR did "
                       "not step (no lambda grows, nothing freezes); give trainer.fit val_dataloaders= and a "
                       f"validation_step that logs {self.monitor!r}, and keep check_val_every_n_epoch=1.")

    def state_dict(self) -> dict[str, Any]:
        if self.sabr is None:
            return dict(self._pending or {})
        return {"sabr": self.sabr.state_dict(), "stepped_epoch": self._stepped_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.sabr is None:
            self._pending = dict(state_dict)
        else:
            self.sabr.load_state_dict(state_dict["sabr"])
            self._stepped_epoch = state_dict["stepped_epoch"]


__all__ = ["SABRCallback"]
