"""What a run is about: its data, stratified splits, preprocessing and model description.

:func:`prepare` reads the dataset once and fixes all of it in an :class:`Experiment`, which every phase
(:mod:`sabr.phases`) and every baseline takes; :func:`load_experiment` rebuilds a finished run's (same
splits, same preprocessing); :func:`evaluate_split` measures a model on one split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .augment import Augment, parse_augment
from .config import RunConfig
from .data import (IMAGENET_MEAN, IMAGENET_STD, Preprocess, channel_stats, default_channels,
                   default_image_size, load_dataset, split_dataset)
from .distributed import DistContext, init_from_env
from .models import create_model, display_name, pin
from .errors import ConfigError
from .train import Split, batches, build_optimizer, evaluate
from .weights import resolve_params

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """Data, splits, preprocessing and model description shared by all phases."""

    config: RunConfig
    dataset_name: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    preprocess: Preprocess
    device: torch.device
    model_meta: dict
    skipped: list[str] = field(default_factory=list)
    dist: DistContext = field(default_factory=DistContext)

    def new_model(self) -> nn.Module:
        """A fresh model as configured, on the experiment's device."""
        m = self.model_meta
        return create_model(m["source"], m["num_classes"], m["in_chans"], m["image_size"],
                            pretrained=self.config.pretrained).to(self.device)

    def metadata(self, phase: str, **figures) -> dict:
        """Checkpoint metadata: everything :func:`sabr.load_run` needs to rebuild and use the model."""
        return {"phase": phase, "model": dict(self.model_meta), "classes": list(self.classes),
                "dataset": self.dataset_name, "preprocess": self.preprocess.to_dict(), **figures}

    def optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        """The configured optimizer (``optimizer``, ``weight_decay``, ``momentum``) over ``params`` at ``lr``."""
        c = self.config
        return build_optimizer(params, c.optimizer, lr, c.weight_decay, c.momentum)

    def batches(self, split: Split, batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(normalised inputs on the experiment's device, labels)`` batches of ``split``, in order."""
        for images, labels in batches(split, batch_size):
            yield self.preprocess.normalize(images.to(self.device)), labels

    def example_input(self) -> torch.Tensor:
        """A zero batch of one image of the model's input shape, on the experiment's device."""
        p = self.preprocess
        return torch.zeros(1, p.channels, p.image_size, p.image_size, device=self.device)


def prepare(config: RunConfig, progress: bool = True, dist: DistContext | None = None) -> Experiment:
    """Read the dataset, split it (72/18/10, stratified, seeded) and fix the preprocessing.

    ``dist`` is the process's place in a distributed job; by default it is read from the environment
    (:func:`sabr.distributed.init_from_env`: a single process unless launched by ``torchrun``). Every rank
    reads the whole dataset and makes the same split; training then uses each rank's shard.
    """
    size = config.image_size or default_image_size(config.data)
    channels = config.channels or default_channels(config.data)
    check_model(config.model, size, channels, config.params)  # before the data are read
    probe = Preprocess(size, channels)
    main = dist is None or dist.is_main
    ds = _read(config, probe, progress and main)
    splits = split_dataset(ds, seed=config.seed, train_per_class=config.train_per_class,
                           val_per_class=config.val_per_class)
    if config.pretrained and channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif config.stream:
        from .streaming import sample_images

        mean, std = channel_stats(sample_images(ds.images, splits.train, config.seed))
    else:
        mean, std = channel_stats(ds.images[splits.train])
    pre = Preprocess(size, channels, mean, std)
    dist = dist or init_from_env(config.device)
    device = dist.device
    source = pin(config.model)  # user code: an absolute path and the file's SHA-256
    model_meta = {"name": display_name(source), "source": source, "num_classes": len(ds.classes),
                  "in_chans": channels, "image_size": size}

    ops = parse_augment(config.augment)

    def part(index, augment=None):
        images = ds.images.subset(index, pre) if config.stream else ds.images[index]
        return Split(images, ds.labels[index], augment)

    log.info("dataset %s: %d classes, %d train / %d val / %d test images of %dx%dx%d",
             ds.name, len(ds.classes), len(splits.train), len(splits.val), len(splits.test), channels, size, size)
    return Experiment(config, ds.name, ds.classes, part(splits.train, Augment(ops) if ops else None),
                      part(splits.val), part(splits.test), pre, device, model_meta, ds.skipped, dist)


def load_experiment(run_dir: str | Path, device: str = "cpu", progress: bool = False) -> Experiment:
    """The :class:`Experiment` of a run folder written by ``sabr run``: its saved configuration, its exact
    train/validation/test splits and its preprocessing, rebuilt from ``config.yaml`` (the data are read
    again and split with the run's seed), e.g. to train or evaluate another model on the run's splits.

    Args:
        run_dir: the run folder.
        device: where the experiment's models and batches go (default ``"cpu"``, whatever the run used).
        progress: show a progress bar while the data are read.

    Raises:
        CheckpointError: the folder has no ``config.yaml``.
        DataError: the run's data cannot be read any more.
    """
    from .rundir import RunDir

    folder = RunDir(run_dir)
    values = folder.read_config() | {"device": device, "out": str(folder.path)}
    return prepare(RunConfig.from_dict(values), progress)


def _read(config: RunConfig, probe: Preprocess, progress: bool):
    """The dataset in memory, or (``config.stream``) an image folder's file list
    (:func:`sabr.streaming.scan_folder`)."""
    if not config.stream:
        return load_dataset(config.data, probe, config.max_per_class, config.on_bad_image, config.seed, progress)
    from .idx import find_idx
    from .streaming import scan_folder

    if config.data == "digits" or find_idx(Path(config.data).expanduser()) or not Path(config.data).is_dir():
        raise ConfigError(f"--stream reads an image folder from disk; {config.data} is not one (the digits and IDX "
                          "files are read into memory: leave out --stream).")
    return scan_folder(config.data, probe, config.max_per_class, config.seed, config.workers, config.on_bad_image,
                       progress)


def check_model(name: str, image_size: int, channels: int, params: list[str] | None = None) -> None:
    """Refuse, before any work, a model that cannot be built for this input or lacks a ``params`` name.

    The model is built on the ``meta`` device (no memory is allocated); the class count does not change
    the parameter names, so two classes stand in for the dataset's.
    """
    with torch.device("meta"):
        model = create_model(name, num_classes=2, in_chans=channels, image_size=image_size)
    resolve_params(model, params)


def evaluate_split(exp: Experiment, model: nn.Module, split: Split) -> tuple[float, float]:
    """``(mean loss, accuracy)`` on ``split``; under distributed training each rank evaluates its share
    and the sums are reduced, so every rank gets the figures of the whole split."""
    d = exp.dist
    if not d.enabled:
        return evaluate(model, split, exp.preprocess, exp.device)
    part = Split(split.images[d.rank::d.world_size], split.labels[d.rank::d.world_size])
    loss, acc = evaluate(model, part, exp.preprocess, exp.device)
    n = len(part)
    loss_sum, correct, count = d.all_reduce_sum([loss * n, round(acc * n), n])
    return loss_sum / max(count, 1), correct / max(count, 1)
