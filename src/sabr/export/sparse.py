"""The ``sparse`` export format: only the non-zeros of each tensor are stored.

Per tensor, the smallest of three encodings is written: dense, a packed bitmask plus the values, or
flat ``int32`` indices plus the values. Decoding restores bit-identical tensors. Safetensors, no pickle.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ._files import plain_meta, save_export


def _encode(t: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
    """Smallest of three encodings of one tensor: dense, bitmask + values, flat indices + values."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() < 64 or not flat.dtype.is_floating_point:
        return "dense", {"": t.detach().cpu().contiguous()}
    nz = flat != 0
    values = flat[nz].contiguous()
    n, k, item = flat.numel(), values.numel(), flat.element_size()
    sizes = {"dense": n * item, "bitmask": math.ceil(n / 8) + k * item, "index": k * (4 + item)}
    kind = min(sizes, key=sizes.get)
    if kind == "dense":
        return "dense", {"": t.detach().cpu().contiguous()}
    if kind == "bitmask":
        bits = torch.from_numpy(np.packbits(nz.numpy().astype(np.uint8)))
        return "bitmask", {"mask": bits, "values": values}
    return "index", {"index": torch.nonzero(nz).reshape(-1).to(torch.int32), "values": values}


def _decode(kind: str, shape: list[int], dtype: torch.dtype, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`_encode` for one tensor of ``shape`` and ``dtype``."""
    n = math.prod(shape)
    if kind == "dense":
        return parts[""].reshape(shape)
    out = torch.zeros(n, dtype=dtype)
    if kind == "bitmask":
        mask = torch.from_numpy(np.unpackbits(parts["mask"].numpy(), count=n).astype(bool))
        out[mask] = parts["values"]
    elif kind == "index":
        out[parts["index"].long()] = parts["values"]
    else:
        raise CheckpointError(f"unknown sparse encoding {kind!r}; the file was written by a newer sabr.")
    return out.reshape(shape)


def sparse_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Encode a state dict: ``(flat tensors for safetensors, per-tensor layout for the JSON)``."""
    tensors, layout = {}, {}
    for name, t in state.items():
        kind, parts = _encode(t)
        layout[name] = {"encoding": kind, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for part, value in parts.items():
            tensors[f"{name}:{part}" if part else name] = value
    return tensors, layout


def dense_state_dict(tensors: dict[str, torch.Tensor], layout: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`sparse_state_dict`: bit-identical dense tensors."""
    state = {}
    for name, info in layout.items():
        prefix = f"{name}:"
        parts = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if info["encoding"] == "dense":
            parts = {"": tensors[name]}
        state[name] = _decode(info["encoding"], info["shape"], getattr(torch, info["dtype"]), parts)
    return state


def save_sparse(model: nn.Module, path: str | Path, metadata: dict) -> Path:
    """Write ``model``'s weights storing only the non-zeros; ``metadata`` as for :func:`~sabr.save_checkpoint`.

    Returns the ``.safetensors`` path; the layout and ``metadata`` go to the ``.json`` beside it.
    :func:`~sabr.export.load_model` reads it back.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tensors, layout = sparse_state_dict(state)
    meta = plain_meta(metadata) | {"export": {"format": "sparse", "tensors": layout}}
    return save_export(tensors, path, meta)
