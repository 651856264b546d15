"""benchmarks/compare.py: the peers it runs must do what their papers say, or the comparison means nothing."""

import copy
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from sabr import RunConfig, sparsity_report
from sabr.pipeline import prepare, train_sabr

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"
_spec = importlib.util.spec_from_file_location("compare_benchmark", _PATH)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)


@pytest.fixture(scope="module")
def exp():
    return prepare(RunConfig(max_per_class=30, epochs_base=1, teta1=0.1, device="cpu"), progress=False)


def test_global_magnitude_prune_zeros_the_smallest_weights_globally():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    weights = torch.cat([model[0].weight.detach().flatten(), model[2].weight.detach().flatten()]).abs()
    compare.global_magnitude_prune(model, 0.8)
    rep = sparsity_report(model)
    assert rep.nonzero == round(0.2 * weights.numel())
    kept = torch.cat([model[0].weight.detach().flatten(), model[2].weight.detach().flatten()]).abs()
    # every weight kept is at least as large as every weight removed, across both layers
    assert kept[kept > 0].min() >= weights[kept == 0].max()
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # prune.remove made it permanent


def test_curve_helpers():
    curve = [[0.5, 0.90], [0.8, 0.88], [0.9, 0.80]]
    assert compare.accuracy_at(curve, 0.85) == pytest.approx(0.84)
    assert compare.accuracy_at(curve, 0.95) is None
    assert compare.sparsity_within(curve, base_accuracy=0.89) == 0.8
    assert compare.sparsity_within(curve, base_accuracy=0.99) is None


@pytest.mark.slow
def test_gmp_reaches_its_target_and_keeps_it(exp):
    base = exp.new_model()
    res = compare.run_gmp(exp, base, epochs=2, target=0.7)
    assert res["sparsity"] == pytest.approx(0.7, abs=2e-3)  # layer-wise: every tensor at 70%
    assert res["epochs"] == 2
    assert sparsity_report(base).sparsity < 0.01  # the shared base checkpoint is left untouched


@pytest.mark.slow
def test_sabr_ft_starts_from_sabr_snapshot_and_keeps_the_budget(exp):
    base = exp.new_model()
    before = copy.deepcopy(base.state_dict())
    sabr = compare.run_sabr(exp, base, epochs=3, snapshot_at=1)
    assert len(sabr["snapshot"]["rows"]) == 1
    # the snapshot is what a 1-epoch phase 2 ends with: phase 2 is deterministic for a seed
    torch.manual_seed(0)
    one_epoch = dataclasses.replace(exp, config=dataclasses.replace(exp.config, epochs_sabr=1))
    short, _, _ = train_sabr(one_epoch, copy.deepcopy(base), progress=False)
    for name, t in short.state_dict().items():
        assert torch.equal(t, sabr["snapshot"]["model"][name]), name
    ft = compare.run_sabr_ft(exp, base, epochs=3, ft_epochs=2, snapshot=sabr["snapshot"])
    assert ft["epochs"] == 3
    assert ft["sparsity"] > 0
    for name, t in base.state_dict().items():
        assert torch.equal(t, before[name]), name


def test_layer_magnitude_prune_prunes_every_tensor_to_the_same_sparsity():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    with torch.no_grad():
        model[2].weight.mul_(100)  # a global threshold would leave this layer whole and empty the other
    compare.layer_magnitude_prune(model, 0.8)
    for layer in (model[0], model[2]):
        w = layer.weight.detach()
        assert int((w != 0).sum()) == round(0.2 * w.numel())
