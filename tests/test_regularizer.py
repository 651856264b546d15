import math

import numpy as np
import pytest
import torch
from torch import nn

from sabr import SABR, ConfigError
from sabr.channels import channel_groups
from sabr.regularizer import auto_threshold


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                         nn.Linear(8, 3))


NAMES = ["0.weight", "3.weight", "5.weight"]


def test_default_params_are_conv_and_linear_weights_in_order():
    reg = SABR(tiny())
    assert list(reg.params) == NAMES


def test_lambda_is_teta1_times_numpys_population_std():
    model = tiny()
    reg = SABR(model, teta1=0.01)
    for name, p in model.named_parameters():
        if name in NAMES:
            assert reg.lambdas[name] == pytest.approx(0.01 * float(np.std(p.detach().numpy())), rel=1e-6)
            assert reg.history[name] == [reg.lambdas[name]]
    # a hand-made tensor where the two stds differ by 25%: [1, -1] has np.std 1, torch.std sqrt(2)
    two = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        two.weight.copy_(torch.tensor([[1.0, -1.0]]))
    assert SABR(two, teta1=0.5).lambdas["weight"] == 0.5


def test_steps_per_epoch_makes_an_epoch_pull_as_hard_as_100_steps():
    model = tiny()
    per_step = SABR(model, teta1=0.01)
    scaled = SABR(model, teta1=0.01, steps_per_epoch=25)
    assert scaled.lambdas == per_step.lambdas  # the spec's lambdas; only each step's share changes
    assert scaled.step_scale == 4.0 and per_step.step_scale == 1.0
    assert float(scaled.penalty().detach()) == pytest.approx(4 * float(per_step.penalty().detach()), rel=1e-6)
    state = scaled.state_dict()
    again = SABR(model, teta1=0.01)
    again.load_state_dict(state)
    assert again.steps_per_epoch == 25


def test_auto_threshold_is_one_standard_error_with_a_floor():
    # 324 validation images at 90%: sqrt(0.9 * 0.1 / 324) = 0.016667
    assert auto_threshold(0.9, 324) == pytest.approx(0.0166667, rel=1e-4)
    assert auto_threshold(0.9, 324, z=2.0) == pytest.approx(0.0333333, rel=1e-4)
    # 99.69% of 324 images: the standard error 0.0031 is below the floor, the spec's 0.007
    assert auto_threshold(323 / 324, 324) == 0.007
    assert auto_threshold(1.0, 10) == 0.007
    with pytest.raises(ConfigError, match="validation split is empty"):
        auto_threshold(0.9, 0)


def test_growth_when_no_significant_drop():
    reg = SABR(tiny(), growth_rate=1.1, accuracy_threshold=0.25, fast_start=None)  # the seed's rule
    before = dict(reg.lambdas)
    r = reg.step(1.0)  # first epoch sets best; drop 0
    assert r.action == "grow"
    assert all(reg.lambdas[n] == pytest.approx(before[n] * 1.1) for n in NAMES)
    r = reg.step(0.75)  # drop 0.25 (exact in binary) is not > threshold: still growth
    assert r.action == "grow" and reg.best == 1.0
    assert all(reg.lambdas[n] == pytest.approx(before[n] * 1.1 ** 2) for n in NAMES)


def test_fast_start_grows_by_its_factor_until_the_first_shrink_then_by_growth_rate():
    reg = SABR(tiny(), growth_rate=1.15, decrease_rate=1.2, accuracy_threshold=0.01)  # fast_start 2 by default
    assert reg.fast_start == 2.0 and not reg.shrunk
    start = dict(reg.lambdas)
    reg.step(0.90)
    reg.step(0.895)  # a drop within the threshold still grows fast
    assert reg.growth == 2.0
    assert all(reg.lambdas[n] == pytest.approx(start[n] * 4) for n in NAMES)
    assert reg.step(0.85).action == "shrink" and reg.shrunk
    assert all(reg.lambdas[n] == pytest.approx(start[n] * 4 / 1.2) for n in NAMES)
    reg.step(0.92)  # after the first shrink: the seed's rate, for good
    assert reg.growth == 1.15
    assert all(reg.lambdas[n] == pytest.approx(start[n] * 4 / 1.2 * 1.15) for n in NAMES)


@pytest.mark.parametrize("off", [None, 1.0, 1.15])
def test_fast_start_off_is_the_seeds_rule(off):
    reg, seed = SABR(tiny(), fast_start=off), SABR(tiny(), fast_start=None)
    for acc in (0.9, 0.91, 0.85, 0.9):
        reg.step(acc), seed.step(acc)
    assert reg.lambdas == seed.lambdas and reg.history == seed.history


def test_fast_start_below_one_is_refused():
    with pytest.raises(ConfigError, match="fast_start"):
        SABR(tiny(), fast_start=0.5)


def test_fast_start_state_round_trip_and_older_states():
    reg = SABR(tiny(), fast_start=3.0, accuracy_threshold=0.01)
    reg.step(0.9)
    state = reg.state_dict()
    assert state["fast_start"] == 3.0 and state["shrunk"] is False
    again = SABR(tiny(), fast_start=None)
    again.load_state_dict(state)
    assert again.fast_start == 3.0 and not again.shrunk
    for r in (reg, again):
        r.step(0.91)
    assert again.lambdas == reg.lambdas  # continues fast, identically
    reg.step(0.5)
    again.load_state_dict(reg.state_dict())
    assert again.shrunk and again.growth == reg.growth_rate
    # a state saved before the fast start existed: the rule that made it (none), shrunk read from the history
    old = {k: v for k, v in reg.state_dict().items() if k not in ("fast_start", "shrunk")}
    again.load_state_dict(old)
    assert again.fast_start is None and again.shrunk
    grown_only = SABR(tiny(), fast_start=None)
    grown_only.step(0.9)
    old = {k: v for k, v in grown_only.state_dict().items() if k not in ("fast_start", "shrunk")}
    again.load_state_dict(old)
    assert not again.shrunk


def test_shrink_and_counter_on_drop_then_reset_on_growth():
    reg = SABR(tiny(), decrease_rate=1.2, accuracy_threshold=0.005, k_epoch=3)
    reg.step(0.90)
    grown = dict(reg.lambdas)
    r = reg.step(0.80)
    assert r.action == "shrink" and r.drop == pytest.approx(0.10)
    assert all(reg.lambdas[n] == pytest.approx(grown[n] / 1.2) for n in NAMES)
    assert all(reg.counters[n] == 1 for n in NAMES)
    reg.step(0.95)  # new best, growth resets counters
    assert all(reg.counters[n] == 0 for n in NAMES)
    assert reg.best == 0.95


def test_best_is_running_maximum_and_drop_measured_from_it():
    reg = SABR(tiny(), accuracy_threshold=0.01)
    reg.step(0.5)
    reg.step(0.7)
    r = reg.step(0.65)
    assert r.best == 0.7 and r.drop == pytest.approx(0.05) and r.action == "shrink"


def test_freezes_sparsest_tensor_after_k_epoch_drops():
    model = tiny()
    with torch.no_grad():
        model[3].weight[:, :100] = 0.0  # 3.weight: 8*144 - 800 = 352 non-zero
        model[5].weight[:, :4] = 0.0    # 5.weight: 24 - 12 = 12 non-zero -> fewest
    reg = SABR(model, k_epoch=2, accuracy_threshold=0.005)
    reg.step(0.9)
    assert reg.step(0.8).frozen is None  # counter 1
    r = reg.step(0.8)  # counter 2 == k_epoch
    assert r.frozen == "5.weight"
    assert reg.frozen == {"5.weight"}
    assert not model[5].weight.requires_grad and model[3].weight.requires_grad
    frozen_lambda = reg.lambdas["5.weight"]
    r = reg.step(0.8)  # counters still >= k: one more tensor freezes (the next sparsest)
    assert int((model[0].weight.abs() >= reg.zero_eps).sum()) == 4 * 9  # 0.weight: 36 non-zero < 352 of 3.weight
    assert r.frozen == "0.weight"
    assert reg.lambdas["5.weight"] == frozen_lambda  # a frozen lambda stays as it is
    assert len(reg.history["5.weight"]) == 5  # history still recorded every epoch
    reg.step(0.8)
    assert reg.all_frozen


def test_freeze_ties_broken_by_parameter_order():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(2.0)
    reg = SABR(model, k_epoch=1)
    reg.step(1.0)
    assert reg.step(0.5).frozen == "0.weight"


def test_near_zero_count_uses_zero_eps():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1e-6)   # all below zero_eps=1e-5 -> 0 "non-zero"
        model[1].weight.fill_(1.0)
        model[1].weight[0, 0] = 0.0   # 15 non-zero
    reg = SABR(model, k_epoch=1, zero_eps=1e-5)
    reg.step(1.0)
    assert reg.step(0.0).frozen == "0.weight"
    assert reg.near_zero_sparsity() == pytest.approx(17 / 32)


def test_penalty_is_weighted_l1_over_unfrozen_tensors():
    model = tiny()
    reg = SABR(model, teta1=0.1)
    expected = sum(reg.lambdas[n] * float(p.detach().abs().sum()) for n, p in reg.params.items())
    assert float(reg.penalty().detach()) == pytest.approx(expected, rel=1e-5)
    reg.freeze("3.weight")
    expected -= reg.lambdas["3.weight"] * float(reg.params["3.weight"].abs().sum())
    assert float(reg.penalty().detach()) == pytest.approx(expected, rel=1e-5)
    reg.penalty().backward()
    g = model[0].weight.grad
    assert torch.allclose(g, reg.lambdas["0.weight"] * model[0].weight.sign())
    assert model[3].weight.grad is None


def test_training_stops_when_all_frozen_in_a_loop():
    model = tiny()
    reg = SABR(model, k_epoch=1)
    accs = [0.9] + [0.5] * 10
    epochs = 0
    for acc in accs:
        reg.step(acc)
        epochs += 1
        if reg.all_frozen:
            break
    assert reg.all_frozen and epochs == 4  # 1 best-setting epoch, then one freeze per drop epoch
    assert float(reg.penalty()) == 0.0


def test_state_dict_round_trip_is_exact():
    model = tiny()
    reg = SABR(model, k_epoch=1, growth_rate=1.3)
    for acc in (0.8, 0.85, 0.7, 0.6):
        reg.step(acc)
    state = reg.state_dict()
    import json
    state = json.loads(json.dumps(state))  # survives JSON
    model2 = tiny()
    reg2 = SABR(model2)
    reg2.load_state_dict(state)
    assert reg2.state_dict() == reg.state_dict()
    assert {n for n, p in reg2.params.items() if not p.requires_grad} == reg.frozen
    # both continue identically
    for acc in (0.9, 0.5):
        a, b = reg.step(acc), reg2.step(acc)
        assert a == b
    assert reg2.state_dict() == reg.state_dict()


def test_custom_params_and_errors():
    model = tiny()
    reg = SABR(model, params=["3.weight", "0.weight"])
    assert list(reg.params) == ["0.weight", "3.weight"]  # model order
    with pytest.raises(ConfigError, match="not parameters"):
        SABR(model, params=["nope.weight"])
    with pytest.raises(ConfigError, match="fraction"):
        reg.step(95.0)
    with pytest.raises(ConfigError):
        SABR(model, k_epoch=0)
    assert math.isclose(reg.mean_lambda(), sum(reg.lambdas.values()) / 2)


def test_group_penalty_is_group_lasso_over_coupled_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4))
    groups = channel_groups(model, torch.zeros(1, 2, 4, 4))
    assert [(g.name, g.weights, g.channels) for g in groups] == [("0", ("0.weight",), 3)]
    grouped = SABR(model, groups=groups)
    w = model[0].weight
    assert grouped.lambdas == {"0": pytest.approx(grouped.teta1 * np.std(w.detach().numpy()))}
    expected = grouped.lambdas["0"] * w.reshape(3, -1).norm(dim=1).sum() * w[0].numel() ** 0.5
    assert torch.allclose(grouped.penalty(), expected)
    assert list(grouped.params) == ["0.weight"] and list(grouped.units) == ["0"]
    again = SABR(model, groups=groups)
    again.load_state_dict(grouped.state_dict())
    assert torch.allclose(again.penalty(), expected)
    with pytest.raises(ConfigError, match="same model and mode"):
        SABR(model).load_state_dict(grouped.state_dict())
