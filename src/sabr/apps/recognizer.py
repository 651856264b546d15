"""The recogniser: a trained model plus the exact preprocessing it was trained with.

:func:`load_any` (= :func:`sabr.export.load_model`) turns a path into ``(model, metadata)``: a ``sabr run``
folder, a checkpoint ``.safetensors`` (with its ``.json``), or a ``sabr export`` file (sparse, shrunk, onnx).
:class:`Recognizer` classifies an RGB crop by calling the training :class:`~sabr.data.Preprocess`
(``metadata["transform"]``) -- never a copy of it -- and turns the logits into probabilities with the model's
own decision rule (``metadata["calibration"]``, :class:`sabr.calibration.Calibration`: temperature, claim
threshold, out-of-distribution check; a model saved without one gets temperature 1 and threshold 0.6).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..calibration import Calibration, ood_score
from ..errors import CheckpointError
from ..export import check_outputs, load_model
from ..metrics import count_macs, sparsity_report

log = logging.getLogger(__name__)


#: The apps' name for :func:`sabr.export.load_model`, the one loader (same arguments, same result).
load_any = load_model


@dataclass
class Prediction:
    """One frame's classification.

    Attributes:
        probs: calibrated softmax probabilities ``softmax(logits / temperature)``, one per class (``float32``,
            sums to 1).
        label: arg-max class index.
        confidence: ``probs[label]`` (fraction).
        top3: up to three ``(class index, probability)`` pairs, best first.
        latency_ms: preprocessing + forward pass time, in milliseconds.
        known: ``False`` when the model's out-of-distribution check says the frame is like none of its
            training images (nothing in view): such a frame is never claimed.
        ood_score: the frame's OOD score (``None`` when the model has no OOD check).
    """

    probs: np.ndarray
    label: int
    confidence: float
    top3: list[tuple[int, float]]
    latency_ms: float
    known: bool = True
    ood_score: float | None = None

    @property
    def evidence(self) -> np.ndarray:
        """What the temporal smoother averages: ``probs``, or zeros for a frame that is not ``known``."""
        return self.probs if self.known else np.zeros_like(self.probs)


@dataclass
class ModelInfo:
    """What is printed on start: the model's size, sparsity and MACs."""

    name: str
    classes: list[str]
    image_size: int
    channels: int
    params: int | None = None
    sparsity: float | None = None  # fraction of zero weights over the Conv/Linear weights
    macs_dense: int | None = None
    macs_pruned: float | None = None

    def describe(self) -> str:
        text = (f"model {self.name}: {len(self.classes)} classes, input {self.channels}x{self.image_size}x"
                f"{self.image_size}")
        if self.sparsity is not None:
            text += (f", {self.params:,} parameters, sparsity {100 * self.sparsity:.2f}%, MACs "
                     f"{self.macs_dense:,} dense -> {self.macs_pruned:,.0f} after pruning")
        return text


class Recognizer:
    """Classifies RGB images with a trained model and its training preprocessing.

    Args:
        model: a module (or any callable) mapping a ``(N, C, H, W)`` float batch to logits.
        metadata: the checkpoint metadata; needs ``classes`` and ``transform``
            (a :class:`~sabr.data.Preprocess`, as returned by :func:`sabr.load_run`); its ``calibration``
            (when present) becomes :attr:`calibration`.
    """

    def __init__(self, model: Callable, metadata: dict) -> None:
        if "transform" not in metadata or "classes" not in metadata:
            raise CheckpointError("the model's metadata has no preprocessing or class names; "
                                  "use a checkpoint written by `sabr run`.")
        self.model = model
        self.metadata = metadata
        self.transform = metadata["transform"]
        self.classes: list[str] = list(metadata["classes"])
        self.calibration = Calibration.from_dict(metadata.get("calibration"))
        self.device = next(model.parameters()).device if isinstance(model, nn.Module) else torch.device("cpu")

    @classmethod
    def from_path(cls, path: str | Path, phase: str = "pruned", device: str | torch.device = "cpu",
                  trust_model_code: bool = False) -> "Recognizer":
        """Load with :func:`load_any` (``trust_model_code``: see :func:`sabr.export.load_model`); a model whose
        outputs are not finite is refused (:func:`sabr.export.check_outputs`)."""
        model, meta = load_any(path, phase, device, trust_model_code)
        check_outputs(model, meta, path)
        return cls(model, meta)

    def threshold(self, override: float | None = None) -> float:
        """The claim threshold: ``override`` (``--threshold``) when given, else the model's calibrated one."""
        return self.calibration.threshold if override is None else override

    @torch.no_grad()
    def predict(self, rgb: np.ndarray) -> Prediction:
        """Classify one RGB ``uint8`` image ``(H, W, 3)`` (e.g. the ROI crop)."""
        start = time.perf_counter()
        x = self.transform(rgb).unsqueeze(0).to(self.device)
        logits = torch.as_tensor(self.model(x)).float().cpu()
        cal = self.calibration
        probs = cal.probabilities(logits)[0].numpy()
        if len(probs) != len(self.classes):
            raise CheckpointError(f"the model gives {len(probs)} outputs but its metadata names {len(self.classes)} "
                                  "classes; the metadata does not belong to these weights.")
        known = bool(cal.known(logits)[0])
        score = None if cal.ood_score is None else float(ood_score(logits, cal.ood_score)[0])
        latency = 1000.0 * (time.perf_counter() - start)
        order = np.argsort(-probs)[:3]
        return Prediction(probs, int(order[0]), float(probs[order[0]]),
                          [(int(k), float(probs[k])) for k in order], latency, known, score)

    def info(self) -> ModelInfo:
        """Name, sparsity (:func:`sabr.sparsity_report`) and MACs (:func:`sabr.count_macs`) of the model."""
        m = self.metadata.get("model", {})
        t = self.transform
        info = ModelInfo(m.get("name", type(self.model).__name__), self.classes, t.image_size, t.channels)
        if isinstance(self.model, nn.Module):
            sp = sparsity_report(self.model)
            macs = count_macs(self.model, torch.zeros(1, t.channels, t.image_size, t.image_size, device=self.device))
            info.params, info.sparsity = sp.all_total, sp.sparsity
            info.macs_dense, info.macs_pruned = macs.macs_dense, macs.macs_pruned
        return info


def training_data_folder(model_path: str | Path) -> Path | None:
    """The image folder a run was trained on (its saved ``data`` setting), when it still exists."""
    from ..rundir import RunDir

    path = Path(model_path)
    run = RunDir(path if path.is_dir() else path.parent)
    if not run.config.is_file():
        return None
    data = run.read_config().get("data")
    folder = Path(str(data)).expanduser() if data else None
    return folder if folder is not None and folder.is_dir() else None
