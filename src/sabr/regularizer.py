"""The SABR regulariser: layer-specific, adaptive L1 strengths with progressive freezing.

The rules follow ``docs/spec.md`` (phase 2) exactly:

* initialisation, once: ``lambda_t = teta1 * std(w_t)`` for every regularised tensor ``t`` (``std`` is the
  population standard deviation, numpy's ``np.std``, as in the seed's code);
* :meth:`SABR.penalty` returns ``sum_t lambda_t * sum(|w_t|)`` over the *unfrozen* tensors, times
  ``REFERENCE_STEPS / steps_per_epoch`` when ``steps_per_epoch`` is given (see below);
* :meth:`SABR.step` runs once per epoch with the validation accuracy ``acc`` (a fraction):
  ``drop = best - acc``; if ``drop > accuracy_threshold`` every unfrozen lambda is divided by
  ``decrease_rate`` and every unfrozen counter goes up by one, and if any unfrozen counter has
  reached ``k_epoch`` ONE tensor is frozen (the unfrozen tensor with the fewest weights
  ``|w| >= zero_eps``, ties broken by ``named_parameters()`` order). Otherwise every unfrozen lambda
  is multiplied by ``growth_rate`` and the counters reset to 0. Then ``best = max(best, acc)`` and
  every lambda is appended to its history;
* the fast start (this project's addition): until the first epoch that shrinks, a growing epoch multiplies
  by ``fast_start`` (default 2) instead of ``growth_rate``, so SABR reaches the strength a dataset needs in a
  few epochs instead of the ~24 the seed's x1.15 needs to grow x30; after the first shrink, the seed's rule.
  ``fast_start=None`` (or at most ``growth_rate``) is the seed's rule throughout.

The units are tensors by default; structured SABR (``groups=``, :mod:`sabr.channels`) applies the same rules
to channel groups instead: one lambda per group of coupled output channels, a group-lasso term, and a frozen
group is one whose weight tensors stop training. Each kind's term and freeze choice live in :mod:`sabr.units`.

Counters are not reset by a freeze: while the accuracy stays below ``best - accuracy_threshold`` the
remaining tensors keep a counter ``>= k_epoch``, so one more tensor freezes each such epoch.

The penalty is added at every optimizer step, so with the spec's per-step lambdas the L1 pull of one epoch
grows with the number of steps per epoch, and a ``teta1`` tuned on one dataset is far too strong or weak on
another. Given ``steps_per_epoch``, every step applies ``REFERENCE_STEPS / steps_per_epoch`` of the
lambda, so an epoch pulls as hard as ``REFERENCE_STEPS`` (100) steps of the spec's rule whatever the
dataset size: ``teta1`` then means the same on every dataset (``sabr run`` does this; the ``reference``
preset and ``steps_per_epoch=None`` keep the spec's per-step rule).

Example::

    reg = SABR(model, steps_per_epoch=len(loader))
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + reg.penalty()
            opt.zero_grad(); loss.backward(); opt.step()
        reg.step(evaluate(model, val_loader))
        if reg.all_frozen:
            break
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .channels import ChannelGroup
from .config import SABR_DEFAULTS as DEFAULTS
from .config import SabrSettings
from .errors import ConfigError
from .fields import check_number
from .units import Units, make_units
from .weights import default_param_names, population_std, resolve_params

__all__ = ["AUTO_THRESHOLD_FLOOR", "AUTO_THRESHOLD_Z", "DEFAULTS", "REFERENCE_STEPS", "SABR", "SabrSettings",
           "StepResult", "auto_threshold", "check_settings",
           # their home is sabr.weights; imported from here before it existed
           "default_param_names", "population_std", "resolve_params"]

log = logging.getLogger(__name__)


REFERENCE_STEPS = 100
"""Optimizer steps whose pull one epoch has when :class:`SABR` is given ``steps_per_epoch``."""

AUTO_THRESHOLD_Z = 1.0
"""``accuracy_threshold="auto"``: this many binomial standard errors of the validation accuracy ..."""
AUTO_THRESHOLD_FLOOR = DEFAULTS.accuracy_threshold
"""... and never below this (the spec's 0.007)."""


def auto_threshold(val_accuracy: float, val_size: int, z: float = AUTO_THRESHOLD_Z,
                   floor: float = AUTO_THRESHOLD_FLOOR) -> float:
    """The tolerated drop ``max(floor, z * sqrt(p (1 - p) / n))`` for a validation split of ``n`` images.

    ``p`` is the validation accuracy the phase starts from (a fraction). Below one standard error of the
    split, an epoch-to-epoch change of the accuracy is noise: shrinking and freezing on it (as the
    spec's fixed 0.7 point did on a 324-image split) stops SABR for nothing.
    """
    if val_size < 1:
        raise ConfigError(f"the validation split is empty; the auto accuracy threshold needs images, got {val_size}.")
    p = min(max(float(val_accuracy), 0.0), 1.0)
    return max(float(floor), z * math.sqrt(p * (1.0 - p) / val_size))


def check_settings(**settings: Any) -> None:
    """Refuse SABR hyper-parameters that are not finite or out of range (:class:`ConfigError` naming the
    value): ``teta1 >= 0``, ``growth_rate`` / ``decrease_rate`` / ``zero_eps > 0``, ``accuracy_threshold`` a
    fraction, ``k_epoch`` and ``steps_per_epoch`` (when given) whole numbers >= 1, ``fast_start`` (when given) >= 1."""
    bounds = dict(teta1=dict(min=0), growth_rate=dict(gt=0), decrease_rate=dict(gt=0), zero_eps=dict(gt=0),
                  accuracy_threshold=dict(min=0, max=1), k_epoch=dict(integer=True, min=1),
                  steps_per_epoch=dict(integer=True, min=1), fast_start=dict(min=1))
    for name, value in settings.items():
        if value is not None or name not in ("steps_per_epoch", "fast_start"):
            check_number(name, value, **bounds[name])


@dataclass
class StepResult:
    """What one :meth:`SABR.step` decided (for logs and history files)."""

    action: str  # "grow" or "shrink"
    drop: float
    best: float
    frozen: str | None  # the tensor frozen this epoch, if any


class SABR:
    """Sparsity-Accuracy Balanced Regularization controller.

    Args:
        model: the network whose weights are regularised.
        teta1: lambda initialisation factor, ``lambda_t = teta1 * std(w_t)`` (default 5e-4).
        growth_rate: factor applied to every unfrozen lambda after an epoch without a significant
            accuracy drop (default 1.15).
        decrease_rate: divisor applied after an epoch whose drop exceeds ``accuracy_threshold`` (1.2).
        accuracy_threshold: tolerated drop from the best validation accuracy, as a fraction (0.007).
        k_epoch: number of consecutive no-growth epochs after which one tensor freezes (2).
        zero_eps: a weight counts as near zero when ``|w| < zero_eps`` (1e-5).
        fast_start: growth factor used instead of ``growth_rate`` until the first shrinking epoch (2.0);
            ``None`` or a value at most ``growth_rate`` keeps the seed's rule. Every default above comes
            from :data:`DEFAULTS`, a :class:`SabrSettings`.
        steps_per_epoch: optimizer steps (``penalty()`` calls) per epoch, e.g. ``len(train_loader)``; when
            given, each call applies ``REFERENCE_STEPS / steps_per_epoch`` of every lambda, so ``teta1``
            means the same whatever the dataset size. ``None`` (default): the spec's per-step rule.
        params: names of the tensors to regularise; default: weights of every Conv and Linear module.
        groups: structured SABR: channel groups (:func:`sabr.channel_groups`) instead of tensors. Each
            group ``g`` is one unit with one lambda, ``teta1 * std(weights of g)``, and the term
            ``lambda_g * sqrt(d) * sum_j ||row_j||_2`` over its channels (:func:`sabr.channels.group_lasso`),
            which drives whole coupled channels to zero so that :func:`sabr.shrink` removes them. Growth,
            shrinking act on groups exactly as on tensors. The group frozen is the one with the largest
            share of channels the pruning rule would remove at factor :data:`~sabr.channels.STRUCTURED_FACTOR`,
            and no group is frozen while none has such a channel (channels shrink but rarely reach zero, so
            counting live channels would tie every group and freeze the smallest ones before any of their
            channels could go). Freezing a group freezes its weight tensors (each belongs to one group).
            ``params`` is ignored.
        units: the units to regularise (:mod:`sabr.units`), in place of ``params`` / ``groups``.

    Attributes:
        units: the :class:`~sabr.units.Units`, a mapping unit name -> its tensor names: one tensor per unit, or
            a channel group's tensors.
        params: tensor name -> parameter, every regularised tensor.
        lambdas: unit name -> current lambda (float).
        frozen: the names of frozen units (they no longer train; their lambda is kept).
        history: unit name -> list of lambdas, the initial value then one per :meth:`step`.
        best: the best validation accuracy seen so far (``None`` before the first step).
        counters: unit name -> epochs without growth.
        shrunk: whether any epoch has shrunk the lambdas (the fast start is over).
    """

    def __init__(
        self,
        model: nn.Module,
        teta1: float = DEFAULTS.teta1,
        growth_rate: float = DEFAULTS.growth_rate,
        decrease_rate: float = DEFAULTS.decrease_rate,
        accuracy_threshold: float = DEFAULTS.accuracy_threshold,
        k_epoch: int = DEFAULTS.k_epoch,
        zero_eps: float = DEFAULTS.zero_eps,
        params: Iterable[str] | None = None,
        steps_per_epoch: int | None = None,
        groups: Sequence[ChannelGroup] | None = None,
        fast_start: float | None = DEFAULTS.fast_start,
        *,
        units: Units | None = None,
    ) -> None:
        check_settings(teta1=teta1, growth_rate=growth_rate, decrease_rate=decrease_rate,
                       accuracy_threshold=accuracy_threshold, k_epoch=k_epoch, zero_eps=zero_eps,
                       steps_per_epoch=steps_per_epoch, fast_start=fast_start)
        self.model = model
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.teta1 = float(teta1)
        self.growth_rate = float(growth_rate)
        self.decrease_rate = float(decrease_rate)
        self.accuracy_threshold = float(accuracy_threshold)
        self.k_epoch = int(k_epoch)
        self.zero_eps = float(zero_eps)
        self.fast_start = None if fast_start is None else float(fast_start)
        self.units = make_units(model, params, groups, units)
        if not self.units:
            raise ConfigError(f"SABR found no {self.units.kind} to regularise in this model; pass units that "
                              "name some.")
        self.params = resolve_params(model, [n for names in self.units.values() for n in names])
        self.lambdas: dict[str, float] = {u: self.teta1 * population_std(self._flat(u)) for u in self.units}
        self.counters: dict[str, int] = {u: 0 for u in self.units}
        self.frozen: set[str] = set()
        self.history: dict[str, list[float]] = {n: [lam] for n, lam in self.lambdas.items()}
        self.best: float | None = None
        self.epochs = 0
        self.shrunk = False

    # ----------------------------------------------------------------- training-time term
    @property
    def step_scale(self) -> float:
        """The share of every lambda one :meth:`penalty` call applies: ``REFERENCE_STEPS / steps_per_epoch``
        (1 without ``steps_per_epoch``)."""
        return 1.0 if self.steps_per_epoch is None else REFERENCE_STEPS / self.steps_per_epoch

    def penalty(self) -> torch.Tensor:
        """The L1 term ``step_scale * sum_t lambda_t * sum(|w_t|)`` over unfrozen tensors, as a scalar tensor.

        Runs entirely on the parameters' device: lambdas are Python floats, so no host sync happens.
        """
        scale = self.step_scale
        terms = [scale * self.lambdas[u] * self._norm(u) for u in self.units if u not in self.frozen]
        if not terms:
            first = next(iter(self.params.values()))
            return first.new_zeros(())
        return torch.stack(terms).sum()

    def _norm(self, unit: str) -> torch.Tensor:
        return self.units.norm(self.params, unit)

    @property
    def groups(self) -> dict | None:
        """Deprecated: structured mode's channel groups by name (``None`` otherwise); use :attr:`units`."""
        warnings.warn("SABR.groups is deprecated: use SABR.units (ChannelGroupUnits.groups in structured mode).",
                      DeprecationWarning, stacklevel=2)
        return getattr(self.units, "groups", None)

    def _flat(self, unit: str) -> torch.Tensor:
        return torch.cat([self.params[n].detach().flatten() for n in self.units[unit]])

    # ----------------------------------------------------------------- once per epoch
    def step(self, val_accuracy: float) -> StepResult:
        """Update lambdas, counters and frozen set from one epoch's validation accuracy (a fraction)."""
        acc = float(val_accuracy)
        if not 0.0 <= acc <= 1.0:
            raise ConfigError(f"val_accuracy is a fraction in [0, 1], got {acc} (did you pass a percentage?).")
        if self.best is None:
            self.best = acc
        drop = self.best - acc
        unfrozen = [u for u in self.units if u not in self.frozen]
        froze = None
        if drop > self.accuracy_threshold:
            action, self.shrunk = "shrink", True
            for n in unfrozen:
                self.lambdas[n] /= self.decrease_rate
                self.counters[n] += 1
            if any(self.counters[n] >= self.k_epoch for n in unfrozen):
                froze = self._freeze_sparsest(unfrozen)
        else:
            action, rate = "grow", self.growth
            for n in unfrozen:
                self.lambdas[n] *= rate
                self.counters[n] = 0
        self.best = max(self.best, acc)
        for n, lam in self.lambdas.items():
            self.history[n].append(lam)
        self.epochs += 1
        log.debug("SABR step %d: acc=%.4f best=%.4f drop=%.4f %s%s", self.epochs, acc, self.best, drop,
                  action, f", froze {froze}" if froze else "")
        return StepResult(action=action, drop=drop, best=self.best, frozen=froze)

    @property
    def growth(self) -> float:
        """The factor a growing epoch applies now: ``fast_start`` until the first shrink, then ``growth_rate``."""
        fast = self.fast_start
        return fast if fast is not None and not self.shrunk and fast > self.growth_rate else self.growth_rate

    def _freeze_sparsest(self, unfrozen: list[str]) -> str | None:
        scores = {u: self.units.freeze_score(self.params, u, self.zero_eps) for u in unfrozen}
        ready = [u for u in unfrozen if scores[u] is not None]
        if not ready:  # no unit is ready (no channel group has a removable channel yet)
            return None
        name = max(ready, key=scores.__getitem__)  # max() keeps the first of equal scores
        self.freeze(name)
        return name

    def freeze(self, name: str) -> None:
        """Freeze one unit: its tensors stop training (``requires_grad=False``) and its lambda stays as it is."""
        self.frozen.add(name)
        for n in self.units[name]:
            self.params[n].requires_grad_(False)
            self.params[n].grad = None

    @property
    def all_frozen(self) -> bool:
        """True once every regularised tensor is frozen: phase 2 is over."""
        return len(self.frozen) == len(self.units)

    def mean_lambda(self) -> float:
        """Average lambda over all regularised tensors."""
        return sum(self.lambdas.values()) / len(self.lambdas)

    def near_zero_sparsity(self) -> float:
        """Fraction of regularised weights with ``|w| < zero_eps`` (the training-time sparsity)."""
        with torch.no_grad():
            small = sum(int((p.detach().abs() < self.zero_eps).sum()) for p in self.params.values())
        return small / sum(p.numel() for p in self.params.values())

    # ----------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Everything the controller owns, as plain JSON-serialisable values."""
        return {
            "teta1": self.teta1,
            "growth_rate": self.growth_rate,
            "decrease_rate": self.decrease_rate,
            "accuracy_threshold": self.accuracy_threshold,
            "k_epoch": self.k_epoch,
            "zero_eps": self.zero_eps,
            "fast_start": self.fast_start,
            "steps_per_epoch": self.steps_per_epoch,
            "params": list(self.units),
            "groups": self.units.to_json(),
            "lambdas": dict(self.lambdas),
            "counters": dict(self.counters),
            "frozen": [u for u in self.units if u in self.frozen],
            "history": {u: list(h) for u, h in self.history.items()},
            "best": self.best,
            "epochs": self.epochs,
            "shrunk": self.shrunk,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; frozen tensors get ``requires_grad=False`` again.

        A state saved before the fast start existed (no ``fast_start`` key) continues by the rule that made it,
        the seed's (``fast_start=None``); its ``shrunk`` flag is derived from the history (some lambda fell).
        """
        if list(state["params"]) != list(self.units):
            raise ConfigError(
                "this SABR state was saved for other tensors or channel groups "
                f"({len(state['params'])} saved, {len(self.units)} here); load it into the same model and mode."
            )
        for key in ("teta1", "growth_rate", "decrease_rate", "accuracy_threshold", "zero_eps"):
            setattr(self, key, float(state[key]))
        self.k_epoch = int(state["k_epoch"])
        self.steps_per_epoch = state.get("steps_per_epoch")
        self.lambdas = {u: float(state["lambdas"][u]) for u in self.units}
        self.counters = {u: int(state["counters"][u]) for u in self.units}
        self.history = {u: [float(v) for v in state["history"][u]] for u in self.units}
        self.best = None if state["best"] is None else float(state["best"])
        self.epochs = int(state["epochs"])
        self.fast_start = None if state.get("fast_start") is None else float(state["fast_start"])
        self.shrunk = bool(state["shrunk"]) if "shrunk" in state else _any_fell(self.history)
        self.frozen = set()
        for p in self.params.values():
            p.requires_grad_(True)
        for n in state["frozen"]:
            self.freeze(n)


def _any_fell(history: dict[str, list[float]]) -> bool:
    """Whether some lambda ever fell from one epoch to the next: a shrinking epoch (for states without ``shrunk``)."""
    return any(b < a for h in history.values() for a, b in zip(h, h[1:]))
