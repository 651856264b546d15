"""The decision rule fitted on validation: temperature, claim threshold, OOD score, and where it is stored."""

import json
import math

import numpy as np
import pytest
import torch

from sabr import Calibration, calibrate_model, load_run
from sabr.calibration import (DEFAULT_THRESHOLD, background_images, calibrate, choose_ood, choose_threshold,
                              collect_logits, expected_calibration_error, fit_temperature, nll, ood_score,
                              probabilities)


def _sampled(n=4000, classes=10, scale=0.2, seed=0):
    """Labels drawn from softmax(u) and logits ``scale * u``: the best temperature is ``scale``."""
    g = torch.Generator().manual_seed(seed)
    u = 4 * torch.randn(n, classes, generator=g)
    y = torch.multinomial(torch.softmax(u, 1), 1, generator=g).flatten()
    return scale * u, y


def test_fit_temperature_recovers_the_scale_the_logits_were_shrunk_by():
    z, y = _sampled(scale=0.2)
    t = fit_temperature(z, y)
    assert t == pytest.approx(0.2, rel=0.05)
    assert nll(z, y, t) < nll(z, y, 1.0) and nll(z, y, t) <= min(nll(z, y, t * 1.05), nll(z, y, t / 1.05))


def test_ece_is_zero_when_confidence_equals_accuracy_and_the_gap_otherwise():
    probs = torch.tensor([[0.9, 0.1]] * 10)
    right = torch.tensor([0] * 9 + [1])  # 90% right at confidence 0.9
    assert expected_calibration_error(probs, right) == pytest.approx(0.0, abs=1e-6)
    assert expected_calibration_error(probs, torch.zeros(10, dtype=torch.long)) == pytest.approx(0.1, abs=1e-6)


def test_temperature_scaling_removes_most_of_the_calibration_error():
    z, y = _sampled(scale=0.2)
    before = expected_calibration_error(probabilities(z), y)
    after = expected_calibration_error(probabilities(z, fit_temperature(z, y)), y)
    assert before > 0.2 and after < 0.03


def test_threshold_is_the_lowest_that_keeps_the_precision():
    conf = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    probs = torch.stack([conf, 1 - conf], 1)
    labels = torch.tensor([0, 0, 0, 1, 0, 1])  # wrong at 0.8 and 0.6
    c = choose_threshold(probs, labels, precision=0.75)
    assert (c.threshold, c.coverage, c.reached) == (pytest.approx(0.7), 5 / 6, True)  # 4 of 5 right at 0.7
    c = choose_threshold(probs, labels, precision=1.0)
    assert c.threshold == pytest.approx(0.9) and c.precision == 1.0
    none_right = choose_threshold(probs, torch.ones(6, dtype=torch.long), precision=0.99)
    assert not none_right.reached


def test_ood_threshold_rejects_every_background_frame_while_keeping_validation():
    val = torch.tensor([[5.0, 0.0], [4.0, 1.0], [6.0, 0.0]] * 10)
    bg = torch.tensor([[1.0, 0.5], [2.0, 1.9]])
    score, threshold, figures = choose_ood(val, bg)
    assert score in ("max_logit", "energy")
    assert bool((ood_score(bg, score) < threshold).all())
    assert figures == {"background_rejected": 1.0, "val_coverage": 1.0}
    assert choose_ood(val, torch.empty(0, 2)) == (None, None, {})


def test_one_outlying_background_frame_does_not_set_the_ood_threshold():
    val = torch.tensor([[5.0, 0.0]] * 30 + [[3.0, 0.0]] * 30)
    bg = torch.cat([torch.tensor([[1.0, 0.0]] * 99), torch.tensor([[4.0, 0.0]])])  # one frame scores like a digit
    score, threshold, figures = choose_ood(val, bg)
    assert bool((ood_score(val, score) >= threshold).all())  # every validation image kept, not only the top half
    assert figures == {"background_rejected": pytest.approx(0.99), "val_coverage": 1.0}


def test_background_images_are_deterministic_and_hold_black_and_white():
    a, b = background_images(21, 16), background_images(21, 16)
    assert len(a) == 21 and all(x.shape == (16, 16, 3) and x.dtype == np.uint8 for x in a)
    assert all((x == y).all() for x, y in zip(a, b))
    means = {int(x.mean()) for x in a if x.std() == 0}
    assert 0 in means and 255 in means


def test_calibration_round_trips_through_its_dict_and_old_models_get_the_old_rule():
    z, y = _sampled(n=500, scale=0.3)
    cal = calibrate(z, y, background_logits=torch.zeros(4, 10))
    d = json.loads(json.dumps(cal.to_dict()))
    assert set(d) >= {"temperature", "threshold", "ood", "ece_val_before", "ece_val_after"}
    assert set(d["ood"]) == {"score", "threshold"}
    again = Calibration.from_dict(d)
    assert (again.temperature, again.threshold, again.ood_score, again.ood_threshold) == (
        cal.temperature, cal.threshold, cal.ood_score, cal.ood_threshold)
    old = Calibration.from_dict(None)
    assert (old.temperature, old.threshold, old.ood_score) == (1.0, DEFAULT_THRESHOLD, None)
    assert bool(old.known(torch.zeros(3, 10)).all())


def test_a_model_with_non_finite_logits_gets_one_clear_error():
    from sabr.errors import TrainingError

    z, y = _sampled(n=20)
    z[3, 1] = float("nan")
    with pytest.raises(TrainingError, match="NaN or infinite logits"):
        calibrate(z, y)


def test_calibrate_model_works_on_any_model_and_loader():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.randn(64, 1, 3, 4), torch.randint(0, 3, (64,))
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    z, labels = collect_logits(model, loader)
    assert z.shape == (64, 3) and torch.equal(labels, y)
    cal = calibrate_model(model, loader, transform=lambda img: torch.zeros(1, 3, 4) + float(img.mean()) / 255,
                          background=background_images(14, 8))
    assert math.isfinite(cal.temperature) and cal.temperature > 0 and 0 < cal.threshold <= 1
    assert cal.ood_score is not None and 0 <= cal.extra["ood_background_rejected"] <= 1  # a random model: no promise


def test_a_run_stores_its_pruned_models_rule_in_the_metadata_and_the_summary(runs):
    _, meta = load_run(runs["done"], "pruned")
    cal = meta["calibration"]
    assert isinstance(cal["temperature"], float) and isinstance(cal["threshold"], float)
    assert cal["ood"]["score"] in ("max_logit", "energy", None)
    summary = json.loads((runs["done"] / "summary.json").read_text())["calibration"]
    assert {"temperature", "threshold", "ece_val_before", "ece_val_after", "ece_test_after"} <= set(summary)
    assert summary["temperature"] == cal["temperature"] and summary["threshold"] == cal["threshold"]
    assert "Calibration of the pruned model" in (runs["done"] / "summary.md").read_text()
    for phase in ("base", "sabr"):  # each phase gets its own rule, fitted on validation
        assert isinstance(load_run(runs["done"], phase)[1]["calibration"]["temperature"], float)
