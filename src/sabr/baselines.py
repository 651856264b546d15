"""The pruning methods a user would pick instead of SABR, for honest comparisons on the same data.

* :func:`global_magnitude_prune` / :func:`layer_magnitude_prune`: one-shot magnitude (L1) pruning to a
  target sparsity, over all regularised tensors at once or every tensor at the same sparsity;
  :func:`threshold_prune_to` reaches a target with SABR's own rule (one factor, per-tensor thresholds);
  :func:`magnitude_prune` picks one of the three by name (``ALLOCATIONS``).
* :func:`oneshot_finetune`: one-shot pruning to a target, then a masked fine-tune.
* :func:`gmp_sparsity` and :func:`train_gmp`: gradual magnitude pruning (Zhu & Gupta 2017) on the cubic
  schedule ``s_t = s_f (1 - (1 - t / T)^3)``, with uniform (layer-wise) or global allocation.
* :func:`fixed_l1_settings`, :func:`ramp_l1_settings` and :func:`train_fixed_l1`: L1 with SABR's
  per-tensor lambdas, never adapted and nothing frozen, either constant or multiplied by ``growth_rate``
  every epoch: the ablations that show what SABR's adaptation and freezing buy.
* :func:`magnitude_curve`, :func:`accuracy_at`, :func:`sparsity_within`: accuracy-vs-sparsity curves
  and the figures read from them.
* :func:`torch_pruning_channels`: Torch-Pruning's channel pruning, the structured peers (from
  :mod:`sabr.channel_peers`, with Torch-Pruning's sparse training; needs the ``torch-pruning`` package).

Every training peer runs with dropout off and phase 2's learning-rate schedule
(:func:`sabr.phases.sabr_scheduler`), as SABR's phase 2 does, and keeps its best-validation epoch among
those at its target sparsity. Sparsities and accuracies are fractions in [0, 1]. Every method works on
the model it is given (in place); copy a shared starting checkpoint first. ``benchmarks/compare.py`` runs
them all against ``sabr run``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from .channel_peers import torch_pruning_channels
from .errors import ConfigError
from .experiment import Experiment
from .metrics import sparsity_report
from .models import set_dropout
from .phases import bn_recalibrator, finetune_masked, sabr_scheduler, train_sabr
from .pruning import apply_masks, prunable_sparsity, prune, zero_masks
from .regularizer import SABR, SabrSettings
from .train import EpochStats, FitHooks, evaluate, fit, phase_generator, train_epoch
from .weights import resolve_params

__all__ = ["global_magnitude_prune", "layer_magnitude_prune", "threshold_prune_to", "magnitude_prune", "ALLOCATIONS",
           "oneshot_finetune", "gmp_sparsity", "GMPSchedule", "train_gmp", "fixed_l1_settings", "ramp_l1_settings",
           "train_fixed_l1", "magnitude_curve", "accuracy_at", "sparsity_within", "torch_pruning_channels"]

PruneFn = Callable[[nn.Module, float], None]


# --------------------------------------------------------------------------- one-shot magnitude pruning
def _targets(model: nn.Module, params: Iterable[str] | None) -> list[tuple[nn.Module, str]]:
    """``(module, attribute)`` of every regularised tensor, as torch's prune API takes them."""
    modules = dict(model.named_modules())
    pairs = []
    for name in resolve_params(model, params):
        owner, _, attr = name.rpartition(".")
        pairs.append((modules[owner], attr))
    return pairs


def global_magnitude_prune(model: nn.Module, sparsity: float, params: Iterable[str] | None = None) -> None:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights over all tensors together, in place.

    Args:
        model: the network; its weights become exact zeros (``torch.nn.utils.prune.global_unstructured``
            with L1 importance, then ``prune.remove``, so no ``weight_orig``/``weight_mask`` is left).
        sparsity: the fraction of all selected weights to zero, in [0, 1]; weights already zero count
            towards it (they are the smallest). ``round(sparsity * total) == 0`` leaves the model as is.
        params: the tensors to prune (names as in ``named_parameters()``); default every Conv/Linear weight.
    """
    pairs = _targets(model, params)
    total = sum(getattr(m, n).numel() for m, n in pairs)
    amount = int(round(sparsity * total))
    if amount <= 0:
        return
    tprune.global_unstructured(pairs, pruning_method=tprune.L1Unstructured, amount=amount)
    for m, n in pairs:
        tprune.remove(m, n)


def layer_magnitude_prune(model: nn.Module, sparsity: float, params: Iterable[str] | None = None) -> None:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of EACH tensor, in place.

    The layer-wise (uniform) variant of Zhu & Gupta's recipe (``prune.l1_unstructured`` then
    ``prune.remove`` per tensor). Unlike the global variant it never empties a whole tensor, which in
    networks with BatchNorm (whose conv weights are scale-free, so magnitudes differ by layer) kills
    the model. Arguments as in :func:`global_magnitude_prune`; the rounding is per tensor.
    """
    for m, n in _targets(model, params):
        amount = int(round(sparsity * getattr(m, n).numel()))
        if amount > 0:
            tprune.l1_unstructured(m, n, amount=amount)
            tprune.remove(m, n)


def threshold_prune_to(model: nn.Module, sparsity: float, gamma: float = 0.1, params: Iterable[str] | None = None,
                       tolerance: float = 0.002) -> float:
    """Prune ``model`` in place with SABR's rule (:func:`sabr.prune`) at the factor that reaches ``sparsity``.

    Every tensor keeps its own threshold ``factor * std(w[|w| >= gamma * std(w)])``; the one ``factor`` is
    found by bisection so that the overall sparsity lands in ``[sparsity, sparsity + tolerance]`` (or as
    close above ``sparsity`` as the weights allow). Returns the factor.
    """
    def reached(f: float) -> float:
        return prunable_sparsity(model, f, gamma, params)

    lo, hi = 0.0, 1.0
    while reached(hi) < sparsity and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(60):
        s = reached(hi)
        if s <= sparsity + tolerance:
            break
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if reached(mid) < sparsity else (lo, mid)
    prune(model, teta1=hi, gamma=gamma, params=params)
    return hi


ALLOCATIONS: dict[str, PruneFn] = {"global": global_magnitude_prune, "layer": layer_magnitude_prune,
                                   "threshold": threshold_prune_to}
"""How a target sparsity is spread over the tensors: one global magnitude threshold, the same sparsity in
every tensor (uniform), or SABR's per-tensor std thresholds with one factor."""


def _allocation_error(allocation: str) -> ConfigError:
    return ConfigError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}; pass one of those.")


def magnitude_prune(model: nn.Module, sparsity: float, allocation: str = "global",
                    params: Iterable[str] | None = None) -> None:
    """Prune ``model`` in place to ``sparsity`` with the ``allocation`` of :data:`ALLOCATIONS`."""
    if allocation not in ALLOCATIONS:
        raise _allocation_error(allocation)
    ALLOCATIONS[allocation](model, sparsity, params=params)


def oneshot_finetune(exp: Experiment, model: nn.Module, epochs: int, sparsity: float, allocation: str = "global",
                     lr: float | None = None) -> tuple[nn.Module, list[dict]]:
    """One-shot pruning of ``model`` to ``sparsity``, then ``epochs`` of masked fine-tuning.

    ``allocation`` is a key of :data:`ALLOCATIONS` (``"layer"``: one-shot layer-wise magnitude;
    ``"threshold"``: SABR's rule, as after an L1 phase). Dropout is turned off; BatchNorm statistics are
    recalibrated after pruning when ``exp.config.recalibrates``. The fine-tune is
    :func:`sabr.phases.finetune_masked` at ``lr`` (zeros stay zero, best validation weights kept, the
    pruned start included). Returns the model (pruned in place) and one row per epoch.
    """
    set_dropout(model, 0.0)
    magnitude_prune(model, sparsity, allocation, exp.config.params)
    if exp.config.recalibrates:
        bn_recalibrator(exp)(model)
    return finetune_masked(exp, model, epochs, lr=lr, params=exp.config.params)


# --------------------------------------------------------------------------- gradual magnitude pruning
def gmp_sparsity(step: int, ramp: int, target: float) -> float:
    """Zhu & Gupta's cubic schedule: the sparsity after ``step`` of ``ramp`` pruning steps.

    ``target * (1 - (1 - step / ramp)^3)``: 0 at step 0, ``target`` from step ``ramp`` on, fast at
    first and slow near the end.
    """
    t = min(step, ramp)
    return target * (1.0 - (1.0 - t / ramp) ** 3)


class GMPSchedule:
    """The gradual-pruning hook: call it after every optimizer step (``train_epoch(after_step=...)``).

    Over the first ``ramp`` steps, every ``every`` steps (and at step ``ramp``) the model is pruned to
    :func:`gmp_sparsity` with ``allocation`` (:data:`ALLOCATIONS`; ``"layer"``: every tensor at that
    sparsity, as in the paper; ``"global"``: one magnitude threshold over all tensors); after other steps
    the last masks are re-applied, so weights pruned once stay zero (already-zero weights are the
    smallest, so masks only grow).

    Attributes:
        step: optimizer steps seen so far.
        masks: the current zero masks (``None`` before the first pruning step).
    """

    def __init__(self, model: nn.Module, target: float, ramp: int, every: int = 10, allocation: str = "layer",
                 params: Iterable[str] | None = None) -> None:
        if allocation not in ALLOCATIONS:
            raise _allocation_error(allocation)
        self.model, self.target, self.ramp, self.every = model, target, max(1, ramp), every
        self.allocation, self.params = allocation, params
        self.step = 0
        self.masks: dict[str, torch.Tensor] | None = None

    @property
    def done(self) -> bool:
        """True once the schedule has reached ``target``: the mask is fixed from here on."""
        return self.step >= self.ramp

    def __call__(self) -> None:
        t = self.step = self.step + 1
        if t <= self.ramp and (t % self.every == 0 or t == self.ramp):
            magnitude_prune(self.model, gmp_sparsity(t, self.ramp, self.target), self.allocation, self.params)
            self.masks = zero_masks(self.model, self.params)
        elif self.masks is not None:
            apply_masks(self.model, self.masks)


def train_gmp(exp: Experiment, model: nn.Module, epochs: int, target: float, fraction: float = 0.75,
              every: int = 10, allocation: str = "layer", lr: float | None = None) -> tuple[nn.Module, list[dict]]:
    """Gradual magnitude pruning (Zhu & Gupta 2017) of ``model`` to ``target`` while training it, in place.

    Args:
        exp: the experiment (training/validation splits, preprocessing, device, ``config``: batch size,
            phase-2 learning rate ``lr_sabr or lr``, seed, ``params``). One process: no distributed sharding.
        model: the starting (dense, trained) model.
        epochs: training epochs in all.
        target: final sparsity of the regularised tensors, in [0, 1].
        fraction: share of all optimizer steps over which the sparsity ramps up (:class:`GMPSchedule`).
        every: optimizer steps between two mask updates during the ramp.
        allocation: ``"layer"`` (uniform, the paper's) or ``"global"`` (see :class:`GMPSchedule`).
        lr: Adam's learning rate (default ``lr_sabr or lr`` of the config).

    Adam, no penalty, dropout off, phase 2's schedule (:func:`sabr.phases.sabr_scheduler`, validated every
    epoch), batch order from :func:`sabr.train.phase_generator` (``"gmp"``). Returns the model with the
    best-validation weights among the epochs that end at the target (the last weights if none) and one
    row per epoch, with the schedule's ``target_sparsity``.
    """
    cfg = exp.config
    set_dropout(model, 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr or cfg.lr_sabr or cfg.lr)
    gen = phase_generator(cfg.seed, "gmp")
    steps_per_epoch = math.ceil(len(exp.train) / cfg.batch_size)
    schedule = GMPSchedule(model, target, int(fraction * epochs * steps_per_epoch), every, allocation, cfg.params)

    def train(epoch: int) -> EpochStats:
        return train_epoch(model, opt, exp.train, exp.preprocess, exp.device, cfg.batch_size, gen,
                           after_step=schedule)

    hooks = FitHooks(keep_now=lambda epoch: schedule.done,
                     row_fields=lambda row: {"target_sparsity": gmp_sparsity(schedule.step, schedule.ramp, target)})
    state = fit(model, opt, train, lambda: evaluate(model, exp.val, exp.preprocess, exp.device), epochs,
                keep="best", scheduler=sabr_scheduler(opt), hooks=hooks)
    return model, state.rows


# --------------------------------------------------------------------------- fixed-lambda L1
NEVER_FREEZE = 10**9  # a k_epoch no run reaches


def fixed_l1_settings(settings: SabrSettings) -> SabrSettings:
    """``settings`` with SABR's adaptation off: lambdas never grow or shrink (no fast start), no tensor ever freezes.

    Phase 2 with it is plain L1 regularisation with SABR's initial per-tensor lambdas
    (``teta1 * std(w)``); ``teta1`` and ``zero_eps`` are kept.
    """
    return dataclasses.replace(settings, growth_rate=1.0, decrease_rate=1.0, k_epoch=NEVER_FREEZE, fast_start=None)


def ramp_l1_settings(settings: SabrSettings) -> SabrSettings:
    """``settings`` as a fixed ramp: every lambda is multiplied by ``growth_rate`` after every epoch, whatever
    the validation accuracy does (no shrinking, no freezing): SABR's schedule without its feedback."""
    return dataclasses.replace(fixed_l1_settings(settings), growth_rate=settings.growth_rate, accuracy_threshold=1.0)


def train_fixed_l1(exp: Experiment, model: nn.Module, epochs: int, on_epoch: Callable[[dict], None] | None = None,
                   *, ramp: bool = False, teta1: float | None = None,
                   lr: float | None = None) -> tuple[nn.Module, SABR, list[dict]]:
    """Phase 2 (:func:`sabr.phases.train_sabr`) for ``epochs`` epochs with SABR's adaptation off.

    The settings are the experiment's (``exp.config.sabr_settings()``, with ``teta1`` when given) under
    :func:`fixed_l1_settings` (constant lambdas) or, with ``ramp``, :func:`ramp_l1_settings`; ``lr`` is
    Adam's learning rate (default the config's phase-2 rate). Every other setting (dropout off, schedule)
    is phase 2's. Returns ``(model, regulariser, rows)`` as ``train_sabr`` does, with the last epoch's
    weights; ``on_epoch`` is passed on to it.
    """
    settings = exp.config.sabr_settings()
    if teta1 is not None:
        settings = dataclasses.replace(settings, teta1=teta1)
    settings = (ramp_l1_settings if ramp else fixed_l1_settings)(settings)
    return train_sabr(exp, model, epochs=epochs, lr=lr, settings=settings, progress=False, on_epoch=on_epoch)


# --------------------------------------------------------------------------- curves
def magnitude_curve(exp: Experiment, model: nn.Module, targets: Iterable[float], start: float = 0.0,
                    prune_fn: PruneFn = global_magnitude_prune) -> list[list[float]]:
    """``[sparsity, test accuracy]`` after pruning copies of ``model`` with ``prune_fn`` to each target.

    Only targets above ``start`` (by more than 0.001) are used: a model already at ``start`` sparsity
    has nothing to show below it. ``model`` itself is left as it is.
    """
    points = []
    for target in [t for t in targets if t > start + 1e-3]:
        m = copy.deepcopy(model)
        prune_fn(m, target)
        points.append([sparsity_report(m).sparsity, evaluate(m, exp.test, exp.preprocess, exp.device)[1]])
    return points


def accuracy_at(curve: list[list[float]], sparsity: float) -> float | None:
    """Accuracy at ``sparsity`` by linear interpolation on a ``[[sparsity, accuracy], ...]`` curve.

    Returns ``None`` outside the curve's range (within 0.0005 of a lone point counts as on it).
    """
    pts = sorted(curve)
    for (s0, a0), (s1, a1) in zip(pts, pts[1:]):
        if s0 <= sparsity <= s1:
            return a0 if s1 - s0 < 1e-9 else a0 + (a1 - a0) * (sparsity - s0) / (s1 - s0)
    close = [a for s, a in pts if abs(s - sparsity) < 5e-4]
    return close[0] if close else None


def sparsity_within(curve: list[list[float]], base_accuracy: float, points: float = 0.01) -> float | None:
    """Highest sparsity on the curve whose accuracy is within ``points`` (a fraction) of ``base_accuracy``.

    ``None`` when no point of the curve is that close.
    """
    ok = [s for s, a in curve if a >= base_accuracy - points]
    return max(ok) if ok else None
