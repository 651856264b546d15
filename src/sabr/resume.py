"""Exact resume: everything needed to continue a run, in one file written atomically every epoch.

The state is one ``resume.safetensors`` file in the run folder: its tensors (model, best model,
optimiser moments, RNG states) are safetensors tensors, and the rest (phase, epoch, SABR state,
scheduler, history rows, figures) is JSON kept in the file's metadata, where each tensor appears as
``{"__tensor__": key}``. Nothing is pickled. The file is replaced with :func:`os.replace`, so a run
killed at any moment (SIGKILL included) leaves either the previous epoch's state or the new one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import atomic_write, load_weights_into
from .errors import CheckpointError
from .train import FitState

FORMAT_VERSION = 1


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in a nested structure by a reference; tuples become ``{"__tuple__": [...]}``."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def rng_state() -> dict:
    """The Python, NumPy and torch (CPU and CUDA) global random states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (also after a JSON round trip)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def optimizer_state(state: dict) -> dict:
    """An optimiser ``state_dict`` read back from JSON: its per-parameter keys are integers again."""
    return {**state, "state": {int(k): v for k, v in state["state"].items()}}


def training_state(fit: FitState, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                   generator: torch.Generator, **extra: Any) -> dict:
    """A training phase's full state after an epoch of :func:`sabr.train.fit`, for :func:`save_state`.

    Holds the epoch, weights, optimiser, scheduler, batch-order generator, global RNG states and
    history rows; the best weights and accuracy when the loop keeps a best epoch; then ``extra``
    (e.g. ``sabr=reg.state_dict()``). Tensors are the live ones: copy them to keep them.
    """
    state = {"epoch": fit.epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "generator": generator.get_state(), "rng": rng_state(),
             "rows": fit.rows}
    if fit.best_model is not None:
        state.update(best_accuracy=fit.best_accuracy, best_model=fit.best_model)
    return {**state, **extra}


def restore_training(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                     generator: torch.Generator) -> FitState:
    """Load what :func:`training_state` saved back into the phase's objects and the global RNGs.

    Returns the :class:`~sabr.train.FitState` to give :func:`sabr.train.fit` so that training continues
    after the saved epoch exactly as if it had not stopped.
    """
    load_weights_into(model, state["model"], source="the resume state")
    optimizer.load_state_dict(optimizer_state(state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    set_rng_state(state["rng"])
    best = state.get("best_model")
    return FitState(epoch=int(state["epoch"]), rows=list(state["rows"]),
                    best_accuracy=state.get("best_accuracy", -1.0), best_model=None if best is None else dict(best))


def save_state(path: str | Path, state: dict) -> None:
    """Write a nested dict of JSON values and tensors to ``path`` atomically (see the module docstring)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(state, "", tensors)
    meta = {"sabr_resume": json.dumps({"version": FORMAT_VERSION, "state": structure})}
    atomic_write({Path(path): save(tensors, metadata=meta)})


def load_state(path: str | Path) -> dict:
    """Read a state written by :func:`save_state` (safetensors only: nothing is unpickled)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        payload = json.loads(meta["sabr_resume"])
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{path} is not a readable sabr resume state ({exc}); it is damaged or was not written by sabr. "
            "Delete it to restart the run from the beginning (or use --overwrite)."
        ) from exc
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has resume format {payload.get('version')}, this sabr reads {FORMAT_VERSION}; "
                              "finish the run with the sabr version that started it, or start a new run.")
    return _unflatten(payload["state"], tensors)
