"""Checkpoints: safetensors weights beside a JSON metadata file. Never pickles.

A checkpoint ``<dir>/<phase>.safetensors`` has its metadata in ``<dir>/<phase>.json``: the model's
source (a library name, or user code pinned to its file's SHA-256) and constructor arguments, the class
names, the preprocessing, and the phase's figures. That is enough to rebuild the model without the code
that trained it: :func:`load_checkpoint` reads one file; :func:`sabr.export.load_model` (the one loader)
builds on it for run folders and exports. A model from user code is rebuilt only with
``trust_model_code=True`` (``--trust-model-code``), and only from the very file it was trained with.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .calibration import OOD_SCORES
from .config import MAX_CLASSES, MAX_MODEL_IMAGE_SIZE
from .data import Preprocess
from .errors import CheckpointError, ConfigError, StorageError
from .manifest import note_written
from .models import create_model, display_name, is_user_code, pin

PHASES = ("base", "sabr", "pruned")


def _write_bytes(path: Path, data: bytes) -> None:
    """The one place where run files reach the disk (flushed and fsync'ed); ``path`` is the temporary file
    :func:`atomic_write` just created, opened again without following a link."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _new_temp(path: Path) -> Path:
    """Create a fresh, empty ``.<name>.<random>.tmp`` beside ``path``: exclusively (``O_EXCL``), never through a
    link (``O_NOFOLLOW``), with the usual permissions."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
            return tmp
        except FileExistsError:
            continue


def _storage_error(path: Path, exc: OSError) -> StorageError:
    why = ("the disk is full: free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else "check that the folder is writable and has space")
    folder = path.parent
    unfinished_run = (folder / "config.yaml").is_file() and not (folder / "summary.json").is_file()
    then = (f"continue with `sabr run --resume {folder}`" if unfinished_run else "run the command again")
    return StorageError(f"could not write {path} ({exc.strerror or exc}); {why}. The previous version of "
                        f"{path.name} is untouched and still loads; once fixed, {then}.")


def atomic_write(files: dict[Path, bytes]) -> None:
    """Write several files all-or-nothing per file: each goes to a new temporary file beside it first (created
    exclusively, never through a symbolic link), then every one is renamed over its target (``os.replace``
    replaces a link there, not what it points to).

    Inside a folder with an active :class:`~sabr.manifest.Manifest` each file is listed in it first, and a file
    that a link would carry out of that folder is refused. If any write fails (e.g. ``ENOSPC``) or is
    interrupted, the temporary files are removed, the existing files are left as they were, and
    :class:`~sabr.errors.StorageError` is raised (the interruption is raised again).
    """
    paths = [Path(p) for p in files]
    note_written(*paths)
    tmps: dict[Path, Path] = {}
    current = paths[0] if paths else None
    try:
        for current, data in zip(paths, files.values()):
            tmps[current] = _new_temp(current)
            _write_bytes(tmps[current], data)
        while tmps:
            current, tmp = next(iter(tmps.items()))
            os.replace(tmp, current)
            del tmps[current]
    except OSError as exc:
        _remove_temps(tmps.values())
        raise _storage_error(current, exc) from exc
    except BaseException:  # KeyboardInterrupt, SIGTERM: no temporary file is left behind
        _remove_temps(tmps.values())
        raise


def _remove_temps(tmps) -> None:
    for tmp in list(tmps):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # e.g. a read-only file system: the clean-up must not hide the real error
            pass


def make_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents); a failure is a :class:`~sabr.errors.StorageError`.

    Inside a folder with an active :class:`~sabr.manifest.Manifest` it is listed first, and refused when a
    symbolic link carries it out of that folder."""
    path = Path(path)
    note_written(path, folders=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the folder {path} ({exc.strerror or exc}); choose a place on a writable "
                           "disk.") from None
    return path


def json_text(data: Any) -> str:
    """``data`` as the indented JSON text every sabr file and ``--json`` output uses (tensors and arrays as lists)."""
    return json.dumps(data, indent=2, default=_jsonable) + "\n"


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename): a crash never leaves half a file."""
    atomic_write({Path(path): json_text(data).encode()})


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise ConfigError(f"cannot write a {type(obj).__name__} to JSON; pass numbers, strings, lists or dicts instead.")


def json_line(row: Any) -> str:
    """``row`` as one line of strict JSON (a JSONL record): a number that is not finite is written ``null``."""
    return json.dumps(_finite_or_null(row), allow_nan=False, default=_jsonable) + "\n"


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict) -> Path:
    """Write ``tensors`` to ``path`` (``.safetensors``) and ``metadata`` beside it (``.json``), all-or-nothing.

    The metadata gains ``weights_sha256``, the hash of the weights file, which the loaders check, and
    ``versions``, the software that wrote it (:func:`sabr.version.versions`).
    """
    from safetensors.torch import save

    from .version import versions

    path = Path(path).with_suffix(".safetensors")
    # one metadata key only: safetensors writes that map in random order, and a second key would make
    # identical weights give different bytes (and hashes, and gzip sizes) from one save to the next
    data = save({k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}, metadata={"format": "pt"})
    metadata = {**metadata, "versions": versions(), "weights_sha256": hashlib.sha256(data).hexdigest()}
    meta = (json.dumps(metadata, indent=2, default=_jsonable) + "\n").encode()
    atomic_write({path: data, path.with_suffix(".json"): meta})
    return path


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None, *, source: str | None = None,
                    classes: list[str] | None = None, preprocess: Preprocess | None = None) -> Path:
    """Save ``model``'s weights to ``path`` (``.safetensors``) and its metadata beside it (``.json``).

    From your own training loop, name the model's source, its classes and its preprocessing, and every
    ``sabr`` tool (``export``, ``bench``, ``recognize``, :func:`sabr.load_model`) works on the file::

        sabr.save_checkpoint(model, "out/my.safetensors", source="resnet18", classes=names,
                             preprocess=sabr.Preprocess(64, 3, mean, std))

    Args:
        model: the network; its weights must fit the model ``source`` builds (checked, on the meta device).
        path: the ``.safetensors`` file to write (its ``.json`` goes beside it).
        metadata: extra entries for the ``.json`` (``sabr run`` passes the whole metadata here).
        source: what ``--model`` takes: a model name, ``timm:<name>``, ``file.py:factory`` or
            ``package.module:factory`` (user code is recorded with its file's SHA-256).
        classes: class names in label order (their number is the model's ``num_classes``).
        preprocess: the :class:`~sabr.data.Preprocess` of training (gives ``in_chans`` and ``image_size``).
    """
    metadata = dict(metadata or {})
    if source is not None:
        if classes is None or preprocess is None:
            raise CheckpointError("save_checkpoint(source=...) also needs classes=[...] and preprocess=Preprocess(...) "
                                  "so that the model can be rebuilt and fed.")
        pinned = pin(source)
        metadata["model"] = {"name": display_name(pinned), "source": pinned, "num_classes": len(classes),
                             "in_chans": preprocess.channels, "image_size": preprocess.image_size}
        metadata.update(classes=list(classes), preprocess=preprocess.to_dict())
        with torch.device("meta"):
            _check_fits(build_model(metadata, trust_model_code=True).state_dict(), model.state_dict(), f"{source!r}")
    return save_tensors(model.state_dict(), path, metadata)


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of a checkpoint (``x.safetensors`` -> ``x.json``)."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        kind = "an .onnx export" if path.suffix == ".onnx" else "a .safetensors checkpoint"
        raise CheckpointError(f"{meta_path} is missing, and sabr needs it beside {kind} ({path.name}); if a `sabr "
                              "export` was interrupted, export again, else restore the .json from where it was written.")
    try:
        meta = json.loads(meta_path.read_text())
    except OSError as exc:
        raise CheckpointError(f"cannot read {meta_path} ({exc.strerror or exc}); make the file readable (or restore "
                              "it) and try again.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON ({exc}); the checkpoint metadata is damaged.") from exc
    check_metadata(meta, meta_path)
    return meta


def check_metadata(meta: Any, source: str | Path = "checkpoint metadata") -> None:
    """Refuse metadata that does not describe its weights consistently (raises :class:`CheckpointError`).

    Checked: ``model`` names a model with whole-number ``num_classes`` (at most
    :data:`~sabr.config.MAX_CLASSES`), ``in_chans`` (1 or 3) and ``image_size`` (at most
    :data:`~sabr.config.MAX_MODEL_IMAGE_SIZE`); ``classes`` (if present) has one name per output;
    ``preprocess`` (if present) has the model's input size and channels and one finite mean and one
    positive finite std per channel; ``calibration`` (if present) is a decision rule with finite numbers;
    ``export`` (if present) is a mapping; ``weights_sha256`` is present
    (except for ONNX exports, whose graph holds the weights), so the integrity check cannot be switched
    off by deleting it.
    """
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{source}: {what}; the metadata was edited or damaged. Restore it from the run "
                               "folder (or retrain) -- sabr does not guess.")

    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise bad("it holds no 'model' entry")
    m = meta["model"]
    problem = _model_problem(m)
    if problem:
        raise bad(problem)
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or len(classes) != m["num_classes"]):
        raise bad(f"'classes' has {len(classes) if isinstance(classes, list) else 'no list of'} names for a model "
                  f"with {m['num_classes']} outputs")
    pre = meta.get("preprocess")
    if pre is not None:
        channels, size = (pre.get("channels"), pre.get("image_size")) if isinstance(pre, dict) else (None, None)
        if (channels, size) != (m["in_chans"], m["image_size"]):
            raise bad(f"preprocess gives {channels} channel(s) of {size} pixels but the model takes "
                      f"{m['in_chans']} of {m['image_size']}")
        if not all(isinstance(pre.get(k), list) and len(pre[k]) in (1, channels) for k in ("mean", "std")):
            raise bad("preprocess.mean / std need one value per channel")
        if not all(_finite(v) for v in pre["mean"]) or not all(_finite(v) and v > 0 for v in pre["std"]):
            raise bad(f"preprocess.mean {pre['mean']} / std {pre['std']} must be finite numbers, the std > 0")
    problem = _calibration_problem(meta.get("calibration"))
    if problem:
        raise bad(problem)
    export = meta.get("export")
    if export is not None and not isinstance(export, dict):
        raise bad(f"'export' is {export!r}, not a mapping with its 'format'")
    if (export or {}).get("format") != "onnx" and not isinstance(meta.get("weights_sha256"), str):
        raise bad("'weights_sha256' is missing, so the weights' integrity cannot be checked")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _calibration_problem(cal: Any) -> str | None:
    """What is wrong with a metadata's decision rule (``calibration``: a positive finite temperature, a threshold
    in [0, 1], an OOD score sabr knows with a finite threshold), if anything; ``None`` for no rule."""
    if cal is None:
        return None
    ood = cal.get("ood") if isinstance(cal, dict) else None
    if not isinstance(cal, dict) or not isinstance(ood or {}, dict):
        return f"'calibration' is {cal!r}, not a mapping"
    temperature, threshold = cal.get("temperature", 1.0), cal.get("threshold", 0.5)
    if not (_finite(temperature) and temperature > 0 and _finite(threshold) and 0 <= threshold <= 1):
        return f"calibration temperature {temperature!r} / threshold {threshold!r} must be > 0 / in [0, 1]"
    score, limit = (ood or {}).get("score"), (ood or {}).get("threshold")
    if score is not None and (score not in OOD_SCORES or not _finite(limit)):
        return f"calibration.ood {ood!r} needs a score among {', '.join(OOD_SCORES)} and a finite threshold"
    return None


def _model_problem(m: dict) -> str | None:
    """What is wrong with a metadata's ``model`` shape (``num_classes``, ``in_chans``, ``image_size``), if anything."""
    shape = {k: m.get(k) for k in ("num_classes", "in_chans", "image_size")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape.values()):
        return f"model {shape} needs positive whole numbers"
    if m["in_chans"] not in (1, 3):
        return f"model.in_chans is {m['in_chans']}, not 1 or 3"
    if m["num_classes"] > MAX_CLASSES or m["image_size"] > MAX_MODEL_IMAGE_SIZE:
        return (f"model {shape} is beyond what sabr loads (at most {MAX_CLASSES:,} classes and "
                f"{MAX_MODEL_IMAGE_SIZE} pixels)")
    return None


def read_weights(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; anything else (a pickle, a damaged file) raises ``CheckpointError``.

    The file is parsed as safetensors only: a pickle is never unpickled, so it can run no code. With
    ``sha256`` (as written by :func:`save_checkpoint` into the metadata) a file changed after it was
    written is refused too.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        data = path.read_bytes()
        weights = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({exc}). sabr only loads safetensors (pickles are never "
            "executed); re-export the weights with safetensors.torch.save_file."
        ) from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(
            f"{path} was modified after sabr wrote it (its SHA-256 differs from the one in "
            f"{path.with_suffix('.json').name}); it is refused. Restore the file or retrain that phase."
        )
    return weights


def check_trusted(source: str, trust_model_code: bool) -> None:
    """Refuse to import the user code a saved model names unless ``trust_model_code`` says so."""
    if is_user_code(source) and not trust_model_code:
        raise CheckpointError(f"this model comes from your own code ({display_name(source)}), which sabr imports "
                              "only when told to trust it: pass --trust-model-code (Python: trust_model_code=True).")


def build_model(meta: dict, trust_model_code: bool = False) -> nn.Module:
    """Construct the (untrained) model that a checkpoint's metadata describes.

    Args:
        meta: the checkpoint's metadata (its ``model`` entry).
        trust_model_code: allow importing the user code the model comes from (the file must be the one the
            checkpoint recorded); never needed for built-in, torchvision or timm models.
    """
    m = meta.get("model") or {}
    try:
        source = m.get("source", m["name"])
        check_trusted(source, trust_model_code)
        return create_model(source, num_classes=int(m["num_classes"]), in_chans=int(m["in_chans"]),
                            image_size=int(m["image_size"]))
    except KeyError as exc:
        raise CheckpointError(f"checkpoint metadata lacks model.{exc.args[0]}; write it with sabr.save_checkpoint"
                              "(model, path, source=..., classes=..., preprocess=...).") from exc


def load_weights_into(model: nn.Module, weights: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``weights`` into ``model``, refusing (with a clear message) any name or shape mismatch."""
    _check_fits(model.state_dict(), weights, source)
    model.load_state_dict(weights)


def _check_fits(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``weights`` has exactly the names and shapes of ``own``."""
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape of {wrong[0]}: {tuple(weights[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} in the model")
        raise CheckpointError(
            f"{source} does not fit this model ({detail}). It was saved from another architecture or number of "
            "classes: use the same --model, --image-size and dataset, or start a new run."
        )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    trust_model_code: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild a model from ``x.safetensors`` + ``x.json``; returns ``(model in eval mode, metadata)``.

    ``metadata["preprocess"]`` is turned into a :class:`~sabr.data.Preprocess` under ``metadata["transform"]``.
    ``trust_model_code``: see :func:`build_model`.
    """
    path = Path(path)
    meta = read_metadata(path)
    model = build_model(meta, trust_model_code)
    load_weights_into(model, read_weights(path, meta.get("weights_sha256")), source=str(path))
    model.to(device).eval()
    if "preprocess" in meta:
        meta["transform"] = Preprocess.from_dict(meta["preprocess"])
    return model, meta
