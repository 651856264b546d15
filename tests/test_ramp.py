"""sabr.ramp: the growing and the shrinking ramp judge the budget after each fine-tune epoch, answer with a
RampAction and move the model themselves; finetune_masked carries them out."""

import copy

import torch
from torch import nn

from sabr import RunConfig, prune, sparsity_report
from sabr.ramp import GrowingRamp, RampAction, ShrinkingRamp

GROW, SHRINK, REVERT, HOLD = RampAction.GROW, RampAction.SHRINK, RampAction.REVERT, RampAction.HOLD


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def test_ramp_grows_within_the_budget_and_returns_to_the_kept_model_below_it():
    model = _model()
    ramp = GrowingRamp.start(model, floor=0.9, factors=[0.3, 0.1, 0.2, 0.5], kept_accuracy=0.92)
    assert ramp.factors == [0.1, 0.2, 0.3, 0.5] and ramp.factor == 0.1
    # epoch 1 at 0.1 fits but is not better than the start: the start stays kept, the factor grows anyway
    assert ramp.update(model, 1, 0.91) == GROW and (ramp.factor, ramp.kept_factor, ramp.kept_epoch) == (0.2, 0.1, 0)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # epoch 2 trains the model pruned at 0.2: sparser, so kept
    assert ramp.update(model, 2, 0.905) == GROW and (ramp.factor, ramp.kept_factor, ramp.kept_epoch) == (0.3, 0.2, 2)
    kept = copy.deepcopy(ramp.kept_model)
    assert ramp.update(model, 3, 0.89) == REVERT  # epoch 3 at 0.3 breaks the budget: back to epoch 2's model
    assert (ramp.factor, ramp.kept_factor) == (0.2, 0.2)
    assert all(torch.equal(kept[k], v) for k, v in ramp.kept_model.items())
    assert ramp.update(model, 4, 0.85) == HOLD  # below the floor at the kept factor: train on
    assert ramp.update(model, 5, 0.95) == GROW and (ramp.kept_epoch, ramp.kept_accuracy) == (5, 0.95)  # better
    assert ramp.update(model, 6, 0.93) == GROW and (ramp.factor, ramp.kept_factor) == (0.5, 0.3)  # grows again
    assert ramp.update(model, 7, 0.92) == HOLD and (ramp.kept_factor, ramp.kept_epoch) == (0.5, 7)  # the grid ends


def test_ramp_with_patience_gives_a_grown_step_that_many_epochs_below_the_floor():
    model = _model()
    ramp = GrowingRamp.start(model, floor=0.9, factors=[0.1, 0.2, 0.3], kept_accuracy=0.92, patience=2)
    assert ramp.update(model, 1, 0.91) == GROW and ramp.factor == 0.2
    assert ramp.update(model, 2, 0.85) == HOLD and (ramp.factor, ramp.misses) == (0.2, 1)  # one more epoch
    assert ramp.update(model, 3, 0.93) == GROW and (ramp.kept_factor, ramp.factor, ramp.misses) == (0.2, 0.3, 0)
    assert ramp.update(model, 4, 0.85) == HOLD and ramp.update(model, 5, 0.86) == REVERT  # two in a row
    assert (ramp.factor, ramp.kept_factor, ramp.misses) == (0.2, 0.2, 0)
    assert ramp.update(model, 6, 0.5) == HOLD and ramp.misses == 0  # at the kept step: no count


def test_ramp_below_the_floor_at_the_start_trains_on():
    model = _model()
    ramp = GrowingRamp.start(model, floor=0.9, factors=[0.1, 0.2], kept_accuracy=0.92)
    assert ramp.update(model, 1, 0.5) == HOLD and (ramp.kept_epoch, ramp.factor) == (0, 0.1)
    assert ramp.update(model, 2, 0.95) == GROW and ramp.kept_epoch == 2


def test_ramp_from_below_the_floor_keeps_the_best_epoch_until_one_fits_then_grows():
    model = _model()
    ramp = GrowingRamp.start(model, floor=0.9, factors=[0.1, 0.2], kept_accuracy=0.85)  # no factor fitted
    assert not ramp.fits
    assert ramp.update(model, 1, 0.80) == HOLD and (ramp.kept_epoch, ramp.fits) == (0, False)  # worse: start kept
    assert ramp.update(model, 2, 0.88) == HOLD and (ramp.kept_epoch, ramp.kept_accuracy) == (2, 0.88)  # best yet
    assert ramp.update(model, 3, 0.86) == HOLD and ramp.kept_epoch == 2
    assert ramp.update(model, 4, 0.90) == GROW and (ramp.kept_epoch, ramp.fits, ramp.factor) == (4, True, 0.2)
    assert ramp.update(model, 5, 0.85) == REVERT and (ramp.kept_epoch, ramp.fits, ramp.factor) == (4, True, 0.1)
    assert ramp.update(model, 6, 0.87) == HOLD and ramp.kept_epoch == 4  # once within, a worse epoch is not kept


def test_finetune_with_a_ramp_prunes_one_factor_further_per_epoch_within_the_budget():
    from sabr.pipeline import finetune_masked, prepare

    exp = prepare(RunConfig(max_per_class=20, epochs_base=1, device="cpu"), progress=False)
    model = exp.new_model()
    factors = [0.2, 0.5, 1.0]
    prune(model, teta1=factors[0])
    grown = []

    def grow(m, factor):
        grown.append(factor)
        return prune(m, teta1=factor)

    ramp = GrowingRamp.start(model, float("-inf"), factors, kept_accuracy=0.0, prune=grow, layers=["start"])  # all fit
    tuned, rows = finetune_masked(exp, copy.deepcopy(model), 3, ramp=ramp)
    assert grown == [0.5, 1.0] and [r["prune_teta1"] for r in rows] == [0.2, 0.5, 1.0]
    assert ramp.kept_epoch == 3 and sparsity_report(tuned).sparsity > sparsity_report(model).sparsity
    assert sorted(ramp.layers) == factors and ramp.kept_layers is ramp.layers[1.0]  # each step's figures kept
    # the start fits and no epoch does: the factor never grows, and the run ends with the starting model unchanged
    ramp = GrowingRamp.start(model, 2.0, factors, kept_accuracy=2.0, prune=grow, layers=["start"])
    tuned, rows = finetune_masked(exp, copy.deepcopy(model), 2, ramp=ramp)
    assert ramp.kept_layers == ["start"]
    assert grown == [0.5, 1.0] and [r["prune_teta1"] for r in rows] == [0.2, 0.2]
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), model.state_dict().values()))
    # the second factor breaks the budget: back to epoch 1's model and its zero pattern, then grown again
    class SecondEpochBreaks(GrowingRamp):
        def update(self, model, epoch, val_accuracy):
            self.floor = 2.0 if epoch == 2 else 0.0
            return super().update(model, epoch, val_accuracy)

    ramp = SecondEpochBreaks.start(model, 0.0, factors, kept_accuracy=0.0, prune=grow)
    tuned, rows = finetune_masked(exp, copy.deepcopy(model), 4, ramp=ramp)
    assert [r["prune_teta1"] for r in rows] == [0.2, 0.5, 0.2, 0.5] and ramp.kept_epoch == 4


def test_ramp_downwards_starts_at_the_top_steps_down_only_when_not_recovering_and_settles():
    model = _model()
    ramp = ShrinkingRamp.start(model, floor=0.9, factors=[0.5, 0.0, 0.25], kept_accuracy=0.92, patience=2)
    assert (ramp.factor, ramp.kept_factor, ramp.fits) == (0.5, 0.0, True)  # the starting model is the fallback
    assert ramp.update(model, 1, 0.60) == HOLD  # below the floor, but the step's first epoch
    assert ramp.update(model, 2, 0.70) == HOLD and ramp.misses == 0  # climbing: recovering from the cut
    assert ramp.update(model, 3, 0.65) == HOLD and ramp.misses == 1
    assert ramp.update(model, 4, 0.70) == SHRINK  # a second epoch in a row below the floor and no new best
    assert (ramp.factor, ramp.kept_factor, ramp.misses) == (0.25, 0.0, 0)
    assert ramp.update(model, 5, 0.50) == HOLD  # the new step's first epoch
    assert ramp.update(model, 6, 0.91) == HOLD and ramp.settled and (ramp.kept_factor, ramp.kept_epoch) == (0.25, 6)
    assert [ramp.update(model, e, 0.5) for e in (7, 8, 9)] == [HOLD] * 3 and ramp.factor == 0.25  # settled
    assert ramp.update(model, 10, 0.95) == HOLD and ramp.kept_epoch == 10  # the settled step's best epoch
    assert ramp.update(model, 11, 0.93) == HOLD and (ramp.kept_epoch, ramp.kept_accuracy) == (10, 0.95)


def test_ramp_downwards_that_never_fits_ends_at_the_bottom_with_the_most_accurate_epoch():
    model = _model()
    ramp = ShrinkingRamp.start(model, floor=0.9, factors=[0.0, 0.25], kept_accuracy=0.80, patience=1)
    assert not ramp.fits and ramp.factor == 0.25
    assert ramp.update(model, 1, 0.85) == HOLD and (ramp.kept_factor, ramp.kept_epoch) == (0.25, 1)  # best yet
    assert ramp.update(model, 2, 0.84) == SHRINK and ramp.factor == 0.0
    assert ramp.update(model, 3, 0.83) == HOLD and ramp.update(model, 4, 0.82) == HOLD  # nowhere further down
    assert (ramp.kept_factor, ramp.kept_epoch, ramp.fits) == (0.25, 1, False)
    assert ramp.update(model, 5, 0.90) == HOLD and (ramp.kept_factor, ramp.kept_epoch, ramp.fits) == (0.0, 5, True)


def test_finetune_with_a_downward_ramp_gives_channels_back_and_trains_them():
    from sabr.channels import channel_groups, channel_rms
    from sabr.pipeline import finetune_masked, prepare
    from sabr.pruning import prune_channel_share

    exp = prepare(RunConfig(max_per_class=20, epochs_base=1, device="cpu"), progress=False)
    start = exp.new_model()
    groups = channel_groups(start, exp.example_input())
    model = copy.deepcopy(start)
    alive = lambda m: [int((channel_rms(dict(m.named_parameters()), g) > 0).sum()) for g in groups]  # noqa: E731
    accuracies = {1: 0.0, 2: 0.0, 3: 1.0}  # epoch 2 does not recover: one step down; epoch 3 is within the floor

    class Scripted(ShrinkingRamp):
        def update(self, model, epoch, val_accuracy):
            return super().update(model, epoch, accuracies[epoch])

    ramp = Scripted.start(model, 0.5, [0.0, 0.25, 0.5], kept_accuracy=0.0, groups=groups)  # cuts model to 0.5
    at_top = alive(model)
    top = copy.deepcopy(start)
    prune_channel_share(top, groups, 0.5)
    assert at_top == alive(top) and sorted(ramp.layers) == [0.0, 0.5]
    tuned, rows = finetune_masked(exp, model, 3, ramp=ramp)
    assert sorted(ramp.layers) == [0.0, 0.25, 0.5]  # the one step down was taken and its figures kept
    assert [r["channel_share"] for r in rows] == [0.5, 0.5, 0.25] and ramp.kept_epoch == 3
    lower = copy.deepcopy(start)
    prune_channel_share(lower, groups, 0.25)
    assert alive(tuned) == alive(lower) != at_top  # the channels given back stayed: the masks were taken again
