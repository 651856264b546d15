"""One flat set of named values for a run, with defaults; overridable from YAML and the command line.

The command-line flags of ``sabr run`` are generated from :class:`RunConfig`'s fields (``epochs_base``
becomes ``--epochs-base``), so a YAML file uses exactly the same keys as the flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError


@dataclass(frozen=True)
class SabrSettings:
    """SABR's hyper-parameters; the defaults here are the only ones (:class:`sabr.SABR` and ``sabr run`` use them).

    Attributes:
        teta1: lambda initialisation factor, ``lambda_t = teta1 * std(w_t)``.
        growth_rate: factor applied to every unfrozen lambda after an epoch without a significant drop.
        decrease_rate: divisor applied after an epoch whose accuracy drop exceeds ``accuracy_threshold``.
        accuracy_threshold: tolerated drop from the best validation accuracy, as a fraction.
        k_epoch: consecutive no-growth epochs after which one tensor freezes.
        zero_eps: a weight counts as near zero when ``|w| < zero_eps``.
    """

    teta1: float = 5e-4
    growth_rate: float = 1.15
    decrease_rate: float = 1.2
    accuracy_threshold: float = 0.007
    k_epoch: int = 2
    zero_eps: float = 1e-5


SABR_DEFAULTS = SabrSettings()
"""SABR's defaults (also ``sabr.regularizer.DEFAULTS``); defined here, free of torch, so that the command line
starts fast."""


BUDGET_FACTORS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
"""The pruning factors (``teta1`` of the pruning rule) the budget search tries by default, weakest first."""

PRESETS: dict[str, dict] = {
    "reference": dict(teta1=5e-4, scale_teta1=False, accuracy_threshold=0.007, growth_rate=1.15, decrease_rate=1.2,
                      k_epoch=2, prune_teta1=0.2, gamma=0.1, max_drop=None, bn_recalibrate=False, epochs_sabr=40),
}
"""``--preset NAME``: values that replace the defaults (flags and YAML keys given with it still win).
``reference`` is the seed's pipeline: per-step lambdas, the fixed 0.7-point threshold, 40 epochs kept
to the last, a fixed prune factor 0.2, no budget search and no BatchNorm recalibration."""


def _f(default: Any, help: str, **kw) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class RunConfig:
    """Everything that defines a ``sabr run``. Fractions are in [0, 1]."""

    # data and model
    data: str = _f("digits", "dataset: 'digits' (embedded), an image folder (one sub-folder per class) or an IDX folder")
    model: str = _f("compact_cnn", "model: a name from `sabr models`, timm:<name>, path/to/file.py:factory or "
                                   "package.module:factory")
    image_size: int | None = _f(None, "input side in pixels (default: 8 for digits, 28 for IDX, 64 for folders)")
    channels: int | None = _f(None, "input channels, 1 or 3 (default: 1 for digits/IDX, 3 for image folders)")
    max_per_class: int | None = _f(None, "use at most this many images per class (quick runs)")
    on_bad_image: str = _f("skip", "unreadable image files: 'skip' (listed in the run folder) or 'error'",
                           choices=["skip", "error"])
    pretrained: bool = _f(False, "start from torchvision's ImageNet weights (downloads them)")
    # training
    epochs_base: int = _f(30, "phase 1 (base training) epochs")
    epochs_sabr: int = _f(60, "phase 2 (SABR) epoch limit; it ends earlier once every tensor is frozen or, with a "
                              "budget, after --patience epochs without gain")
    batch_size: int = _f(64, "mini-batch size")
    lr: float = _f(1e-3, "learning rate of phase 1")
    lr_sabr: float | None = _f(None, "learning rate of phase 2 (default: --lr)")
    # training options (checked by _check_training_options)
    optimizer: str = _f("adam", "optimizer of every phase: adam, adamw (decoupled weight decay) or sgd (with "
                                "--momentum)", choices=["adam", "adamw", "sgd"])
    momentum: float = _f(0.9, "SGD momentum (--optimizer sgd)")
    weight_decay: float = _f(0.0, "weight decay (L2 for adam and sgd, decoupled for adamw)")
    augment: list[str] | None = _f(None, "training-time augmentation (default: none): any of crop (random resized "
                                         "crop), rotate (up to 10 degrees), color (brightness/contrast/saturation "
                                         "jitter), flip (horizontal: a mirrored hand is another gesture, so not in "
                                         "standard), or standard (= crop rotate color)", nargs="+",
                                   choices=["standard", "crop", "rotate", "color", "flip"])
    stream: bool = _f(False, "read an image folder from disk batch by batch (DataLoader workers, --workers) "
                             "instead of into memory, for folders that do not fit")
    workers: int = _f(0, "DataLoader worker processes that read and augment images with --stream (0: the main "
                         "process)")
    amp: bool = _f(False, "automatic mixed precision (bfloat16 autocast) on CUDA; no effect on the CPU")
    log: str | None = _f(None, "also log losses, accuracies, lambdas, sparsity and freeze events to "
                               "'tensorboard' (<run>/tensorboard/; the tensorboard extra)", choices=["tensorboard"])
    # the accuracy budget
    max_drop: float | None = _f(0.01, "accuracy budget: the result is the sparsest model whose validation accuracy "
                                      "is within this fraction of the base model's (0.01 = 1 point)")
    patience: int = _f(10, "phase 2 ends after this many epochs in a row that found no sparser model within the "
                           "budget")
    # SABR (phase 2)
    teta1: float = _f(SABR_DEFAULTS.teta1, "lambda initialisation factor: lambda = teta1 * std(w), the pull of "
                                           "100 optimizer steps (see --scale-teta1)")
    scale_teta1: bool = _f(True, "apply each lambda over an epoch as 100 steps would, whatever the steps per epoch, "
                                 "so teta1 means the same on every dataset (off: the spec's per-step lambdas)")
    growth_rate: float = _f(SABR_DEFAULTS.growth_rate,
                            "lambda growth factor after an epoch without a significant drop")
    decrease_rate: float = _f(SABR_DEFAULTS.decrease_rate,
                              "lambda divisor after an epoch whose accuracy drop exceeds the threshold")
    accuracy_threshold: float | str = _f("auto", "tolerated drop from the best validation accuracy (fraction), or "
                                                 "'auto': one standard error of the validation accuracy, at least "
                                                 f"{SABR_DEFAULTS.accuracy_threshold:g}")
    k_epoch: int = _f(SABR_DEFAULTS.k_epoch, "epochs without growth before one tensor freezes")
    zero_eps: float = _f(SABR_DEFAULTS.zero_eps, "|w| below this counts as near zero during phase 2")
    structured: bool = _f(False, "group-wise L1 on output channels (removable channels for `sabr export --format shrunk`)")
    params: list[str] | None = _f(None, "names of the tensors to regularise (default: every Conv/Linear weight)",
                                  nargs="+")
    # pruning (phase 3)
    prune_teta1: float | None = _f(None, "pruning threshold factor: teta1 * std(w[|w| >= gamma*std(w)]) (default: "
                                         "the sparsest factor within the budget, chosen on validation)")
    gamma: float = _f(0.1, "pruning: weights below gamma*std(w) are left out of the threshold's std")
    epsilon: float | None = _f(None, "pruning: one fixed threshold for every tensor instead (plain mode)")
    bn_recalibrate: bool = _f(True, "re-estimate BatchNorm statistics on training batches after pruning")
    finetune_epochs: int = _f(0, "phase 4 (optional): masked fine-tuning epochs after pruning; zeros stay zero "
                                 "(the 'sabr_ft' row of docs/benchmarks.md)")
    sweep: list[float] = _f(list(BUDGET_FACTORS), "pruning factors the budget search tries on validation (and the "
                                                  "accuracy-vs-sparsity chart shows)", nargs="+")
    # run
    seed: int = _f(0, "random seed (splits, initialisation, batch order)")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice); results are reproducible for one "
                                   "thread count on one machine")
    preset: str | None = _f(None, "'reference': the seed's pipeline exactly (teta1 5e-4 per step, threshold 0.007, "
                                  "prune factor 0.2, no budget); flags given with it still win", choices=["reference"])
    device: str = _f("auto", "'cpu', 'cuda', 'cuda:N' or 'auto'")
    out: str | None = _f(None, "run folder (default: runs/<dataset>-<model>-<time>)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values out of range."""
        positive = ["epochs_base", "batch_size", "k_epoch", "patience"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ["epochs_sabr", "finetune_epochs"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ["lr", "growth_rate", "decrease_rate", "zero_eps"]:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ["teta1", "prune_teta1", "gamma"]:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        self.accuracy_threshold = _threshold(self.accuracy_threshold)
        if self.max_drop is not None and not 0 <= self.max_drop <= 1:
            raise ConfigError(f"max_drop is a fraction in [0, 1] (0.01 = 1 point), got {self.max_drop}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}.")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; available: {', '.join(PRESETS)}.")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}.")
        if self.image_size is not None and self.image_size < 4:
            raise ConfigError(f"image_size must be >= 4 pixels, got {self.image_size}.")
        _check_training_options(self)

    def to_dict(self) -> dict:
        """Every field, as plain values (what a run folder saves as its config)."""
        return dataclasses.asdict(self)

    def sabr_settings(self) -> SabrSettings:
        """Phase 2's hyper-parameters (``teta1``, ``growth_rate``, ...) as a :class:`SabrSettings`
        (``accuracy_threshold`` may still be ``"auto"``: :func:`sabr.phases.train_sabr` resolves it)."""
        return SabrSettings(**{f.name: getattr(self, f.name) for f in fields(SabrSettings)})

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(names))}.")
        preset = values.get("preset")
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}.")
        return cls(**{**PRESETS.get(preset, {}), **values})


def _check_training_options(cfg: RunConfig) -> None:
    """The ranges of the training options (optimizer, weight decay, augmentation, streaming, AMP, logger)."""
    from .augment import parse_augment

    if cfg.optimizer not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"optimizer must be adam, adamw or sgd, got {cfg.optimizer!r}.")
    if not 0 <= cfg.momentum < 1:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum}.")
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay}.")
    if cfg.workers < 0:
        raise ConfigError(f"workers must be >= 0, got {cfg.workers}.")
    if cfg.workers and not cfg.stream:
        raise ConfigError(f"workers={cfg.workers} needs --stream (in-memory data are not read by workers).")
    if cfg.log not in (None, "tensorboard"):
        raise ConfigError(f"log must be 'tensorboard' (or left out), got {cfg.log!r}.")
    parse_augment(cfg.augment)


def _threshold(value: float | str) -> float | str:
    """``accuracy_threshold``: ``"auto"`` or a fraction in [0, 1] (a number given as text is read as one)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"accuracy_threshold is 'auto' or a fraction in [0, 1], got {value!r}.") from None
    if not 0 <= number <= 1:
        raise ConfigError(f"accuracy_threshold is 'auto' or a fraction in [0, 1], got {value!r}.")
    return number


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file (keys as in :class:`RunConfig`, dashes or underscores)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist.")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values.")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


# --------------------------------------------------------------------------- app settings
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
    roi_fraction: float = _f(0.75, "side of the default centred square ROI over the frame's shorter side")
    window: int = _f(5, "temporal smoothing window, frames")
    threshold: float = _f(0.6, "confidence (fraction) below which no label is claimed")
    snapshot: int | None = _f(None, "also save this frame (0-based) of the view as OUT/snapshot.png")
    device: str = _f("cpu", "'cpu' or 'cuda'")
    threads: int = _f(1, "CPU threads for the model (default: 1: one small frame at a time gains nothing from more, "
                         "and loses a lot on a busy CPU)")
    source: str | None = _f(None, "webcam index (0), a video file, or a folder of images")


@dataclass
class RecognizeSettings(AppSettings):
    """Everything that defines a ``sabr recognize`` (see :class:`AppSettings`)."""

    required_flags: ClassVar[tuple[str, ...]] = ("model", "source")  # on the command line
    max_frames: int | None = _f(None, "stop after this many frames")


@dataclass
class ElevatorSettings(AppSettings):
    """Everything that defines a ``sabr elevator`` (see :class:`AppSettings`); one floor per class."""

    script: str | None = _f(None, "timed gestures, one '<time s> <gesture> [<hold s>]' per line")
    floors: int | None = _f(None, "number of floors for --script without --model")
    fps: float | None = _f(None, "simulation frames per second (default: the source's, 10 for a script)")
    floors_per_second: float = _f(1.0, "car speed")
    door_seconds: float = _f(2.0, "time the doors stay open")
    stable_frames: int = _f(8, "frames a gesture must hold to request its floor")
    min_confidence: float = _f(0.7, "smoothed confidence each of those frames needs")
    max_seconds: float = _f(120.0, "simulated time limit")
