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
folder in :mod:`sabr.rundir`.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig
from .data import Preprocess, load_dataset, split_dataset
from .errors import CheckpointError, ConfigError, DataError, SabrError, StorageError, TrainingError
from .bench import bench_model, bench_run, sparsify
from .export import OnnxModel, export_onnx, export_run, load_model, load_run, save_shrunk, save_sparse, shrink
from .metrics import count_macs, sparsity_report
from .models import create_model, list_models, register_model
from .pruning import apply_masks, prune, prune_threshold, zero_masks
from .regularizer import SABR, SabrSettings

__version__ = "0.1.0"

__all__ = [
    "SABR", "SabrSettings", "prune", "prune_threshold", "zero_masks", "apply_masks", "sparsity_report", "count_macs", "load_run", "load_checkpoint",
    "save_checkpoint", "create_model", "list_models", "register_model", "Preprocess", "load_dataset",
    "split_dataset", "load_model", "shrink", "save_sparse", "save_shrunk", "export_onnx", "export_run",
    "OnnxModel", "sparsify", "bench_model", "bench_run", "RunConfig", "SabrError", "DataError", "ConfigError",
    "CheckpointError", "StorageError", "TrainingError", "__version__",
]
