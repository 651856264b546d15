"""The applications' settings: ``sabr recognize`` and ``sabr elevator``'s flags as dataclasses (the run's
are :class:`sabr.config.RunConfig`). Kept outside :mod:`sabr.apps` so that the command line reads them
without importing OpenCV."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .config import _DEVICE, MAX_CLASSES
from .fields import _f, check_fields
from .errors import ConfigError


@dataclass
class AppSettings:
    """The options shared by the two applications (``sabr recognize``, ``sabr elevator``).

    Like :class:`RunConfig`, each field is one command-line flag (``roi_fraction`` becomes
    ``--roi-fraction``). ``model``, ``phase``, ``references``, ``source``, ``device`` and ``threads`` say
    what the command loads; the loops (:func:`sabr.apps.recognize`, :func:`sabr.apps.run_elevator`) read
    the rest. Fractions are in [0, 1].
    """

    required_flags: ClassVar[tuple[str, ...]] = ()  # fields whose flag the command line requires
    model: str | None = _f(None, "a `sabr run` folder, a checkpoint .safetensors (with its .json beside it), or a "
                                 "`sabr export` file (sparse, shrunk or .onnx)")
    phase: str = _f("pruned", "which model of a run folder", choices=["base", "sabr", "pruned"])
    headless: bool = _f(False, "no window: write annotated frames and JSONL to --out", switch=True)
    out: str | None = _f(None, "output folder (required with --headless)")
    references: str | None = _f(None, "one example image per class: a folder of class sub-folders or of one image "
                                      "per class (default: sampled from the run's training folder)")
    roi: str | None = _f(None, "region of interest x,y,w,h in pixels (default: a centred square)")
    roi_fraction: float = _f(0.75, "side of the default centred square ROI over the frame's shorter side",
                             gt=0, max=1)
    window: int = _f(5, "temporal smoothing window, frames", min=1)
    threshold: float | None = _f(None, "confidence (fraction) below which no label is claimed (default: the one "
                                       "fitted to the model on its validation data; 0.6 for a model without one)",
                                 min=0, max=1)
    smooth_stills: bool = _f(False, "average the predictions of an image folder's files over --window too (by "
                                    "default each file is judged alone: stills are not a video)", switch=True)
    snapshot: int | None = _f(None, "also save this frame (0-based) of the view as OUT/snapshot.png",
                                 min=0)
    device: str = _f("cpu", "'cpu' or 'cuda'")
    threads: int = _f(1, "CPU threads for the model (default: 1: one small frame at a time gains nothing from more, "
                         "and loses a lot on a busy CPU)", min=1)
    source: str | None = _f(None, "webcam index (0), a video file, or a folder of images")

    def __post_init__(self) -> None:
        check_fields(self)  # every value by type and range, before a model is loaded or a file opened
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}.")


@dataclass
class RecognizeSettings(AppSettings):
    """Everything that defines a ``sabr recognize`` (see :class:`AppSettings`)."""

    required_flags: ClassVar[tuple[str, ...]] = ("model", "source")  # on the command line
    max_frames: int | None = _f(None, "stop after this many frames", min=1)


@dataclass
class ElevatorSettings(AppSettings):
    """Everything that defines a ``sabr elevator`` (see :class:`AppSettings`); one floor per class."""

    script: str | None = _f(None, "timed gestures, one '<time s> <gesture> [<hold s>]' per line")
    floors: int | None = _f(None, "number of floors for --script without --model", min=2,
                            max=MAX_CLASSES)
    fps: float | None = _f(None, "simulation frames per second (default: the source's, 10 for a script)",
                              gt=0, max=1000)
    floors_per_second: float = _f(1.0, "car speed", gt=0)
    door_seconds: float = _f(2.0, "time the doors stay open", min=0)
    stable_frames: int = _f(8, "frames a gesture must hold to request its floor", min=1)
    min_confidence: float | None = _f(None, "smoothed confidence each of those frames needs (default: the claim "
                                            "threshold)", min=0, max=1)
    max_seconds: float = _f(120.0, "simulated time limit", gt=0, max=86_400)
