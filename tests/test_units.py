"""The unit kinds (sabr.units): one argument for SABR, pruning and the budget, whatever the kind."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sabr import ConfigError, SABR, prune
from sabr.budget import BudgetTracker, prune_copy, search_prune_factor
from sabr.channels import channel_groups
from sabr import phases
from sabr.phases import sweep
from sabr.pruning import prunable_sparsity
from sabr.units import ChannelGroupUnits, LayerPruning, TensorUnits, Units, make_units


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 3))


def test_tensor_units_map_each_weight_to_itself_in_model_order():
    units = TensorUnits.of(_mlp(), ["2.weight", "0.weight"])
    assert list(units) == ["0.weight", "2.weight"] and units["2.weight"] == ("2.weight",)
    assert units.parameters == ("0.weight", "2.weight") and len(units) == 2 and "0.bias" not in units
    with pytest.raises(ConfigError, match="not parameters of the model"):
        TensorUnits.of(_mlp(), ["nope"])


def test_channel_group_units_map_each_group_to_its_weights_and_refuse_a_repeated_name():
    model = _cnn()
    groups = channel_groups(model, torch.zeros(1, 3, 8, 8))
    units = ChannelGroupUnits(groups)
    assert list(units) == [g.name for g in groups] and units[groups[0].name] == groups[0].weights
    assert set(units.parameters) >= {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert units.to_json() == [g.to_dict() for g in groups]
    with pytest.raises(ConfigError, match="unique"):
        ChannelGroupUnits([groups[0], groups[0]])


@pytest.mark.parametrize("structured", [False, True])
def test_the_conveniences_and_units_give_the_same_regulariser_and_pruning(structured):
    model = _cnn()
    groups = channel_groups(model, torch.zeros(1, 3, 8, 8)) if structured else None
    units = make_units(model, None, groups)
    assert isinstance(units, ChannelGroupUnits if structured else TensorUnits)
    a, b = SABR(model, groups=groups), SABR(model, units=units)
    assert a.lambdas == b.lambdas and list(a.units) == list(b.units) and list(a.params) == list(b.params)
    assert torch.equal(a.penalty(), b.penalty())
    one, two = copy.deepcopy(model), copy.deepcopy(model)
    assert prunable_sparsity(model, 1.0, groups=groups) == prunable_sparsity(model, 1.0, units=units)
    assert prune(one, 1.0, groups=groups) == prune(two, 1.0, units=units)
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), two.parameters()))
    with pytest.raises(ConfigError, match="units= replaces"):
        SABR(model, params=["0.weight"], units=units)


def test_the_old_arguments_of_the_budget_functions_warn_and_still_work():
    model = _mlp()
    units = TensorUnits.of(model, ["0.weight"])
    with pytest.warns(DeprecationWarning, match="prune_copy"):
        old = prune_copy(model, 0.5, 0.1, params=["0.weight"])[1]
    with pytest.warns(DeprecationWarning):  # tensor names where params= stood
        positional = prune_copy(model, 0.5, 0.1, ["0.weight"])[1]
    assert old == positional == prune_copy(model, 0.5, 0.1, units)[1]
    validate = lambda m: 1.0  # noqa: E731
    with pytest.warns(DeprecationWarning, match="search_prune_factor"):
        legacy = search_prune_factor(model, validate, 0.5, params=["0.weight"], factors=[0.2, 1.0])
    assert legacy == search_prune_factor(model, validate, 0.5, units=units, factors=[0.2, 1.0])
    with pytest.warns(DeprecationWarning, match="BudgetTracker"):
        tracker = BudgetTracker(0.5, 2, params=["0.weight"])
    assert tracker.update(model, 1, 0.9) == BudgetTracker(0.5, 2, units=units).update(model, 1, 0.9)
    assert "units" not in tracker.state_dict() and "params" not in tracker.state_dict()
    with pytest.warns(DeprecationWarning, match="SABR.groups"):
        assert SABR(model).groups is None


def test_a_sweep_reports_the_sparsity_of_the_runs_tensors(monkeypatch):
    class Exp:  # what sweep reads of an Experiment
        class config:
            params = None
        test = None

    monkeypatch.setattr(phases, "evaluate_split", lambda exp, m, split: (0.0, 0.5))
    model = _mlp()
    curve = sweep(Exp(), model, [0.5], 0.1, units=TensorUnits.of(model, ["0.weight"]))
    zeros = sum(l.total - l.nonzero for l in prune(copy.deepcopy(model), 0.5, params=["0.weight"]))
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))  # both layers
    assert curve[0] == {"teta1": 0.5, "sparsity": pytest.approx(zeros / weights), "test_accuracy": 0.5}


class WholeModel(Units):
    """A third kind, written against the protocol only: the whole model is one unit (one lambda)."""

    kind = "model"

    def __init__(self, names):
        self.tensors = TensorUnits(names)
        super().__init__({"all": self.tensors.names})

    @property
    def parameters(self):
        return self.tensors.parameters

    def norm(self, named, unit):
        return sum(named[n].abs().sum() for n in self.tensors.names)

    def freeze_score(self, named, unit, zero_eps):
        return 0.0

    def _prune(self, model, teta1, gamma, epsilon):
        return self.tensors._prune(model, teta1, gamma, epsilon)

    def prunable_sparsity(self, model, teta1=0.2, gamma=0.1):
        return self.tensors.prunable_sparsity(model, teta1, gamma)


def test_a_new_kind_of_unit_needs_no_change_to_sabr_pruning_or_the_budget():
    model = _mlp()
    units = WholeModel(["0.weight", "2.weight"])
    reg = SABR(model, units=units, k_epoch=1)
    assert list(reg.lambdas) == ["all"] and reg.penalty().item() > 0
    reg.step(0.9)
    assert reg.step(0.5).frozen == "all" and reg.all_frozen
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith("weight"))
    chosen, fits, trials = search_prune_factor(model, lambda m: 1.0, 0.5, units=units, factors=[0.2, 1.0])
    assert fits and [t.factor for t in trials] == [0.2, 1.0] and trials[1].sparsity > trials[0].sparsity
    assert all(isinstance(l, LayerPruning) for l in prune(copy.deepcopy(model), units=units))
