"""The decision rule fitted to one model on its own validation data: temperature, claim threshold, OOD score.

A model's raw softmax is not a confidence: SABR's L1 penalty shrinks the weights and with them the logits,
so a sparse model that is right 99% of the time gives flat probabilities (max ~0.4 on 10 classes). The rule
fitted here, on the validation split (never the test split), makes its numbers mean what they say:

* ``temperature`` T: one scalar minimising the validation negative log-likelihood of ``softmax(z / T)``
  (temperature scaling; the arg-max, hence the accuracy, is unchanged);
* ``threshold``: the lowest calibrated confidence at which the labels claimed on validation are still
  right at least ``precision`` (default 99%) of the time;
* ``ood``: an out-of-distribution score of the raw logits, ``max_logit`` (max z) or ``energy``
  (logsumexp z; minus the energy, so higher means "more like the training data" for both), and its
  threshold, set on generated background frames (blank, noise, gradients: :func:`background_images`)
  so that they are not claimed, while keeping most validation images.

Everything is a pure function of logits and labels, so it works on any model: :func:`collect_logits`
runs a model over ``(inputs, labels)`` batches, :func:`calibrate` fits the whole rule. The result is a
:class:`Calibration`; its :meth:`~Calibration.to_dict` is the ``"calibration"`` entry of a checkpoint's
metadata, of every export and of ``summary.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError, TrainingError

log = logging.getLogger(__name__)

OOD_SCORES = ("max_logit", "energy")
DEFAULT_THRESHOLD = 0.6
"""The claim threshold of a model with no calibration (a run made before calibration existed)."""


@dataclass
class Calibration:
    """A model's decision rule (see the module docstring).

    Attributes:
        temperature: divide the logits by it before the softmax (1: unchanged).
        threshold: the minimum calibrated confidence (fraction) at which a label is claimed.
        ood_score: ``"max_logit"``, ``"energy"`` or ``None`` (no out-of-distribution check).
        ood_threshold: a frame whose score is below it is not claimed (``None`` with no score).
        extra: the figures the rule was chosen with (validation precision, coverage, ECE ...).
    """

    temperature: float = 1.0
    threshold: float = DEFAULT_THRESHOLD
    ood_score: str | None = None
    ood_threshold: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """``{"temperature", "threshold", "ood": {"score", "threshold"}, ...extra}`` (JSON-ready)."""
        return {"temperature": self.temperature, "threshold": self.threshold,
                "ood": {"score": self.ood_score, "threshold": self.ood_threshold}, **self.extra}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Calibration":
        """The rule stored in metadata; a model without one gets temperature 1 and the old threshold 0.6."""
        if not d:
            return cls()
        ood = d.get("ood") or {}
        extra = {k: v for k, v in d.items() if k not in ("temperature", "threshold", "ood")}
        return cls(float(d.get("temperature", 1.0)), float(d.get("threshold", DEFAULT_THRESHOLD)),
                   ood.get("score"), None if ood.get("threshold") is None else float(ood["threshold"]), extra)

    def describe(self, override: float | None = None) -> str:
        """One line for people: the temperature, the claim threshold (``override`` when given) and the OOD check."""
        text = f"decision rule: temperature {self.temperature:.4g}, claim threshold " + (
            f"{override:.3f} (given)" if override is not None else
            f"{self.threshold:.3f} ({'fitted on validation' if self.extra else 'default: no calibration saved'})")
        if self.ood_score is not None:
            text += f", nothing claimed below {self.ood_score} {self.ood_threshold:.4g}"
        return text

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``softmax(logits / temperature)`` over the last dimension."""
        return probabilities(logits, self.temperature)

    def measure(self, logits: torch.Tensor, labels: torch.Tensor, split: str = "test") -> dict:
        """``{"ece_<split>_before", "ece_<split>_after", "nll_<split>_after"}``: the rule on other data (fractions)."""
        return {f"ece_{split}_before": expected_calibration_error(probabilities(logits), labels),
                f"ece_{split}_after": expected_calibration_error(self.probabilities(logits), labels),
                f"nll_{split}_after": nll(logits, labels, self.temperature)}

    def known(self, logits: torch.Tensor) -> torch.Tensor:
        """Boolean per row of ``logits``: ``True`` when the OOD score passes (always, with no score)."""
        if self.ood_score is None or self.ood_threshold is None:
            return torch.ones(logits.shape[:-1], dtype=torch.bool)
        return ood_score(logits, self.ood_score) >= self.ood_threshold


# --------------------------------------------------------------------------- pure measures
def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` in float32 over the last dimension."""
    return torch.softmax(torch.as_tensor(logits).float() / temperature, dim=-1)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)`` (float64)."""
    return float(F.cross_entropy(torch.as_tensor(logits).double() / temperature, torch.as_tensor(labels)))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, low: float = 1e-2, high: float = 1e2,
                    steps: int = 100) -> float:
    """The temperature in ``[low, high]`` that minimises :func:`nll` (golden-section search on log T).

    The NLL is convex in 1/T, hence unimodal in log T, so the search finds the minimum to ~1e-6 relative.
    """
    if len(labels) == 0:
        raise DataError("fitting a temperature needs at least one labelled example; pass a non-empty validation split.")
    z, y = torch.as_tensor(logits).double(), torch.as_tensor(labels)
    f: Callable[[float], float] = lambda log_t: nll(z, y, math.exp(log_t))  # noqa: E731
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: the mean |confidence - accuracy| over ``bins`` equal-width confidence bins, weighted by their
    share of the examples (a fraction in [0, 1]; 0 = perfectly calibrated)."""
    conf, pred = torch.as_tensor(probs).float().max(dim=-1)
    right = (pred == torch.as_tensor(labels)).float()
    which = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += float(m.float().mean()) * abs(float(conf[m].mean()) - float(right[m].mean()))
    return total


def ood_score(logits: torch.Tensor, score: str) -> torch.Tensor:
    """The out-of-distribution score of each row of raw ``logits`` (higher = more like the training data):
    ``"max_logit"``: max z; ``"energy"``: logsumexp z (the negative energy)."""
    z = torch.as_tensor(logits).float()
    if score == "max_logit":
        return z.max(dim=-1).values
    if score == "energy":
        return torch.logsumexp(z, dim=-1)
    raise ConfigError(f"unknown OOD score {score!r}; choose one of {', '.join(OOD_SCORES)}.")


@dataclass(frozen=True)
class ThresholdChoice:
    """The claim threshold and what it does on the data it was chosen on (fractions)."""

    threshold: float
    precision: float  # of the labels claimed at the threshold
    coverage: float  # share of the examples claimed
    reached: bool  # whether the target precision was reached at all


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, precision: float = 0.99) -> ThresholdChoice:
    """The lowest confidence threshold at which the claimed labels (confidence >= threshold) are right at
    least ``precision`` of the time. When no threshold reaches it, the one with the highest precision
    (``reached`` is then ``False``)."""
    conf, pred = torch.as_tensor(probs).double().max(dim=-1)
    right = (pred == torch.as_tensor(labels)).double()
    order = torch.argsort(conf, descending=True)
    conf, right = conf[order], right[order]
    n = len(conf)
    if n == 0:
        raise DataError("choosing a threshold needs at least one labelled example; pass a non-empty validation split.")
    cum = torch.cumsum(right, 0) / torch.arange(1, n + 1, dtype=torch.float64)
    last_of_tie = torch.ones(n, dtype=torch.bool)  # a cut must take every example with the same confidence
    last_of_tie[:-1] = conf[:-1] != conf[1:]
    ok = torch.nonzero(last_of_tie & (cum >= precision)).flatten()
    reached = len(ok) > 0
    k = int(ok[-1]) if reached else int(torch.argmax(torch.where(last_of_tie, cum, torch.tensor(-1.0))))
    return ThresholdChoice(float(conf[k]), float(cum[k]), (k + 1) / n, reached)


# --------------------------------------------------------------------------- data for fitting
@torch.no_grad()
def collect_logits(model: Callable, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` (eval mode) over ``(inputs, labels)`` batches: ``(logits (N, K), labels (N,))`` on the CPU.

    ``inputs`` are what the model takes (normalised float tensors); ``device``: where to run (default:
    the model's parameters', else the CPU).
    """
    if device is None:
        params = list(getattr(model, "parameters", lambda: [])())
        device = params[0].device if params else "cpu"
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    zs, ys = [], []
    for x, y in batches:
        zs.append(torch.as_tensor(model(x.to(device))).float().cpu())
        ys.append(torch.as_tensor(y).cpu())
    if was_training:
        model.train()
    return torch.cat(zs), torch.cat(ys)


def background_images(count: int = 192, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Deterministic RGB ``uint8`` frames with nothing to recognise: blank (grey levels from black to white
    in even steps, and random colours), noise (pixel, blocky, in colour and grey) and gradients (linear in
    four directions, radial).

    ``count`` frames of ``size`` x ``size`` pixels, random ones drawn from ``numpy.random.default_rng(seed)``;
    the seven kinds take turns, so any ``count`` >= 7 holds all of them (and black and white with >= 8).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    greys = max(1, -(-count // 7) - 1)  # the last grey frame is white
    out = []
    for i in range(count):
        kind = i % 7
        if kind == 0:  # blank grey, black to white
            img = np.full((size, size, 1), 255.0 * min(i // 7, greys) / greys)
        elif kind == 6:  # blank colour
            img = np.ones((size, size, 1)) * rng.integers(0, 256, 3)
        elif kind == 1:  # pixel noise, uniform or around a level
            img = rng.integers(0, 256, (size, size, 1 if i % 12 == 1 else 3)).astype(np.float64)
        elif kind == 2:
            img = rng.normal(rng.uniform(30, 220), rng.uniform(5, 60), (size, size, 1))
        elif kind == 3:  # blocky noise: noise drawn at a low resolution and scaled up
            cells = int(rng.integers(2, 9))
            small = rng.integers(0, 256, (cells, cells, 1)).astype(np.float64)
            img = np.kron(small, np.ones((-(-size // cells), -(-size // cells), 1)))[:size, :size]
        elif kind == 4:  # linear gradient in one of four directions
            t = [xx, yy, (xx + yy) / 2, (xx + 1 - yy) / 2][int(rng.integers(0, 4))]
            lo, hi = rng.uniform(0, 255, 2)
            img = (lo + (hi - lo) * t)[..., None]
        else:  # radial gradient
            r = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / math.sqrt(0.5)
            lo, hi = rng.uniform(0, 255, 2)
            img = (lo + (hi - lo) * r)[..., None]
        out.append(np.ascontiguousarray(np.broadcast_to(np.clip(np.rint(img), 0, 255), (size, size, 3)),
                                        dtype=np.uint8))
    return out


# --------------------------------------------------------------------------- the whole rule
def choose_ood(val_logits: torch.Tensor, background_logits: torch.Tensor,
               min_coverage: float = 0.95, reject: float = 0.95) -> tuple[str | None, float | None, dict]:
    """The OOD score and threshold: for each of :data:`OOD_SCORES`, the threshold just above the ``reject``
    quantile of the background frames' scores (95%: at most one empty frame in twenty passes the check, the
    apps' target), lowered if needed to keep ``min_coverage`` of the validation images; the score that rejects
    the most background frames (ties: keeps the most validation images) wins. Not the highest background
    score: one outlier among the generated frames would then set the threshold alone.

    Returns ``(score, threshold, figures)``; ``figures`` holds ``background_rejected`` and ``val_coverage``
    (fractions) of the chosen score. ``(None, None, {})`` when there is no background frame.
    """
    if len(background_logits) == 0:
        return None, None, {}
    best: tuple | None = None
    for score in OOD_SCORES:
        s_val, s_bg = ood_score(val_logits, score), ood_score(background_logits, score)  # float32
        top = torch.quantile(s_bg, reject, interpolation="higher")
        above = float(torch.nextafter(top, torch.tensor(math.inf)))  # the next float32 up
        keep = float(torch.quantile(s_val, 1 - min_coverage, interpolation="lower")) if len(s_val) else above
        threshold = min(above, keep)
        rejected = float((s_bg < threshold).float().mean())
        coverage = float((s_val >= threshold).float().mean()) if len(s_val) else 1.0
        if best is None or (rejected, coverage) > best[2:]:
            best = (score, threshold, rejected, coverage)
    score, threshold, rejected, coverage = best
    return score, threshold, {"background_rejected": rejected, "val_coverage": coverage}


def calibrate(val_logits: torch.Tensor, val_labels: torch.Tensor, background_logits: torch.Tensor | None = None,
              precision: float = 0.99, min_coverage: float = 0.95) -> Calibration:
    """Fit the whole rule on validation logits (and, for the OOD score, the logits of background frames).

    Args:
        val_logits: the model's raw logits ``(N, K)`` on the validation split.
        val_labels: their labels ``(N,)``.
        background_logits: raw logits ``(M, K)`` on frames with nothing to recognise (e.g.
            :func:`background_images` through the model's preprocessing); ``None``: no OOD score.
        precision: the target precision of claimed labels (fraction).
        min_coverage: the share of validation images the OOD threshold must keep.

    Returns:
        the :class:`Calibration`; its ``extra`` holds ``ece_val_before``, ``ece_val_after``, ``nll_val_before``,
        ``nll_val_after``, ``target_precision``, ``val_precision``, ``val_coverage`` (claimed share at the
        threshold, before the OOD check), ``precision_reached``, ``val_claimed`` (after both checks) and, with
        background frames, ``ood_background_rejected`` and ``ood_val_coverage``.
    """
    if not bool(torch.isfinite(torch.as_tensor(val_logits)).all()):
        raise TrainingError("the model gives NaN or infinite logits on the validation images, so no decision rule "
                            "can be fitted; retrain it (a lower --lr or --teta1) before using it.")
    temperature = fit_temperature(val_logits, val_labels)
    before, after = probabilities(val_logits), probabilities(val_logits, temperature)
    choice = choose_threshold(after, val_labels, precision)
    score, ood_threshold, ood = (None, None, {}) if background_logits is None else \
        choose_ood(val_logits, background_logits, min_coverage)
    cal = Calibration(temperature, choice.threshold, score, ood_threshold)
    claimed = (after.max(dim=-1).values >= choice.threshold) & cal.known(val_logits)
    cal.extra = {"ece_val_before": expected_calibration_error(before, val_labels),
                 "ece_val_after": expected_calibration_error(after, val_labels),
                 "nll_val_before": nll(val_logits, val_labels), "nll_val_after": nll(val_logits, val_labels, temperature),
                 "target_precision": precision, "val_precision": choice.precision, "val_coverage": choice.coverage,
                 "precision_reached": choice.reached, "val_claimed": float(claimed.float().mean()),
                 **{f"ood_{k}": v for k, v in ood.items()}}
    if not choice.reached:
        log.warning("no confidence threshold reaches %.1f%% precision on validation; using %.3f (%.1f%% precision)",
                    100 * precision, choice.threshold, 100 * choice.precision)
    return cal


def calibrate_model(model: Callable, val_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    transform: Callable | None = None, precision: float = 0.99, min_coverage: float = 0.95,
                    background: Iterable[np.ndarray] | None = None) -> Calibration:
    """:func:`calibrate` for a model: its logits on ``val_batches`` (``(normalised inputs, labels)``, e.g. the
    validation split) and, when ``transform`` (the model's :class:`~sabr.data.Preprocess`) is given, on the
    ``background`` frames (default: :func:`background_images`) passed through it as the apps pass a frame."""
    z, y = collect_logits(model, val_batches)
    z_bg = None
    if transform is not None:
        frames = list(background) if background is not None else background_images()
        x = torch.stack([transform(f) for f in frames])
        z_bg, _ = collect_logits(model, [(x, torch.zeros(len(x), dtype=torch.long))])
    return calibrate(z, y, z_bg, precision, min_coverage)
