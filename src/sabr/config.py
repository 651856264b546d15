"""One flat set of named values for a run, with defaults; overridable from YAML and the command line.

The command-line flags of ``sabr run`` are generated from :class:`RunConfig`'s fields (``epochs_base``
becomes ``--epochs-base``), so a YAML file uses exactly the same keys as the flags.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import ConfigError
from .fields import _f, check_fields


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
        fast_start: growth factor used instead of ``growth_rate`` until the first epoch that shrinks the
            lambdas (SABR finds its strength in a few epochs on any dataset, docs/spec.md, phase 2); ``None``
            or any value at most ``growth_rate`` (e.g. 1) turns it off.
    """

    teta1: float = 5e-4
    growth_rate: float = 1.15
    decrease_rate: float = 1.2
    accuracy_threshold: float = 0.007
    k_epoch: int = 2
    zero_eps: float = 1e-5
    fast_start: float | None = 2.0


SABR_DEFAULTS = SabrSettings()
"""SABR's defaults (also ``sabr.regularizer.DEFAULTS``); defined here, free of torch, so that the command line
starts fast."""


MAX_IMAGE_SIZE = 1024
"""The largest ``image_size`` accepted: the whole dataset is held in memory at that size (a 1024x1024 RGB
image is 3 MB), and no registered model needs more."""
MAX_MODEL_IMAGE_SIZE = 4096
"""The largest input side a saved model's metadata may declare (a checkpoint, an export): one image is then
at most 200 MB of float32 RGB, so a damaged ``image_size`` is refused instead of exhausting memory."""
MAX_EPOCHS = 100_000
"""The most epochs any phase may be given (``epochs_base: 1e35`` would train for ever)."""
MAX_BATCH_SIZE = 65_536
"""The largest mini-batch (training, and ``sabr bench --batch-sizes``)."""
MAX_CLASSES = 100_000
"""The most classes a model may have (ImageNet-21k has 21,841); a damaged ``num_classes`` is refused before
a head of that size is allocated."""
MAX_SEED = 2**32 - 1
"""Seeds are 0 .. 2**32 - 1 (what NumPy and scikit-learn accept)."""

BUDGET_FACTORS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
"""The pruning factors (``teta1`` of the pruning rule) the budget search tries by default, weakest first."""
FINETUNE_RAMP_EPOCHS = 10
"""Phase 4's default epochs when the budget chooses the pruning factor: its ramp prunes one factor further per
epoch within the budget. Phase 2 often stops gaining well before its limit (every tensor frozen, or no sparser
model within the budget), and its pruned model gets no training after the cut; ten epochs of the ramp let the
model recover at each step (docs/spec.md, phase 4: why the ramp is on by default)."""

PRESETS: dict[str, dict] = {
    "reference": dict(teta1=5e-4, scale_teta1=False, accuracy_threshold=0.007, growth_rate=1.15, decrease_rate=1.2,
                      k_epoch=2, fast_start=None, prune_teta1=0.2, gamma=0.1, max_drop=None, bn_recalibrate=False,
                      epochs_sabr=40),
}
"""``--preset NAME``: values that replace the defaults (flags and YAML keys given with it still win).
``reference`` is the seed's pipeline: per-step lambdas, the fixed 0.7-point threshold, no fast start, 40 epochs
kept to the last, a fixed prune factor 0.2, no budget search and no BatchNorm recalibration."""


@dataclass
class RunConfig:
    """Everything that defines a ``sabr run``. Fractions are in [0, 1]."""

    # data and model
    data: str = _f("digits", "dataset: 'digits' (embedded), an image folder (one sub-folder per class) or an IDX folder")
    model: str = _f("compact_cnn", "model: a name from `sabr models`, timm:<name>, path/to/file.py:factory or "
                                   "package.module:factory")
    image_size: int | None = _f(None, "input side in pixels (default: 8 for digits, 28 for IDX, 64 for folders; at most "
                                         f"{MAX_IMAGE_SIZE})", min=4, max=MAX_IMAGE_SIZE)
    channels: int | None = _f(None, "input channels, 1 or 3 (default: 1 for digits/IDX, 3 for image folders)",
                               choices=[1, 3])
    max_per_class: int | None = _f(None, "use at most this many images per class (quick runs)", min=1)
    train_per_class: int | None = _f(None, "keep at most this many TRAINING images per class, after the split; "
                                           "validation and test stay whole (a small training set, exact figures)",
                                     min=1)
    val_per_class: int | None = _f(None, "keep at most this many VALIDATION images per class, after the split (a "
                                         "cheaper validation pass, less precise; the test split stays whole)", min=1)
    on_bad_image: str = _f("skip", "unreadable image files: 'skip' (listed in the run folder) or 'error'",
                           choices=["skip", "error"])
    pretrained: bool = _f(False, "start from torchvision's ImageNet weights (downloads them)")
    # training
    base_checkpoint: str | None = _f(None, "skip phase 1: start from this trained model (a sabr checkpoint "
                                           ".safetensors of the same --model and classes, e.g. another run's "
                                           "RUN/base.safetensors); its accuracy is measured on this run's splits")
    epochs_base: int = _f(30, "phase 1 (base training) epochs", min=1, max=MAX_EPOCHS)
    epochs_sabr: int = _f(60, "phase 2 (SABR) epoch limit; it ends earlier once every tensor is frozen or, with a "
                              "budget, after --patience epochs without gain", min=0, max=MAX_EPOCHS)
    batch_size: int = _f(64, "mini-batch size", min=1, max=MAX_BATCH_SIZE)
    lr: float = _f(1e-3, "learning rate of phase 1", gt=0)
    lr_sabr: float | None = _f(None, "learning rate of phase 2 (default: --lr)", gt=0)
    # training options (checked by _check_training_options)
    optimizer: str = _f("adam", "optimizer of every phase: adam, adamw (decoupled weight decay) or sgd (with "
                                "--momentum)", choices=["adam", "adamw", "sgd"])
    momentum: float = _f(0.9, "SGD momentum (--optimizer sgd)", min=0)
    weight_decay: float = _f(0.0, "weight decay (L2 for adam and sgd, decoupled for adamw)", min=0)
    augment: list[str] | None = _f(None, "training-time augmentation (default: none): any of crop (random resized "
                                         "crop), rotate (up to 10 degrees), color (brightness/contrast/saturation "
                                         "jitter), flip (horizontal: a mirrored hand is another gesture, so not in "
                                         "standard), or standard (= crop rotate color)", nargs="+",
                                   choices=["standard", "crop", "rotate", "color", "flip"])
    stream: bool = _f(False, "read an image folder from disk batch by batch (DataLoader workers, --workers) "
                             "instead of into memory, for folders that do not fit")
    workers: int = _f(0, "DataLoader worker processes that read and augment images with --stream (0: the main "
                         "process)", min=0)
    amp: bool = _f(False, "automatic mixed precision (bfloat16 autocast) on CUDA; no effect on the CPU")
    log: str | None = _f(None, "also log losses, accuracies, lambdas, sparsity and freeze events to "
                               "'tensorboard' (<run>/tensorboard/; the tensorboard extra)", choices=["tensorboard"])
    # the accuracy budget
    max_drop: float | None = _f(0.01, "accuracy budget: the result is the sparsest model whose validation accuracy "
                                      "is within this fraction of the base model's plateau, the median of its last ten "
                                      "epochs (0.01 = 1 point)", min=0, max=1)
    patience: int = _f(10, "phase 2 ends after this many epochs in a row that found no sparser model within the "
                           "budget (counted from the first epoch within it)", min=1, max=MAX_EPOCHS)
    # SABR (phase 2)
    teta1: float = _f(SABR_DEFAULTS.teta1, "lambda initialisation factor: lambda = teta1 * std(w), the pull of "
                                           "100 optimizer steps (see --scale-teta1)", min=0)
    scale_teta1: bool = _f(True, "apply each lambda over an epoch as 100 steps would, whatever the steps per epoch, "
                                 "so teta1 means the same on every dataset (off: the spec's per-step lambdas)")
    growth_rate: float = _f(SABR_DEFAULTS.growth_rate,
                            "lambda growth factor after an epoch without a significant drop", gt=0)
    decrease_rate: float = _f(SABR_DEFAULTS.decrease_rate,
                              "lambda divisor after an epoch whose accuracy drop exceeds the threshold", gt=0)
    accuracy_threshold: float | str = _f("auto", "tolerated drop from the best validation accuracy (fraction), or "
                                                 "'auto': one standard error of the validation accuracy, at least "
                                                 f"{SABR_DEFAULTS.accuracy_threshold:g}")
    k_epoch: int = _f(SABR_DEFAULTS.k_epoch, "epochs without growth before one tensor freezes", min=1)
    zero_eps: float = _f(SABR_DEFAULTS.zero_eps, "|w| below this counts as near zero during phase 2", gt=0)
    fast_start: float | None = _f(SABR_DEFAULTS.fast_start, "lambda growth factor instead of --growth-rate until "
                                                             "the first epoch that shrinks them (1: off, the seed's "
                                                             "rule)", min=1)
    structured: bool = _f(False, "structured SABR on channel groups: whole channels pruned, a faster shrunk model")
    params: list[str] | None = _f(None, "names of the tensors to regularise (default: every Conv/Linear weight)",
                                  nargs="+")
    # pruning (phase 3)
    prune_teta1: float | None = _f(None, "pruning threshold factor: teta1 * std(w[|w| >= gamma*std(w)]) (default: "
                                         "the sparsest factor within the budget, chosen on validation)", min=0)
    gamma: float = _f(0.1, "pruning: weights below gamma*std(w) are left out of the threshold's std", min=0)
    epsilon: float | None = _f(None, "pruning: one fixed threshold for every tensor instead (plain mode)", min=0)
    bn_recalibrate: bool | None = _f(None, "re-estimate BatchNorm statistics on training batches after pruning "
                                           "(default: on, off with --structured)")
    finetune_epochs: int | None = _f(
        None, "phase 4: masked fine-tuning epochs after pruning; zeros stay zero (default: "
              f"{FINETUNE_RAMP_EPOCHS} when the budget chooses the pruning factor, the pruning ramp; 0 with "
              "--structured, --prune-teta1, --epsilon or no budget). Under a budget, every epoch within it prunes "
              "one --sweep factor further, one below it returns to the last model within it, which is the result "
              "(when no factor fits before, it starts at the weakest; docs/spec.md, phase 4); with --structured "
              "it starts with 87.5%% of every channel group removed, smallest first, and gives 12.5%% back after "
              "--k-epoch epochs below the budget without recovering, until an epoch is within it",
        min=0, max=MAX_EPOCHS)
    sweep: list[float] = _f(list(BUDGET_FACTORS), "pruning factors the budget search tries on validation (and the "
                                                  "accuracy-vs-sparsity chart shows)", nargs="+", min=0)
    # run
    seed: int = _f(0, "random seed (splits, initialisation, batch order)", min=0, max=MAX_SEED)
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice); results are reproducible for one "
                                   "thread count on one machine", min=1)
    preset: str | None = _f(None, "'reference': the seed's pipeline exactly (teta1 5e-4 per step, threshold 0.007, "
                                  "prune factor 0.2, no budget); flags given with it still win", choices=["reference"])
    device: str = _f("auto", "'cpu', 'cuda', 'cuda:N' or 'auto'")
    out: str | None = _f(None, "run folder (default: runs/<dataset>-<model>-<time>)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Coerce every value to its field's type and check its range; raise :class:`ConfigError` otherwise.

        Values are read as the command line reads its strings (see :func:`check_fields`), so a YAML
        ``lr: 1e-3`` (text to PyYAML) is the number 0.001 and ``sweep: 0.5`` is the list ``[0.5]``.
        """
        check_fields(self)
        self.accuracy_threshold = _threshold(self.accuracy_threshold)
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}.")
        if self.params is not None:
            self.params = list(dict.fromkeys(self.params))
        _check_training_options(self)

    def to_dict(self) -> dict:
        """Every field, as plain values (what a run folder saves as its config)."""
        return dataclasses.asdict(self)

    def command(self) -> str:
        """The ``sabr run`` command line that makes this config: a flag for every value that differs from the
        default (shell-quoted), which ``sabr run`` reads back into an equal config."""
        import shlex

        default, parts = RunConfig(), ["sabr", "run"]
        for f in fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if value == getattr(default, f.name):
                continue
            if value is None:
                raise ConfigError(f"{f.name}=None has no flag; write it in a YAML file (--config) instead.")
            if isinstance(value, bool):
                parts.append(flag if value else "--no-" + flag[2:])
            else:
                parts += [flag, *map(str, value if isinstance(value, list) else [value])]
        return " ".join(shlex.quote(p) for p in parts)

    @property
    def recalibrates(self) -> bool:
        """``bn_recalibrate``, or by default on for unstructured pruning and off for ``structured``: a removed
        channel outputs exactly zero, so it needs none, and re-estimating the statistics costs accuracy even
        with nothing pruned (docs/spec.md, structured mode)."""
        return (not self.structured) if self.bn_recalibrate is None else self.bn_recalibrate

    @property
    def budget_chooses_factor(self) -> bool:
        """Whether the budget search chooses the pruning factor: a budget (``max_drop``) and neither a fixed
        ``prune_teta1`` nor an ``epsilon`` threshold. Only then does phase 4 ramp (docs/spec.md, phase 4)."""
        return self.max_drop is not None and self.prune_teta1 is None and self.epsilon is None

    @property
    def finetunes(self) -> int:
        """``finetune_epochs``, or by default :data:`FINETUNE_RAMP_EPOCHS` when the budget chooses the pruning
        factor (its ramp then prunes further epoch by epoch while validation holds) and 0 otherwise: with
        ``structured`` (its recipe is SABR's group penalty then the search), a fixed ``prune_teta1`` or
        ``epsilon``, or no budget (docs/spec.md, phase 4)."""
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        return FINETUNE_RAMP_EPOCHS if self.budget_chooses_factor and not self.structured else 0

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


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
def _check_training_options(cfg: RunConfig) -> None:
    """What :func:`check_fields` cannot say of the training options: momentum below 1, workers only with
    streaming, the augmentation names."""
    from .augment import parse_augment

    if cfg.momentum >= 1:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum}.")
    if cfg.workers and not cfg.stream:
        raise ConfigError(f"workers={cfg.workers} needs --stream (in-memory data are not read by workers).")
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


MAX_CONFIG_BYTES = 1_000_000
"""A config file larger than this is refused (a YAML config is a few kB)."""


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file (keys as in :class:`RunConfig`, dashes or underscores).

    Refused with :class:`ConfigError`: a path that is missing or not a regular file (``/dev/zero``), a file
    over :data:`MAX_CONFIG_BYTES`, text that is not UTF-8 or not YAML, anything but a mapping, and a key
    given twice (``epochs_base`` and ``epochs-base`` count as the same key).
    """
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist.")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file; pass a YAML file.")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES:,} bytes; a sabr config is a few "
                              "lines of YAML.")
        values = yaml.load(p.read_bytes().decode("utf-8"), Loader=_unique_key_loader()) or {}
    except _RepeatedKey as exc:
        raise ConfigError(f"config file {p} gives {exc.args[0]} twice (again on line {exc.args[1]}); keep one.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                          "UTF-8.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p} ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values.")
    keys = [str(k).replace("-", "_") for k in values]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"config file {p} gives {', '.join(twice)} twice (dashes and underscores are the same "
                          "key); keep one.")
    return dict(zip(keys, values.values()))


class _RepeatedKey(Exception):
    """A YAML mapping gives a key twice: ``(key, line)``."""


def _unique_key_loader() -> type:
    """A PyYAML ``SafeLoader`` that refuses a mapping with a repeated key (PyYAML keeps the last silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # PyYAML refuses it itself
                if key in seen:
                    raise _RepeatedKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader
