"""sabr: Sparsity-Accuracy Balanced Regularization for PyTorch vision models.

Drop the regulariser into any training loop::

    from sabr import SABR, prune
    reg = SABR(model)                                   # lambda_t = teta1 * std(w_t)
    loss = criterion(model(x), y) + reg.penalty()       # every step
    reg.step(val_accuracy)                              # once per epoch; stop when reg.all_frozen
    prune(model)                                        # exact zeros at the end

``SabrSettings`` holds SABR's hyper-parameters and their one set of defaults
(``SABR(model, **dataclasses.asdict(settings))``). The phases live in :mod:`sabr.phases` (on the one
epoch loop :func:`sabr.train.fit`), the peers SABR is compared with in :mod:`sabr.baselines`, the run
folder in :mod:`sabr.rundir`, the Lightning callback in :mod:`sabr.integrations.lightning`.

The names below are imported on first use (PEP 562), so ``import sabr`` and ``sabr --help`` do not load
torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import attach

from .version import __version__

_EXPORTS: dict[str, tuple[str, ...]] = {
    "calibration": ("Calibration", "calibrate_model"),
    "checkpoint": ("load_checkpoint", "save_checkpoint"),
    "config": ("RunConfig", "SabrSettings"),
    "data": ("Preprocess", "load_dataset", "split_dataset"),
    "experiment": ("load_experiment",),
    "errors": ("CheckpointError", "ConfigError", "DataError", "SabrError", "StorageError", "TrainingError"),
    "bench": ("bench_model", "bench_run", "sparsify"),
    "channels": ("ChannelGroup", "channel_groups"),
    "export": ("OnnxModel", "export_onnx", "export_run", "load_model", "load_run", "save_shrunk", "save_sparse",
               "shrink"),
    "metrics": ("count_macs", "sparsity_report"),
    "models": ("create_model", "list_models", "register_model"),
    "pruning": ("apply_masks", "prune", "prune_channel_share", "prune_threshold", "revive_channels", "zero_masks"),
    "regularizer": ("SABR",),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS, globals(), extra=("__version__",))

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .bench import bench_model, bench_run, sparsify
    from .calibration import Calibration, calibrate_model
    from .channels import ChannelGroup, channel_groups
    from .checkpoint import load_checkpoint, save_checkpoint
    from .config import RunConfig, SabrSettings
    from .data import Preprocess, load_dataset, split_dataset
    from .errors import CheckpointError, ConfigError, DataError, SabrError, StorageError, TrainingError
    from .experiment import load_experiment
    from .export import (OnnxModel, export_onnx, export_run, load_model, load_run, save_shrunk, save_sparse,
                         shrink)
    from .metrics import count_macs, sparsity_report
    from .models import create_model, list_models, register_model
    from .pruning import apply_masks, prune, prune_channel_share, prune_threshold, revive_channels, zero_masks
    from .regularizer import SABR

