"""sabr.channel_peers: Torch-Pruning's structured peers cut what they are asked to, to the shape asked for."""

import copy

import pytest
import torch
from torch import nn

from sabr import ConfigError, RunConfig, channel_groups, create_model, prune_channel_share, shrink
from sabr.channel_peers import IMPORTANCES, out_channels, torch_pruning_channels, train_groupnorm
from sabr.pipeline import prepare

pytest.importorskip("torch_pruning", reason="the structured peers need torch-pruning (sabr's bench extra)")


@pytest.fixture(scope="module")
def exp():
    return prepare(RunConfig(model="resnet20", image_size=16, max_per_class=20, device="cpu"), progress=False)


def _resnet20(exp) -> nn.Module:
    torch.manual_seed(0)
    return exp.new_model().eval()


def _zero_channels(model: nn.Module, share: float, x: torch.Tensor) -> nn.Module:
    """A structured result as SABR leaves it: ``share`` of every channel group zeroed (the smallest)."""
    model = copy.deepcopy(model)
    prune_channel_share(model, channel_groups(model, x), share)
    return model


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_each_importance_cuts_every_layer_to_the_shape_of_a_shrunk_model(exp, importance):
    base = _resnet20(exp)
    x = exp.example_input().repeat(2, 1, 1, 1)
    target = shrink(_zero_channels(base, 0.5, x), x)[0]
    assert sum(p.numel() for p in target.parameters()) < 0.5 * sum(p.numel() for p in base.parameters())
    before = copy.deepcopy(base.state_dict())
    peer = torch_pruning_channels(base, x, importance=importance, like=target, exp=exp)
    assert out_channels(peer) == out_channels(target)
    assert sum(p.numel() for p in peer.parameters()) == sum(p.numel() for p in target.parameters())
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the base is left as it was
    assert peer(x).shape == (2, 10) and not peer.training


def test_the_importances_choose_different_channels(exp):
    base = _resnet20(exp)
    with torch.no_grad():  # small BatchNorm scales, largest last: the weights' magnitudes rank by themselves
        for m in base.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1e-3 * torch.linspace(0.1, 2.0, m.num_features))
    x = exp.example_input().repeat(2, 1, 1, 1)
    kept = {imp: torch_pruning_channels(base, x, 0.5, imp, exp=exp).conv1.weight for imp in IMPORTANCES}
    assert not torch.equal(kept["magnitude"], kept["bn_scale"])
    assert torch.equal(kept["bn_scale"], base.conv1.weight[8:])  # the largest |gamma|: the last half


def test_bad_arguments_are_one_sentence(exp):
    base, x = _resnet20(exp), exp.example_input()
    with pytest.raises(ConfigError, match="either a channel ratio"):
        torch_pruning_channels(base, x)
    with pytest.raises(ConfigError, match="either a channel ratio"):
        torch_pruning_channels(base, x, 0.5, like=base)
    with pytest.raises(ConfigError, match="unknown Torch-Pruning importance 'l3'"):
        torch_pruning_channels(base, x, 0.5, "l3")
    with pytest.raises(ConfigError, match="pass exp="):
        torch_pruning_channels(base, x, 0.5, "taylor")
    with pytest.raises(ConfigError, match="no layer 'conv1'"):
        torch_pruning_channels(base, x, like=create_model("compact_cnn", 10, 1, 16))


def test_groupnorm_trains_sparse_then_cuts_and_fine_tunes(exp):
    base, x = _resnet20(exp), exp.example_input().repeat(2, 1, 1, 1)
    target = shrink(_zero_channels(base, 0.5, x), x)[0]
    model, rows = train_groupnorm(exp, copy.deepcopy(base).train(), 2, like=target, reg=1e-3)
    assert out_channels(model) == out_channels(target)
    assert len(rows) == 2 and all(0 <= r["val_accuracy"] <= 1 for r in rows)
    with pytest.raises(ConfigError, match="sparse_epochs must be between 0 and epochs"):
        train_groupnorm(exp, copy.deepcopy(base), 2, 0.5, sparse_epochs=3)


def test_groupnorm_regulariser_pulls_whole_groups_down(exp):
    """With a strong regulariser and no fine-tune, the sparse epochs shrink the group norms far more than
    plain training does (its gradients reach the optimizer)."""
    def norms(reg: float) -> float:
        torch.manual_seed(0)
        model = exp.new_model()
        train_groupnorm(exp, model, 3, 1e-9, reg=reg, sparse_epochs=3)  # a ratio that cuts nothing
        return float(sum(m.weight.detach().norm() for m in model.modules() if isinstance(m, nn.Conv2d)))

    assert norms(0.5) < 0.85 * norms(0.0)  # measured: 54.9 against 69.6
