"""The one loader: any path sabr writes -> ``(model, metadata)``.

:func:`load_model` opens a run folder (one phase of it), a phase checkpoint, or a ``sparse`` / ``shrunk``
/ ``onnx`` export. :func:`load_run` is the same call for run folders only (the name the README uses);
the apps' ``load_any`` is this function too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import PHASES, build_model, load_checkpoint, load_weights_into, read_metadata, read_weights
from ..data import Preprocess
from ..errors import CheckpointError
from .onnx import OnnxModel
from .shrink import apply_layer_specs
from .sparse import dense_state_dict

_SUFFIXES = (".safetensors", ".json", ".onnx")


def load_model(path: str | Path, phase: str = "pruned", device: str | torch.device = "cpu",
               trust_model_code: bool = False) -> tuple[Any, dict]:
    """Load any sabr model: a run folder, a phase checkpoint, or a ``sparse`` / ``shrunk`` / ``onnx`` export.

    Args:
        path: a run folder (its ``phase`` checkpoint is loaded), or a ``.safetensors`` / ``.onnx`` file
            (or its ``.json``) written by ``sabr run`` or ``sabr export``.
        phase: for run folders, ``"base"``, ``"sabr"`` or ``"pruned"`` (default).
        device: where to put a PyTorch model (ONNX models always run on the CPU).
        trust_model_code: allow importing the user code (``file.py:factory``) the model was trained with;
            the file must be unchanged since (its SHA-256 is checked). ONNX files never need it.

    Returns:
        ``(model, metadata)``: an ``nn.Module`` in eval mode (an :class:`OnnxModel` for ``.onnx``,
        called the same way: tensor in, logits out); ``metadata`` holds ``classes`` (names in label
        order), ``model`` (name, input size, channels), ``preprocess`` and ``transform`` (the
        :class:`~sabr.data.Preprocess` used in training: call it on a PIL image), plus ``export`` for exports.

    Raises:
        CheckpointError: the path does not exist, is not a sabr file, or its files are damaged; the model
            comes from user code and ``trust_model_code`` is off, or that code changed after training.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return load_checkpoint(_phase_checkpoint(path, phase), device, trust_model_code)
    path = _model_file(path)
    meta = read_metadata(path)
    fmt = (meta.get("export") or {}).get("format")
    if path.suffix == ".onnx":
        model: Any = OnnxModel(path)
    elif fmt is None:
        return load_checkpoint(path, device, trust_model_code)
    else:
        model = _load_export(path, meta, fmt, trust_model_code).to(device).eval()
    if "preprocess" in meta:
        meta["transform"] = Preprocess.from_dict(meta["preprocess"])
    return model, meta


def load_run(run_dir: str | Path, phase: str = "pruned", device: str | torch.device = "cpu",
             trust_model_code: bool = False) -> tuple[nn.Module, dict]:
    """Load one phase of a finished ``sabr run``: :func:`load_model` on a run folder.

    Args:
        run_dir: the run folder (``--out`` of ``sabr run``).
        phase: ``"base"``, ``"sabr"`` or ``"pruned"`` (default).
        device: where to put the model.
        trust_model_code: see :func:`load_model`.

    Returns:
        ``(model, metadata)`` as for :func:`load_model`.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; pass the folder `sabr run` wrote (--out).")
    return load_model(run_dir, phase, device, trust_model_code)


def _phase_checkpoint(run_dir: Path, phase: str) -> Path:
    """The checkpoint file of ``phase`` in ``run_dir``, checked to exist."""
    if phase not in PHASES:
        raise CheckpointError(f"phase must be one of {', '.join(PHASES)}, got {phase!r}.")
    path = run_dir / f"{phase}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {phase} checkpoint ({path.name}); did that phase finish?")
    return path


def _model_file(path: Path) -> Path:
    """The weights file (``.safetensors`` or ``.onnx``) that ``path`` (that file, its ``.json``, or its
    name without a suffix) stands for."""
    if not path.exists() and not path.with_suffix(".safetensors").exists():
        raise CheckpointError(f"model {path} does not exist; pass a `sabr run` folder, a .safetensors checkpoint "
                              "or a `sabr export` file.")
    if path.suffix.lower() not in _SUFFIXES and (path.is_file() or path.suffix):
        raise CheckpointError(f"cannot load {path}: unknown model format {path.suffix or '(none)'!r}; pass a "
                              "`sabr run` folder or a .safetensors / .onnx file written by sabr.")
    if path.suffix == ".json":
        fmt = ((read_metadata(path) if path.is_file() else {}).get("export") or {}).get("format")
        path = path.with_suffix(".onnx" if fmt == "onnx" else ".safetensors")
    if path.suffix == ".onnx":
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist.")
        return path
    return path.with_suffix(".safetensors")


def _load_export(path: Path, meta: dict, fmt: str, trust_model_code: bool) -> nn.Module:
    """The PyTorch model of a ``sparse`` or ``shrunk`` export (on the CPU)."""
    tensors = read_weights(path, meta.get("weights_sha256"))
    model = build_model(meta, trust_model_code)
    if fmt == "sparse":
        state = dense_state_dict(tensors, meta["export"]["tensors"])
    elif fmt == "shrunk":
        apply_layer_specs(model, meta["export"]["layers"])
        state = tensors
    else:
        raise CheckpointError(f"{path} has export format {fmt!r}, which this sabr cannot load.")
    load_weights_into(model, state, source=str(path))
    return model


@torch.no_grad()
def check_outputs(model: Any, meta: dict, source: str | Path) -> None:
    """Refuse a model whose outputs on a zero input are not finite (NaN or infinite weights, a training that
    diverged): ``sabr export``, ``bench`` and ``recognize`` would otherwise report nonsense as results.

    Raises:
        CheckpointError: naming ``source``.
    """
    m = meta.get("model") or {}
    device = next(model.parameters()).device if isinstance(model, nn.Module) else "cpu"
    x = torch.zeros(1, int(m["in_chans"]), int(m["image_size"]), int(m["image_size"]), device=device)
    if not bool(torch.isfinite(torch.as_tensor(model(x))).all()):
        raise CheckpointError(f"the model in {source} gives outputs that are not finite (NaN or infinity) on a "
                              "blank image: its weights are damaged or its training diverged; export, measure or "
                              "run another checkpoint (e.g. --phase base), or retrain.")
