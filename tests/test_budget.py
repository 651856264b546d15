"""The accuracy budget (sabr.budget) and the pieces it relies on: choice, tracker, BatchNorm recalibration,
the reference preset, validation-only search, resume inside the search."""

import copy
import json
import random
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from sabr import SABR, RunConfig, prune, sparsity_report
from sabr import pipeline, prune_phase
from sabr.budget import (MIN_GAIN, PLATEAU_EPOCHS, BudgetTracker, Trial, budget_floor, choose,
                         search_prune_factor, val_plateau)
from sabr.pruning import prunable_sparsity, recalibrate_batchnorm


def test_the_budget_is_measured_from_the_base_plateau_not_its_best_epoch():
    climb = [0.5, 0.7, 0.8, 0.9]
    plateau = [0.97, 0.98, 0.975, 0.99, 0.97, 0.98, 0.985, 0.975, 0.98, 0.97]  # the last ten epochs
    assert PLATEAU_EPOCHS == len(plateau)
    assert val_plateau(climb + plateau, best=0.99) == pytest.approx(0.9775)  # their median: the climb is ignored
    assert budget_floor(val_plateau(climb + plateau, best=0.99), 0.01) == pytest.approx(0.9675)
    assert val_plateau(climb, best=0.9) == 0.9  # too few epochs for a plateau: the best epoch's figure
    assert val_plateau([1.0] * 10, best=0.99) == 0.99  # never above the kept model's own figure
    assert val_plateau(plateau, best=0.99) == val_plateau([0.2] * 5 + plateau, best=0.99)


def test_choose_keeps_one_step_from_the_first_factor_that_breaks_the_budget():
    trials = [Trial(0.1, 0.50, 0.99), Trial(0.2, 0.70, 0.985), Trial(0.5, 0.90, 0.97), Trial(1.0, 0.95, 0.90)]
    assert choose(trials, floor=0.96) == (trials[1], True)  # 1.0 breaks it: 0.5 is on the edge, 0.2 is kept
    assert choose(list(reversed(trials)), floor=0.96) == (trials[1], True)  # the list's order does not matter
    assert choose(trials, floor=0.975) == (trials[0], True)
    assert choose(trials, floor=0.988) == (trials[0], True)  # only the weakest fits: no margin to keep
    assert choose(trials, floor=0.5) == (trials[3], True)  # every factor fits: the strongest
    # nothing fits: the least-pruned trial, flagged
    assert choose(trials, floor=0.995) == (trials[0], False)
    # a factor that fits again after one that broke the budget is noise at the edge: not admitted
    spiky = [Trial(0.3, 0.9863, 0.9877), Trial(0.4, 0.9877, 0.9877), Trial(0.5, 0.9889, 0.9846),
             Trial(0.65, 0.9906, 0.9907)]
    assert choose(spiky, floor=0.9869) == (spiky[0], True)


def test_a_tighter_budget_never_chooses_a_sparser_model():
    rng = random.Random(0)
    for _ in range(200):
        sparsities = sorted(rng.random() for _ in range(5))  # a stronger factor never prunes less
        trials = [Trial(f, s, rng.random()) for f, s in zip((0.1, 0.2, 0.3, 0.5, 1.0), sparsities)]
        base = rng.random()
        loose, _ = choose(trials, base - 0.05)
        tight, fits = choose(trials, base - 0.01)
        if fits:
            assert tight.sparsity <= loose.sparsity


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def test_tracker_keeps_the_sparsest_epoch_within_the_budget_and_runs_out_of_patience():
    model = _model()
    tracker = BudgetTracker(floor=0.9, patience=2)
    assert tracker.update(model, 1, 0.95) == pytest.approx(prunable_sparsity(model))
    first = copy.deepcopy(tracker.best_model)
    with torch.no_grad():  # epoch 2: sparser, but below the floor -> not kept
        model[0].weight[:, :10] = 0
    tracker.update(model, 2, 0.85)
    assert tracker.best_epoch == 1 and tracker.since_gain == 1 and not tracker.exhausted
    tracker.update(model, 3, 0.91)  # the same weights within the budget: a gain over epoch 1
    assert tracker.best_epoch == 3 and tracker.since_gain == 0
    tracker.update(model, 4, 0.99)  # no new zeros: no gain (less than MIN_GAIN fewer weights)
    tracker.update(model, 5, 0.99)
    assert tracker.exhausted and tracker.best_epoch == 3
    epoch, weights, within = tracker.kept()
    assert (epoch, within) == (3, True)
    assert not torch.equal(weights["0.weight"], first["0.weight"])
    again = BudgetTracker(floor=0.9, patience=2)
    again.load_state_dict(tracker.state_dict())
    assert again.kept()[0] == 3 and again.exhausted


def test_tracker_falls_back_to_the_best_validation_epoch_when_nothing_fits():
    model = _model()
    tracker = BudgetTracker(floor=0.99, patience=2)
    tracker.update(model, 1, 0.80)
    tracker.update(model, 2, 0.85)
    tracker.update(model, 3, 0.82)
    epoch, weights, within = tracker.kept()
    assert (epoch, within) == (2, False) and weights is not None
    assert not tracker.exhausted  # patience counts from the first epoch within the budget: none yet


def test_tracker_patience_starts_at_the_first_epoch_within_the_budget():
    model = _model()
    tracker = BudgetTracker(floor=0.9, patience=2)
    for epoch in range(1, 6):  # five epochs below the floor: the phase goes on
        tracker.update(model, epoch, 0.85)
    assert not tracker.exhausted and tracker.since_gain == 0
    tracker.update(model, 6, 0.95)  # the first fit
    assert tracker.kept()[0] == 6 and not tracker.exhausted
    tracker.update(model, 7, 0.85)
    tracker.update(model, 8, 0.95)  # no gain
    assert tracker.exhausted and tracker.kept()[0] == 6
    assert MIN_GAIN == 0.01


def test_prunable_sparsity_is_what_prune_then_gives():
    model = _model()
    expected = prunable_sparsity(model, 0.5, 0.1)
    prune(model, teta1=0.5, gamma=0.1)
    assert sparsity_report(model).sparsity == pytest.approx(expected)


def test_batchnorm_recalibration_re_estimates_statistics_without_touching_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    model.eval()
    weights = copy.deepcopy(model.state_dict())
    xs = [torch.randn(8, 1, 6, 6) * 3 + 1 for _ in range(3)]
    assert recalibrate_batchnorm(model, xs) == 1
    feats = torch.cat([model[0](x) for x in xs])  # cumulative average = statistics of all the batches
    bn = model[1]
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    per_batch_var = torch.stack([model[0](x).var((0, 2, 3), unbiased=True) for x in xs]).mean(0)
    assert torch.allclose(bn.running_var, per_batch_var, atol=1e-4)
    assert not model.training and not model[3].training and bn.momentum == 0.1
    for k in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(model.state_dict()[k], weights[k])


def test_search_keeps_the_model_and_passes_every_copy_to_validate():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    seen = []

    def validate(m):
        seen.append(sparsity_report(m).sparsity)
        return 1.0 - seen[-1]  # accuracy falls as sparsity grows

    chosen, fits, trials = search_prune_factor(model, validate, floor=0.5, factors=[0.1, 0.5, 1.0, 2.0])
    assert [t.factor for t in trials] == [0.1, 0.5, 1.0, 2.0] and seen == pytest.approx([t.sparsity for t in trials])
    assert fits and chosen == choose(trials, 0.5)[0]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # a resumed search only tries the factors it had not tried
    seen.clear()
    again = search_prune_factor(model, validate, floor=0.5, factors=[0.1, 0.5, 1.0, 2.0], done=trials[:2])
    assert len(seen) == 2 and again[0] == chosen


def test_reference_preset_is_the_seeds_pipeline_and_flags_still_win():
    ref = RunConfig.from_dict({"preset": "reference"})
    assert (ref.teta1, ref.accuracy_threshold, ref.growth_rate, ref.decrease_rate, ref.k_epoch) == (
        5e-4, 0.007, 1.15, 1.2, 2)
    assert (ref.prune_teta1, ref.gamma, ref.max_drop, ref.scale_teta1, ref.bn_recalibrate, ref.epochs_sabr) == (
        0.2, 0.1, None, False, False, 40)
    assert RunConfig.from_dict({"preset": "reference", "teta1": 1e-3}).teta1 == 1e-3
    default = RunConfig()
    assert (default.max_drop, default.accuracy_threshold, default.prune_teta1, default.scale_teta1) == (
        0.01, "auto", None, True)
    # the fast start is a default; the reference preset keeps the seed's x1.15 from the first epoch
    assert default.fast_start == 2.0 and ref.fast_start is None
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    reg = SABR(model, **asdict(ref.sabr_settings()))
    start = reg.lambdas["weight"]
    reg.step(0.9), reg.step(0.9)
    assert reg.lambdas["weight"] == pytest.approx(start * 1.15 ** 2)


TINY = dict(max_per_class=12, epochs_base=2, epochs_sabr=3, patience=2, sweep=[0.1, 0.3, 1.0], device="cpu",
            batch_size=32)


def test_budget_search_reads_validation_only(tmp_path, monkeypatch):
    calls = {"searching": False, "test_during_search": 0, "val_during_search": 0}
    real_eval, real_search = prune_phase.evaluate_split, prune_phase.search_prune_factor

    def spy_eval(exp, model, split):
        if calls["searching"]:
            calls["test_during_search" if split is exp.test else "val_during_search"] += 1
            assert split is exp.val
        return real_eval(exp, model, split)

    def spy_search(*args, **kwargs):
        calls["searching"] = True
        try:
            return real_search(*args, **kwargs)
        finally:
            calls["searching"] = False

    monkeypatch.setattr(prune_phase, "evaluate_split", spy_eval)
    monkeypatch.setattr(prune_phase, "search_prune_factor", spy_search)
    summary = pipeline.run(RunConfig(**TINY, out=str(tmp_path / "run")), progress=False)
    assert calls["test_during_search"] == 0 and calls["val_during_search"] == 2 * len(TINY["sweep"])
    b = summary["budget"]
    assert set(b) >= {"max_drop", "prune_teta1", "val_drop", "test_drop", "sabr_epoch"}
    assert b["prune_teta1"] in TINY["sweep"] and summary["base_pruned"]["prune_teta1"] in TINY["sweep"]


@pytest.mark.slow
def test_a_run_killed_inside_the_budget_search_resumes_to_the_same_result(tmp_path, monkeypatch):
    whole = pipeline.run(RunConfig(**TINY, out=str(tmp_path / "whole")), progress=False)
    real_save, saves = pipeline.RunDir.save_resume, []

    def dying_save(self, state):
        real_save(self, state)
        if state.phase == "budget":
            saves.append(len(state.trials.get("base", [])))
            if len(saves) == 4:  # every SABR trial and one of the base model's are saved
                raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.RunDir, "save_resume", dying_save)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(RunConfig(**TINY, out=str(tmp_path / "killed")), progress=False)
    monkeypatch.setattr(pipeline.RunDir, "save_resume", real_save)
    resumed = pipeline.resume(tmp_path / "killed", progress=False)
    for key in ("base", "sabr", "pruned", "budget", "base_pruned", "curve", "layers"):
        assert json.dumps(resumed[key], sort_keys=True) == json.dumps(whole[key], sort_keys=True), key


@pytest.mark.slow
@pytest.mark.parametrize("fits_before", [True, False])
def test_a_run_with_a_fine_tune_judges_the_budget_after_it(tmp_path, monkeypatch, fits_before):
    real_search = prune_phase.search_prune_factor

    def weakest(*args, **kwargs):  # the search keeps the weakest factor, as a budget broken above it would
        _, fits, trials = real_search(*args, **kwargs)  # (or, not fits_before, as a budget broken at every factor)
        chosen = min(trials, key=lambda t: t.factor)
        return (chosen, True, trials) if fits_before else (replace(chosen, val_accuracy=-2.0), False, trials)

    monkeypatch.setattr(prune_phase, "search_prune_factor", weakest)
    out = tmp_path / "run"
    s = pipeline.run(RunConfig(**{**TINY, "max_drop": 1.0}, finetune_epochs=2, out=str(out)), progress=False)
    p, b = s["pruned"], s["budget"]
    assert p["prune_teta1_before_finetune"] == 0.1 and p["within_budget_before_finetune"] is fits_before
    # every epoch fits: epoch 1 trains at 0.1, epoch 2 at 0.3, which is kept (1.0 would need a third epoch)
    assert (b["prune_teta1"], b["within_budget"]) == (0.3, True)
    history = (out / "history_finetune.csv").read_text().splitlines()
    assert history[0].split(",")[-1] == "prune_teta1" and [r.split(",")[-1] for r in history[1:]] == ["0.1", "0.3"]
    assert p["nonzero"] == sum(l["nonzero"] for l in s["layers"])  # the layers table is the kept model's
    assert p["sparsity"] > s["curve"][0]["sparsity"]


@pytest.mark.slow
def test_a_fixed_pruning_factor_is_not_grown_by_the_fine_tune(tmp_path):
    s = pipeline.run(RunConfig(**{**TINY, "max_drop": 1.0}, prune_teta1=0.1, finetune_epochs=1,
                               out=str(tmp_path / "run")), progress=False)
    assert s["budget"]["prune_teta1"] == 0.1 and "prune_teta1_before_finetune" not in s["pruned"]
    assert "prune_teta1" not in (tmp_path / "run" / "history_finetune.csv").read_text().splitlines()[0]
