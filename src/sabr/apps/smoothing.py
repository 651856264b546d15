"""Temporal smoothing of per-frame predictions, the confidence threshold, and stable-gesture detection.

Pure objects fed one frame at a time: :class:`TemporalSmoother` averages the class probabilities of the
last N frames and claims a label only when the average confidence reaches the threshold;
:class:`StableGesture` fires once when the same smoothed label has held for K frames.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class Smoothed:
    """The smoothed prediction of one frame.

    Attributes:
        label: class index, or ``None`` when the averaged confidence is below the threshold.
        confidence: the averaged probability of the arg-max class (a fraction in [0, 1]).
    """

    label: int | None
    confidence: float


class TemporalSmoother:
    """Mean of the class probabilities over the last ``window`` frames, with a confidence threshold.

    Args:
        window: number of frames averaged (1 = no smoothing).
        threshold: minimum averaged confidence (fraction) for a label to be claimed.
    """

    def __init__(self, window: int = 5, threshold: float = 0.6) -> None:
        if window < 1:
            raise ConfigError(f"the smoothing window must be >= 1 frame, got {window}.")
        if not 0 <= threshold <= 1:
            raise ConfigError(f"the confidence threshold is a fraction in [0, 1], got {threshold}.")
        self.window = window
        self.threshold = threshold
        self._history: deque[np.ndarray] = deque(maxlen=window)

    def update(self, probs: Sequence[float] | np.ndarray) -> Smoothed:
        """Add one frame's class probabilities (a 1-D array summing to 1, or all zeros for a frame with nothing
        to claim) and return the smoothed result."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if self._history and len(self._history[0]) != len(p):
            raise DataError(f"expected {len(self._history[0])} class probabilities, got {len(p)}; give every frame "
                            "the same model's probabilities, or start a new smoother for another model.")
        self._history.append(p)
        mean = np.mean(self._history, axis=0)
        k = int(mean.argmax())
        conf = float(mean[k])
        return Smoothed(k if conf >= self.threshold and conf > 0 else None, conf)  # all-zero: nothing to claim

    def reset(self) -> None:
        """Forget the history (e.g. when the ROI jumps or the source changes)."""
        self._history.clear()


class StableGesture:
    """Fires once per held gesture: the same smoothed label, with confidence >= ``min_confidence``,
    for at least ``frames`` consecutive frames.

    The gesture must be interrupted (another label, or nothing claimed) before it can fire again, so
    holding a hand still sends one request, not one per frame.

    Args:
        frames: K, the number of consecutive frames required.
        min_confidence: c, the minimum smoothed confidence of each of those frames (fraction).
    """

    def __init__(self, frames: int = 8, min_confidence: float = 0.7) -> None:
        if frames < 1:
            raise ConfigError(f"a stable gesture needs >= 1 frame, got {frames}.")
        self.frames = frames
        self.min_confidence = min_confidence
        self._label: int | None = None
        self._count = 0
        self._fired = False

    def update(self, smoothed: Smoothed) -> int | None:
        """Feed one frame's smoothed prediction; returns the label on the frame it becomes stable, else ``None``."""
        label = smoothed.label if smoothed.confidence >= self.min_confidence else None
        if label is None or label != self._label:
            self._label, self._count, self._fired = label, 0, False
        if label is None:
            return None
        self._count += 1
        if self._count >= self.frames and not self._fired:
            self._fired = True
            return label
        return None
