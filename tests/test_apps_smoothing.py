import numpy as np
import pytest

from sabr.apps import Smoothed, StableGesture, TemporalSmoother
from sabr.errors import ConfigError, DataError


def test_mean_over_window_and_threshold():
    s = TemporalSmoother(window=3, threshold=0.6)
    assert s.update([0.9, 0.1, 0.0]) == Smoothed(0, pytest.approx(0.9))
    r = s.update([0.1, 0.9, 0.0])  # mean (0.5, 0.5, 0): below threshold, nothing claimed
    assert r.label is None and r.confidence == pytest.approx(0.5)
    s.update([0.0, 1.0, 0.0])
    r = s.update([0.0, 1.0, 0.0])  # the first frame has left the window: (0.033, 0.967, 0)
    assert r.label == 1 and r.confidence == pytest.approx((0.9 + 1 + 1) / 3)


def test_single_frame_window_is_raw_prediction():
    s = TemporalSmoother(window=1, threshold=0.0)
    for p in np.eye(4):
        assert s.update(p).label == int(p.argmax())


def test_reset_and_bad_arguments():
    s = TemporalSmoother(window=4, threshold=0.5)
    s.update([1.0, 0.0])
    s.reset()
    assert s.update([0.0, 1.0]).label == 1
    with pytest.raises(DataError, match="class probabilities"):
        s.update([0.2, 0.3, 0.5])
    with pytest.raises(ConfigError):
        TemporalSmoother(window=0)
    with pytest.raises(ConfigError):
        TemporalSmoother(threshold=1.5)


def test_stable_gesture_fires_once_after_k_frames():
    g = StableGesture(frames=3, min_confidence=0.7)
    fired = [g.update(Smoothed(2, 0.9)) for _ in range(6)]
    assert fired == [None, None, 2, None, None, None]  # held: one request only


def test_stable_gesture_debounce_and_confidence():
    g = StableGesture(frames=3, min_confidence=0.7)
    seq = [Smoothed(1, 0.9), Smoothed(1, 0.9), Smoothed(4, 0.9),  # interrupted before K
           Smoothed(1, 0.9), Smoothed(1, 0.65), Smoothed(1, 0.9),  # a frame below c restarts the count
           Smoothed(1, 0.9), Smoothed(1, 0.9), Smoothed(None, 0.3), Smoothed(1, 0.9), Smoothed(1, 0.9),
           Smoothed(1, 0.9)]
    assert [g.update(s) for s in seq] == [None] * 7 + [1, None, None, None, 1]


def test_frames_with_nothing_to_claim_lower_the_mean_and_alone_claim_nothing():
    s = TemporalSmoother(window=2, threshold=0.0)
    assert s.update([0.0, 0.0]).label is None  # even at threshold 0
    r = s.update([0.0, 1.0])
    assert (r.label, r.confidence) == (1, 0.5)
