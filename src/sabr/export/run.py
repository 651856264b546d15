"""``sabr export``: one phase of a run folder written in one of the formats and checked by loading it back."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import SabrError
from ..rundir import guard_outputs
from .load import check_outputs, load_model
from .onnx import export_onnx
from .shrink import save_shrunk, shrink
from .sparse import save_sparse

log = logging.getLogger(__name__)

FORMATS = ("sparse", "shrunk", "onnx", "web")


def example_input(meta: dict, batch: int = 2) -> torch.Tensor:
    """Zeros shaped like the model's input ``(batch, channels, size, size)``, from a checkpoint's metadata."""
    p = meta["preprocess"]
    return torch.zeros(batch, int(p["channels"]), int(p["image_size"]), int(p["image_size"]))


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, phase: str = "pruned",
               check_input: torch.Tensor | None = None, trust_model_code: bool = False) -> dict:
    """Export one phase of a run (default: ``pruned``) as ``sparse``, ``shrunk`` or ``onnx``.

    Args:
        run_dir: a folder written by ``sabr run``, or a checkpoint (``.safetensors``) written by
            :func:`sabr.save_checkpoint`.
        fmt: one of :data:`FORMATS` (``web``: a static site, see :func:`~sabr.export.web.export_web`).
        out: the output file (default: ``<run_dir>/export/<phase>-<fmt>.safetensors`` or ``.onnx``; for a
            checkpoint ``<its folder>/export/<its name>-<fmt>...``); for ``web`` a folder (default
            ``<run_dir>/export/site``).
        phase: which checkpoint of a run folder to export.
        check_input: a batch of real inputs to compare outputs on (default: zeros).
        trust_model_code: see :func:`~sabr.export.load_model`.

    Returns:
        a dict with ``path``, ``format``, ``bytes``, ``max_abs_diff`` (export vs. the dense model on
        ``check_input``) and, for ``shrunk``, ``layers`` (output channels before/after per layer).
    """
    if fmt not in FORMATS:
        raise SabrError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    run_dir = Path(run_dir)
    if fmt == "web":
        from .web import export_web

        folder = Path(out) if out else (run_dir if run_dir.is_dir() else run_dir.parent) / "export" / "site"
        with guard_outputs(run_dir, [folder]):  # never on the run's own files; the run locked while writing in it
            return export_web(run_dir, folder, phase=phase, trust_model_code=trust_model_code,
                              check_input=check_input)
    suffix = ".onnx" if fmt == "onnx" else ".safetensors"
    folder, stem = (run_dir, phase) if run_dir.is_dir() else (run_dir.parent, run_dir.stem)
    out = Path(out) if out else folder / "export" / f"{stem}-{fmt}{suffix}"
    # refused before any work when it would land on what the export reads; the run locked while writing in it
    writing = guard_outputs(run_dir, [out.with_suffix(suffix), out.with_suffix(".json")])
    model, meta = load_model(run_dir, phase, trust_model_code=trust_model_code)
    check_outputs(model, meta, run_dir)
    x = check_input if check_input is not None else example_input(meta)
    with writing:
        return _export(model, meta, fmt, out, x, trust_model_code)


def _export(model: torch.nn.Module, meta: dict, fmt: str, out: Path, x: torch.Tensor, trust_model_code: bool) -> dict:
    """Write ``model`` as ``fmt`` to ``out``, load it back and compare its outputs on ``x``: :func:`export_run`'s dict."""
    result: dict = {"format": fmt}
    with torch.no_grad():
        reference = model(x)
    if fmt == "sparse":
        path = save_sparse(model, out, meta)
    elif fmt == "shrunk":
        small, rep = shrink(model, example_input(meta))
        path = save_shrunk(small, out, meta, rep)
        result["layers"] = rep.to_dict()["layers"]
        result["params_before"], result["params_after"] = rep.params_before, rep.params_after
    else:
        path, _ = export_onnx(model, out, meta, example_input(meta, 1), check_input=x)
    loaded, _ = load_model(path, trust_model_code=trust_model_code)
    with torch.no_grad():
        result["max_abs_diff"] = float((loaded(x) - reference).abs().max())
    result["path"] = str(path)
    result["bytes"] = path.stat().st_size
    log.debug("exported %s to %s (%d bytes, max abs diff %.2e)", fmt, path, result["bytes"], result["max_abs_diff"])
    return result
