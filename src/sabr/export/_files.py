"""What every export format shares: the metadata it carries over from the source checkpoint, and where
its weights and JSON are written."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import make_folder, save_tensors


def plain_meta(meta: dict) -> dict:
    """The source checkpoint's metadata, less what belongs to it alone (its loaded transform, its hash); the
    versions that wrote the source stay as ``source_versions`` (the export records its own ``versions``)."""
    plain = {k: v for k, v in meta.items() if k not in ("transform", "weights_sha256", "versions")}
    if "versions" in meta:
        plain["source_versions"] = meta["versions"]
    return plain


def save_export(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict) -> Path:
    """Write ``tensors`` to ``path`` (as ``.safetensors``, creating its folder) with ``metadata`` beside it."""
    path = Path(path).with_suffix(".safetensors")
    make_folder(path.parent)
    return save_tensors(tensors, path, metadata)
