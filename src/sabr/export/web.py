"""The ``web`` export format: a static site that runs the recogniser and the elevator in a web browser.

``sabr export --run RUN --format web --out site/`` writes a self-contained folder:

* ``model.onnx`` (+ ``model.json``): the model as ONNX (:func:`~sabr.export.export_onnx`), the shrunk model
  (:func:`~sabr.export.shrink`) when it has fewer parameters than the pruned one;
* ``app.json``: the class names, the training preprocessing, the calibrated decision rule and the apps'
  settings (smoothing window, stable frames, ROI, elevator speed), all read from the run's metadata and
  :class:`~sabr.app_config.ElevatorSettings`' defaults;
* ``index.html`` and the page's plain ES modules (no build step), copied from ``sabr/export/site/``;
* ``package.json`` pinning ``onnxruntime-web``, and the runtime's files in ``ort/`` (fetched with
  ``npm pack`` when ``npm`` is on the path; otherwise the page loads them from ``node_modules/`` after one
  ``npm install`` in the folder);
* ``.sabr-manifest.json`` (:class:`sabr.manifest.Manifest` of kind ``site``): the files sabr wrote, so that a
  later export into the same folder replaces only those, and a folder that is not a sabr site is never written
  into.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import fields
from importlib import resources
from pathlib import Path

import torch

from ..app_config import ElevatorSettings
from ..calibration import Calibration
from ..checkpoint import atomic_write, make_folder, write_json
from ..errors import SabrError
from ..manifest import Manifest
from .load import load_model
from .onnx import export_onnx
from .run import example_input
from .shrink import shrink

log = logging.getLogger(__name__)

#: The onnxruntime-web release the page is tested with (``package.json`` pins it).
ORT_WEB_VERSION = "1.31.1"
#: Its files the page loads: the ES module with the WebGPU and WebAssembly backends, and its wasm build.
ORT_FILES = ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
#: The page's own files, shipped in ``sabr/export/site/``.
PAGE_FILES = ("index.html", "style.css", "app.js", "preprocess.js", "decision.js", "elevator.js")
#: The app settings the page reads (the rest of :class:`ElevatorSettings` concerns files and windows).
_SETTINGS = ("window", "roi_fraction", "stable_frames", "min_confidence", "floors_per_second", "door_seconds")


class WebExportError(SabrError):
    """The web site cannot be written (the model does not export to ONNX, or the folder is not a sabr site)."""


def decision_rule(meta: dict) -> dict:
    """The calibrated decision rule of a checkpoint's metadata, with the apps' defaults where it has none.

    Returns ``{"temperature": T, "threshold": t, "ood": {"score": s, "threshold": u}}``: probabilities are
    ``softmax(logits / T)``; a frame whose OOD score ``s`` of the raw logits (``"max_logit"``: max z,
    ``"energy"``: logsumexp z) is below ``u`` adds zeros to the smoothing window instead; a label is claimed
    when the smoothed maximum probability is ``>= t``. A model saved without calibration gets
    :class:`~sabr.calibration.Calibration`'s defaults (``T = 1``, ``t = 0.6``, no OOD check).
    """
    rule = Calibration.from_dict(meta.get("calibration")).to_dict()  # the recogniser's reading of it
    return {k: rule[k] for k in ("temperature", "threshold", "ood")}


def export_web(run_dir: str | Path, out: str | Path, phase: str = "pruned", trust_model_code: bool = False,
               check_input: torch.Tensor | None = None, npm: str | None = "npm") -> dict:
    """Write the static web site of one phase of a run to the folder ``out``.

    Args:
        run_dir: a run folder or a checkpoint, as for :func:`~sabr.export.export_run`.
        out: the site folder: new, empty, or a site sabr wrote before (its files are replaced).
        phase: which checkpoint of a run folder.
        trust_model_code: see :func:`~sabr.export.load_model`.
        check_input: the batch the ONNX model is checked on against PyTorch (default: zeros).
        npm: the ``npm`` command used to fetch onnxruntime-web (``None``: do not fetch it).

    Returns:
        ``path``, ``format``, ``bytes`` (the ONNX model's), ``max_abs_diff``, ``shrunk`` (whether the
        shrunk model was used), ``params``, and ``runtime`` (``"ort/"`` when the runtime was copied in, else
        ``None`` and ``hint``, the ``npm install`` step that completes the site).

    Raises:
        SabrError: ``out`` exists and is not a sabr site (:meth:`sabr.manifest.Manifest.claim`), or the model
            cannot be exported to ONNX (:class:`WebExportError`).
    """
    out = Path(out)
    _refuse_other_folders(out)  # before any work
    model, meta = load_model(run_dir, phase, trust_model_code=trust_model_code)
    model, used_shrunk, params = _smallest(model, meta)
    manifest = Manifest.claim(out, "site")
    with manifest:  # every file written below is listed in the site's manifest first
        x1 = example_input(meta, 1)
        try:
            checked = check_input if check_input is not None else x1
            path, diff = export_onnx(model, out / "model.onnx", meta, x1, checked)
        except SabrError as exc:
            raise WebExportError(f"the model of {run_dir} cannot be exported to ONNX for the web page ({exc})."
                                 ) from exc
        except Exception as exc:  # noqa: BLE001 - torch.onnx raises many types for unsupported operators
            raise WebExportError(f"the model of {run_dir} cannot be exported to ONNX for the web page "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); the web "
                                 "export needs a model of ONNX opset 17 operators.") from None
        runtime = _fetch_runtime(out, npm)
        write_json(out / "app.json", _app_config(meta, used_shrunk, params, path.stat().st_size, runtime))
        _copy_page(out)
        write_json(out / "package.json", {"name": "sabr-site", "private": True, "description": "sabr's web app: "
                                          "serve this folder with `sabr serve`", "dependencies":
                                          {"onnxruntime-web": ORT_WEB_VERSION}})
    written = ["model.onnx", "model.json", "app.json", "package.json", *PAGE_FILES]
    written += ["ort", *(f"ort/{f}" for f in ORT_FILES)] if runtime else []
    manifest.remove(keep=written)  # what an earlier export wrote and this one did not
    result = {"path": str(out), "format": "web", "bytes": path.stat().st_size, "max_abs_diff": diff,
              "shrunk": used_shrunk, "params": params, "runtime": runtime}
    if runtime is None:
        result["hint"] = (f"npm was not found: run `npm install` in {out} once (package.json pins onnxruntime-web "
                          f"{ORT_WEB_VERSION}); the page then loads it from node_modules/.")
    return result


def _smallest(model: torch.nn.Module, meta: dict) -> tuple[torch.nn.Module, bool, int]:
    """The shrunk model when it has fewer parameters than ``model``, else ``model``; ``(model, shrunk?, params)``."""
    params = sum(p.numel() for p in model.parameters())
    try:
        small, rep = shrink(model, example_input(meta, 2))
    except SabrError as exc:
        log.info("web export: the model does not shrink (%s); the pruned model is exported", exc)
        return model, False, params
    if rep.params_after < rep.params_before:
        return small, True, rep.params_after
    return model, False, params


def _app_config(meta: dict, shrunk: bool, params: int, onnx_bytes: int, runtime: str | None) -> dict:
    """``app.json``: everything the page needs to preprocess, decide and drive the elevator."""
    defaults = {f.name: f.default for f in fields(ElevatorSettings)}
    rule = decision_rule(meta)
    if defaults["min_confidence"] is None:  # the apps' default: the model's claim threshold
        defaults["min_confidence"] = rule["threshold"]
    p = meta["preprocess"]
    return {
        "format": 1,
        "model": "model.onnx",
        "name": (meta.get("model") or {}).get("name", "model"),
        "classes": [str(c) for c in meta["classes"]],
        "preprocess": {"image_size": int(p["image_size"]), "channels": int(p["channels"]),
                       "mean": [float(v) for v in p["mean"]], "std": [float(v) for v in p["std"]]},
        "decision": rule,
        "settings": {k: defaults[k] for k in _SETTINGS},
        "model_info": {"shrunk": shrunk, "params": params, "onnx_bytes": onnx_bytes,
                       "test_accuracy": meta.get("test_accuracy")},
        "runtime": {"package": "onnxruntime-web", "version": ORT_WEB_VERSION, "module": ORT_FILES[0],
                    "path": runtime or "node_modules/onnxruntime-web/dist/"},
    }


def _copy_page(out: Path) -> None:
    """The page's files from the package (``sabr/export/site/``), written atomically."""
    site = resources.files("sabr.export").joinpath("site")
    atomic_write({out / name: site.joinpath(name).read_bytes() for name in PAGE_FILES})


def _fetch_runtime(out: Path, npm: str | None) -> str | None:
    """Copy onnxruntime-web's files into ``out/ort/`` with ``npm pack``; ``"ort/"``, or ``None`` without npm."""
    exe = shutil.which(npm) if npm else None
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run([exe, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--silent"], cwd=tmp, check=True,
                           capture_output=True, timeout=600)
            tgz = next(Path(tmp).glob("onnxruntime-web-*.tgz"))
            with tarfile.open(tgz) as tar:
                data = {out / "ort" / f: tar.extractfile(f"package/dist/{f}").read() for f in ORT_FILES}
        except (subprocess.SubprocessError, OSError, StopIteration, KeyError, tarfile.TarError) as exc:
            log.warning("npm could not fetch onnxruntime-web %s (%s); run `npm install` in %s", ORT_WEB_VERSION,
                        exc, out)
            return None
    make_folder(out / "ort")
    atomic_write(data)
    return "ort/"


def _refuse_other_folders(out: Path) -> None:
    """Refuse ``out`` when it is a file, or a folder with content that is not a sabr site (nothing is created)."""
    if out.exists() and not out.is_dir():
        raise WebExportError(f"--out {out} is a file; choose a new folder for the web site.")
    if out.is_dir() and any(out.iterdir()):
        Manifest.claim(out, "site")  # an existing site is read back; anything else is refused in one sentence
