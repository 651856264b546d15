"""sabr.baselines: the peers SABR is compared with must do what their papers say."""

import copy
import dataclasses

import pytest
import torch
from torch import nn

from sabr import SABR, ConfigError, RunConfig, SabrSettings, sparsity_report
from sabr.baselines import (GMPSchedule, accuracy_at, fixed_l1_settings, global_magnitude_prune, gmp_sparsity,
                            layer_magnitude_prune, magnitude_curve, magnitude_prune, oneshot_finetune,
                            ramp_l1_settings, sparsity_within, threshold_prune_to, train_fixed_l1, train_gmp)
from sabr.pruning import prune_threshold
from sabr.pipeline import prepare


@pytest.fixture(scope="module")
def exp():
    return prepare(RunConfig(max_per_class=30, epochs_base=1, teta1=0.1, device="cpu"), progress=False)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def _weights(model: nn.Sequential) -> torch.Tensor:
    return torch.cat([model[0].weight.detach().flatten(), model[2].weight.detach().flatten()])


def test_global_magnitude_prune_zeros_the_smallest_weights_globally():
    model = _mlp()
    before = _weights(model).abs()
    global_magnitude_prune(model, 0.8)
    assert sparsity_report(model).nonzero == round(0.2 * before.numel())
    kept = _weights(model).abs()
    # every weight kept is at least as large as every weight removed, across both layers
    assert kept[kept > 0].min() >= before[kept == 0].max()
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # prune.remove made it permanent


def test_global_magnitude_prune_counts_weights_already_zero():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[:10] = 0.0  # 200 of 750 weights
    zero_before = _weights(model) == 0
    global_magnitude_prune(model, 0.5)
    after = _weights(model)
    assert int((after == 0).sum()) == round(0.5 * after.numel())  # 375 zeros in all, not 200 + 375
    assert bool((after[zero_before] == 0).all())


def test_global_magnitude_prune_of_nothing_leaves_the_model_alone():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    global_magnitude_prune(model, 0.0001)  # rounds to zero weights
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name


def test_layer_magnitude_prune_prunes_every_tensor_to_the_same_sparsity():
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(100)  # a global threshold would leave this layer whole and empty the other
    layer_magnitude_prune(model, 0.8)
    for layer in (model[0], model[2]):
        w = layer.weight.detach()
        assert int((w != 0).sum()) == round(0.2 * w.numel())


def test_magnitude_prune_only_touches_the_tensors_named():
    model = _mlp()
    second = model[2].weight.detach().clone()
    layer_magnitude_prune(model, 0.5, params=["0.weight"])
    assert int((model[0].weight == 0).sum()) == 300
    assert torch.equal(model[2].weight.detach(), second)


def test_gmp_sparsity_follows_the_cubic_schedule():
    assert gmp_sparsity(0, 100, 0.8) == 0.0
    assert gmp_sparsity(50, 100, 0.8) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # 0.7: most of it early
    assert gmp_sparsity(90, 100, 0.8) == pytest.approx(0.8 * (1 - 0.1 ** 3))
    assert gmp_sparsity(100, 100, 0.8) == pytest.approx(0.8)
    assert gmp_sparsity(250, 100, 0.8) == pytest.approx(0.8)  # held after the ramp


def test_gmp_schedule_masks_only_grow_and_hold_after_the_ramp():
    model = _mlp()
    schedule = GMPSchedule(model, target=0.9, ramp=20, every=5)
    zeros = torch.zeros(750, dtype=torch.bool)
    for step in range(1, 31):
        with torch.no_grad():  # an optimizer step moves every weight, zeros included
            for p in model.parameters():
                p.add_(0.01)
        schedule()
        now = _weights(model) == 0
        assert bool(now[zeros].all()), f"a pruned weight came back at step {step}"
        if step % 5 == 0 and step <= 20:
            for layer in (model[0], model[2]):
                w = layer.weight.detach()
                expected = round(gmp_sparsity(step, 20, 0.9) * w.numel())
                assert int((w == 0).sum()) == pytest.approx(expected, abs=1), step
        zeros = now
    assert schedule.done and schedule.step == 30
    assert int(zeros.sum()) == round(0.9 * 600) + round(0.9 * 150)


def test_train_gmp_reaches_its_target_and_keeps_it(exp):
    base = exp.new_model()
    model, rows = train_gmp(exp, copy.deepcopy(base), epochs=2, target=0.7)
    assert sparsity_report(model).sparsity == pytest.approx(0.7, abs=2e-3)  # layer-wise: every tensor at 70%
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["target_sparsity"] == pytest.approx(0.7)
    assert "val_accuracy" in rows[0] and rows[0]["lr"] == rows[1]["lr"]  # validated every epoch, one schedule
    assert sparsity_report(base).sparsity < 0.01  # the starting model given as a copy is untouched


def test_oneshot_finetune_keeps_the_pruned_zeros(exp):
    model, rows = oneshot_finetune(exp, exp.new_model(), epochs=1, sparsity=0.6)
    assert len(rows) == 1
    assert sparsity_report(model).sparsity >= 0.6 - 1e-3


def test_fixed_l1_never_changes_lambdas_nor_freezes(exp):
    fixed = fixed_l1_settings(exp.config.sabr_settings())
    assert fixed.growth_rate == fixed.decrease_rate == 1.0 and fixed.teta1 == exp.config.teta1
    base = exp.new_model()
    initial = SABR(copy.deepcopy(base), teta1=exp.config.teta1).lambdas
    model, reg, rows = train_fixed_l1(exp, base, epochs=3)
    assert len(rows) == 3
    assert reg.lambdas == pytest.approx(initial)
    assert not reg.frozen
    assert all(p.requires_grad for p in model.parameters())
    assert reg.teta1 == exp.config.teta1


def test_magnitude_curve_starts_above_the_model_and_leaves_it_alone(exp):
    model = exp.new_model()
    before = copy.deepcopy(model.state_dict())
    curve = magnitude_curve(exp, model, [0.3, 0.5, 0.9], start=0.5)
    assert len(curve) == 1 and curve[0][0] == pytest.approx(0.9, abs=1e-3)
    assert 0.0 <= curve[0][1] <= 1.0
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name


def test_curve_helpers():
    curve = [[0.5, 0.90], [0.8, 0.88], [0.9, 0.80]]
    assert accuracy_at(curve, 0.85) == pytest.approx(0.84)
    assert accuracy_at(curve, 0.95) is None
    assert accuracy_at([[0.7, 0.5]], 0.7002) == 0.5  # a lone point counts within 0.0005
    assert sparsity_within(curve, base_accuracy=0.89) == 0.8
    assert sparsity_within(curve, base_accuracy=0.99) is None


def test_threshold_prune_to_reaches_the_target_with_one_factor_for_every_tensor():
    model = _mlp()
    with torch.no_grad():
        model[2].weight.mul_(100)  # scale-free: each tensor's threshold follows its own std
    before = [m.weight.detach().clone() for m in (model[0], model[2])]
    factor = threshold_prune_to(model, 0.8, gamma=0.1)
    assert 0.8 <= sparsity_report(model).sparsity <= 0.802
    for w0, m in zip(before, (model[0], model[2])):
        cut = prune_threshold(w0, factor, 0.1)
        assert torch.equal(m.weight.detach() == 0, w0.abs() < cut)
        assert 0.6 < float((m.weight == 0).float().mean()) < 0.95  # no tensor emptied, none left whole


def test_magnitude_prune_dispatches_and_refuses_an_unknown_allocation():
    a, b = _mlp(), _mlp()
    magnitude_prune(a, 0.7, "layer")
    layer_magnitude_prune(b, 0.7)
    assert torch.equal(a[0].weight, b[0].weight)
    with pytest.raises(ConfigError, match="allocation must be one of global, layer, threshold"):
        magnitude_prune(a, 0.7, "uniform")


def test_gmp_schedule_with_global_allocation_prunes_the_small_layer_first():
    model = _mlp()
    with torch.no_grad():
        model[2].weight.abs_().add_(1.0)  # every weight larger than any of the first layer's
    schedule = GMPSchedule(model, target=0.6, ramp=10, every=5, allocation="global")
    for _ in range(12):
        schedule()
    assert schedule.done and sparsity_report(model).sparsity == pytest.approx(0.6, abs=2e-3)
    assert int((model[2].weight == 0).sum()) == 0  # the large layer keeps every weight
    assert int((model[0].weight == 0).sum()) == round(0.6 * 750)  # 450 of its 600


def test_ramp_l1_grows_every_epoch_whatever_the_accuracy_and_never_freezes():
    settings = ramp_l1_settings(SabrSettings(teta1=0.1, growth_rate=1.2, decrease_rate=2.0, k_epoch=1))
    model = _mlp()
    reg = SABR(model, **dataclasses.asdict(settings))
    start = dict(reg.lambdas)
    for acc in (0.9, 0.1, 0.0, 0.5):  # collapses that would make SABR shrink and freeze
        assert reg.step(acc).action == "grow"
    assert reg.lambdas == pytest.approx({n: v * 1.2 ** 4 for n, v in start.items()})
    assert not reg.frozen


def test_train_fixed_l1_ramp_with_its_own_teta1_and_lr(exp):
    model, reg, rows = train_fixed_l1(exp, exp.new_model(), epochs=2, ramp=True, teta1=0.3, lr=5e-4)
    assert reg.teta1 == 0.3 and [r["action"] for r in rows] == ["grow", "grow"]
    assert rows[0]["lr"] == 5e-4


def test_oneshot_finetune_layer_allocation_prunes_every_tensor_alike(exp):
    model, _ = oneshot_finetune(exp, exp.new_model(), epochs=1, sparsity=0.5, allocation="layer", lr=1e-4)
    for layer in sparsity_report(model).layers:
        assert layer.sparsity == pytest.approx(0.5, abs=0.01), layer.name


def test_torch_pruning_channels_returns_a_smaller_copy_and_says_what_to_install_without_the_package(monkeypatch):
    from sabr import create_model
    from sabr.baselines import torch_pruning_channels

    model = create_model("compact_cnn", 10, 1, 8).eval()
    before = copy.deepcopy(model.state_dict())
    small = torch_pruning_channels(model, torch.randn(2, 1, 8, 8), 0.5)
    convs = lambda m: [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert all(a < b for a, b in zip(convs(small), convs(model)))
    assert [m for m in small.modules() if isinstance(m, nn.Linear)][-1].out_features == 10  # the head is whole
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model given is untouched
    assert small(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    monkeypatch.setitem(__import__("sys").modules, "torch_pruning", None)
    with pytest.raises(ImportError, match="pip install 'torch-pruning"):
        torch_pruning_channels(model, torch.randn(2, 1, 8, 8), 0.5)
