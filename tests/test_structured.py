"""Structured SABR: channel groups, whole-channel pruning, and shrunk models equal to their pruned originals."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from sabr import SABR, create_model, prune, shrink
from sabr.channels import channel_groups, channel_rms, channel_scale, group_parameters
from sabr.errors import ConfigError
from sabr.pruning import prunable_sparsity, prune_channel_share, revive_channels

# (model, input channels, image size): every built-in and the torchvision families the groups cover
ARCHITECTURES = [("compact_cnn", 1, 8), ("lenet5", 1, 28), ("small_vgg", 1, 28), ("vgg11", 3, 32),
                 ("resnet18", 3, 32), ("mobilenet_v2", 3, 32), ("resnet20", 1, 28)]
SLOW_ARCHITECTURES = [("resnet50", 3, 32), ("efficientnet_b0", 3, 32), ("densenet121", 3, 32),
                      ("mobilenet_v3_small", 3, 32), ("googlenet", 3, 64), ("regnet_x_400mf", 3, 32)]


def _random_statistics(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so that a constant channel is not zero."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _zero_half_of_the_rows(model: nn.Module, groups) -> None:
    named = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for group in groups:
            drop = torch.rand(group.channels, generator=g) < 0.5
            drop[0] = False
            for w in group.weights:
                named[w][drop] = 0.0


def _check_shrinks_exactly(name: str, chans: int, size: int) -> None:
    torch.manual_seed(0)
    model = _random_statistics(create_model(name, 10, chans, size))
    x = torch.randn(2, chans, size, size)
    groups = channel_groups(model, x[:1])
    assert groups, f"{name}: no channel group found"
    _zero_half_of_the_rows(model, groups)
    prune(model, teta1=0.2, gamma=0.1, groups=groups)  # the rows are zero: it zeroes their biases and BatchNorms
    named = dict(model.named_parameters())
    pruned = sum(int(torch.stack([named[n].detach().reshape(g.channels, -1).eq(0).all(1) for n in g.parameters])
                     .all(0).sum()) for g in groups)  # every parameter of the channel is zero
    small, rep = shrink(model, x)
    kept = sum(rep.layers.get(g.name, (g.channels, g.channels))[1] for g in groups)
    assert pruned > 0 and kept <= sum(g.channels for g in groups) - pruned, f"{name}: a pruned channel stayed"
    assert rep.params_after < rep.params_before
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,chans,size", ARCHITECTURES)
def test_every_pruned_channel_is_removed_and_the_outputs_stay(name, chans, size):
    _check_shrinks_exactly(name, chans, size)


@pytest.mark.slow
@pytest.mark.parametrize("name,chans,size", SLOW_ARCHITECTURES)
def test_every_pruned_channel_is_removed_and_the_outputs_stay_on_more_torchvision_families(name, chans, size):
    _check_shrinks_exactly(name, chans, size)


def test_resnet_groups_couple_the_residual_stream_and_cover_every_hidden_layer():
    model = create_model("resnet18", 10, 3, 32)
    groups = channel_groups(model, torch.zeros(1, 3, 32, 32))
    by_name = {g.name: g for g in groups}
    assert by_name["conv1"].weights == ("conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight")
    assert "layer2.0.downsample.0.weight" in by_name["layer2.0.conv2"].weights
    assert {"bn1.weight", "bn1.bias", "layer1.0.bn2.bias"} <= set(by_name["conv1"].extras)
    weights = [w for g in groups for w in g.weights]
    assert len(weights) == len(set(weights)), "a tensor in two groups"
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert convs - set(weights) == {"fc.weight"}  # the output layer keeps its classes


def test_resnet20_groups_each_stage_s_residual_stream_with_its_projection():
    model = create_model("resnet20", 10, 1, 28)
    by_name = {g.name: g for g in channel_groups(model, torch.zeros(1, 1, 28, 28))}
    assert by_name["conv1"].weights == ("conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight",
                                        "layer1.2.conv2.weight")
    assert by_name["layer3.0.conv2"].weights == ("layer3.0.conv2.weight", "layer3.0.downsample.0.weight",
                                                 "layer3.1.conv2.weight", "layer3.2.conv2.weight")
    assert [by_name[n].channels for n in ("conv1", "layer2.0.conv2", "layer3.0.conv2")] == [16, 32, 64]
    assert len(by_name) == 12  # the three residual streams and the nine blocks' inner layers


def test_depthwise_layers_share_a_group_with_the_layer_they_filter():
    model = create_model("mobilenet_v2", 10, 3, 32)
    groups = channel_groups(model, torch.zeros(1, 3, 32, 32))
    tied = next(g for g in groups if "features.2.conv.1.0.weight" in g.weights)
    assert tied.weights == ("features.2.conv.0.0.weight", "features.2.conv.1.0.weight")


def test_params_keep_only_groups_inside_them():
    model = create_model("resnet18", 10, 3, 32)
    x = torch.zeros(1, 3, 32, 32)
    only = channel_groups(model, x, params=["layer1.0.conv1.weight", "layer4.1.conv1.weight"])
    assert [g.name for g in only] == ["layer1.0.conv1", "layer4.1.conv1"]


def test_prune_removes_whole_channels_by_the_std_rule_on_their_sizes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 3))
    groups = channel_groups(model, torch.zeros(1, 1, 8, 8))
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([1.0] * 8 + [0.01] * 8).view(16, 1, 1, 1))
    named = dict(model.named_parameters())
    rms = channel_rms(named, groups[0]).numpy()
    kept = rms[rms >= 0.1 * np.std(rms)]
    threshold = 0.2 * np.std(kept)
    expected = rms < threshold
    assert expected.sum() == 8
    assert prunable_sparsity(model, 0.2, 0.1, groups=groups) == pytest.approx(8 / 16)
    stats = prune(model, teta1=0.2, gamma=0.1, groups=groups)
    assert stats[0].threshold == pytest.approx(threshold)
    assert group_parameters(groups) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    for n in group_parameters(groups):
        assert (named[n].detach()[torch.from_numpy(expected)] == 0).all()
    assert (model[0].weight.detach()[torch.from_numpy(~expected)] != 0).all()
    assert (model[1].weight.detach()[torch.from_numpy(~expected)] == 1).all()


def test_prune_keeps_a_multiple_of_eight_channels_the_largest_or_all():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 20, 3), nn.ReLU(), nn.Conv2d(20, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 16, 3))
    groups = channel_groups(model, torch.zeros(1, 1, 8, 8))
    named = dict(model.named_parameters())
    largest = set(torch.argsort(channel_rms(named, groups[0]), descending=True)[:8].tolist())
    prune(model, epsilon=1e9, groups=groups)  # the rule would remove every channel
    alive = lambda w: set(torch.nonzero((w.reshape(w.shape[0], -1) != 0).any(1)).flatten().tolist())  # noqa: E731
    assert alive(model[0].weight) == largest
    assert len(alive(model[2].weight)) == 4  # fewer channels than one multiple: all stay


def test_a_channel_share_removes_the_smallest_channels_of_every_group_in_multiples_of_eight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 12, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(12 * 16, 3))
    groups = channel_groups(model, torch.zeros(1, 1, 8, 8))
    named = dict(model.named_parameters())
    alive = lambda w: set(torch.nonzero((w.reshape(w.shape[0], -1) != 0).any(1)).flatten().tolist())  # noqa: E731
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(32) + 0.1)
        model[1].weight[7] = 1e-3  # the BatchNorm scale decides, not the weights before it
        model[0].weight[7] *= 100
        for n in group_parameters(groups[:1]):
            named[n][5] = 0.0  # a channel the std rule already removed counts first
    scale = channel_scale(model, groups[0])
    assert torch.equal(scale, model[1].weight.detach().double().abs())
    order = torch.argsort(scale).tolist()
    assert order[:2] == [5, 7]
    stats = prune_channel_share(model, groups, 0.3)  # 32 x 0.3 = 9.6 -> 8 channels; 12 x 0.3 = 3.6 -> none
    assert alive(model[0].weight) == set(range(32)) - set(order[:8])
    assert (model[1].weight.detach()[order[:8]] == 0).all() and (model[0].bias.detach()[order[:8]] == 0).all()
    assert alive(model[3].weight) == set(range(12))
    assert [s.name for s in stats] == ["0.weight", "3.weight"] and stats[0].sparsity == pytest.approx(8 / 32)
    assert stats[0].threshold == pytest.approx(float(scale[order[7]]))  # the largest removed channel's scale
    assert stats[1].threshold == 0.0
    prune_channel_share(model, groups, 0.0)  # nothing more
    assert len(alive(model[0].weight)) == 24
    by_rms = lambda m, g: channel_rms(dict(m.named_parameters()), g)  # noqa: E731 - another rank, asked for
    largest = int(torch.argmax(by_rms(model, groups[0])))
    prune_channel_share(model, groups, 0.5, rank=lambda m, g: -by_rms(m, g))  # largest first ...
    assert largest not in alive(model[0].weight) and len(alive(model[0].weight)) == 16  # ... the 8 zero ones count
    with pytest.raises(ConfigError, match="channel share"):
        prune_channel_share(model, groups, 1.0)


def test_reviving_a_smaller_share_gives_back_the_reference_channels_and_keeps_the_trained_ones():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Conv2d(1, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 3), nn.ReLU(),
                              nn.Flatten(), nn.Linear(16 * 16, 3))
    with torch.no_grad():
        reference[1].weight.copy_(torch.rand(32) + 0.1)
    groups = channel_groups(reference, torch.zeros(1, 1, 8, 8))
    model = copy.deepcopy(reference)
    prune_channel_share(model, groups, 0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # "training": every surviving value changes, zeros stay zero
    trained = copy.deepcopy(model)
    stats = revive_channels(model, reference, groups, 0.25)
    lower = copy.deepcopy(reference)
    assert [s.sparsity for s in stats] == [s.sparsity for s in prune_channel_share(lower, groups, 0.25)]
    for name, p in model.named_parameters():
        was, ref, low = dict(trained.named_parameters())[name], dict(reference.named_parameters())[name], \
            dict(lower.named_parameters())[name]
        assert torch.equal(p != 0, low != 0), name  # the zero pattern of the smaller share
        back = (was == 0) & (low != 0)
        assert torch.equal(p[back], ref[back]) and torch.equal(p[~back], was[~back]), name
    assert int((model[0].weight.reshape(32, -1) != 0).any(1).sum()) == 24


def test_without_batchnorm_a_channel_ranks_by_every_weight_that_writes_or_reads_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16, 3))
    groups = channel_groups(model, torch.zeros(1, 1, 8, 8))
    assert [g.readers for g in groups] == [(("2.weight", 1),), (("5.weight", 16),)]
    named = dict(model.named_parameters())
    with torch.no_grad():
        model[0].weight[3] *= 0.01  # small rows ...
        model[2].weight[:, 3] *= 100  # ... that the next layer listens to closely
    rows = lambda g: torch.cat([named[w].detach().reshape(g.channels, -1) for w in g.weights], 1)  # noqa: E731
    columns = [model[2].weight.detach().transpose(0, 1).reshape(16, -1),  # conv: input channel j
               model[5].weight.detach().view(3, 8, 16).transpose(0, 1).reshape(8, -1)]  # flatten: j's 16 columns
    for group, cols in zip(groups, columns):
        expected = torch.cat([rows(group), cols], 1).norm(dim=1).double()
        assert torch.allclose(channel_scale(model, group), expected)
    assert int(torch.argmin(channel_rms(named, groups[0]))) == 3  # the weights that write it alone: smallest
    prune_channel_share(model, groups, 0.5)
    assert model[0].weight[3].any()
    assert int((model[0].weight.reshape(16, -1) != 0).any(1).sum()) == 8


def test_the_group_with_the_largest_removable_share_freezes_and_none_while_no_channel_is_removable():
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 3, 32)
    groups = channel_groups(model, torch.zeros(1, 3, 32, 32))
    reg = SABR(model, groups=groups, k_epoch=1, accuracy_threshold=0.0)
    reg.step(0.9)
    assert reg.step(0.5).frozen is None and not reg.frozen  # every channel alike: nothing to freeze yet
    with torch.no_grad():
        model.layer4[1].conv1.weight[:256] *= 1e-3  # half of one group's channels collapse
        model.layer3[1].conv1.weight[:64] *= 1e-3  # a quarter of another's
    assert reg.step(0.4).frozen == "layer4.1.conv1"
    assert reg.step(0.3).frozen == "layer3.1.conv1"
    frozen = "layer4.1.conv1"
    assert all(not reg.params[w].requires_grad for w in reg.units[frozen])
    assert len(reg.units) == len(groups) and not reg.all_frozen
    again = SABR(model, groups=groups)
    again.load_state_dict(reg.state_dict())
    assert again.frozen == reg.frozen and again.lambdas == reg.lambdas


@pytest.mark.slow
def test_structured_run_fine_tunes_reprunes_and_exports_a_smaller_model_with_the_same_outputs(tmp_path):
    from sabr import cli, load_model, load_run
    from sabr.export import example_input

    out = tmp_path / "run"
    assert cli.main(["run", "--structured", "--epochs-base", "2", "--epochs-sabr", "3", "--finetune-epochs", "2",
                     "--max-drop", "1", "--sweep", "0.5", "1", "2", "--threads", "1", "--out", str(out),
                     "--quiet"]) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    # the ramp cuts once to its top share and every fine-tune epoch is within a 100-point budget: it stays there
    history = (out / "history_finetune.csv").read_text().splitlines()
    assert history[0].split(",")[-1] == "channel_share" and [r.split(",")[-1] for r in history[1:]] == ["0.875"] * 2
    assert summary["pruned"]["channel_share"] == 0.875 and summary["budget"]["prune_teta1"] in (0.5, 1, 2)
    assert "smallest 87.5% of every channel group removed in 2 masked fine-tune epochs" in (out / "summary.md").read_text()
    st = summary["structured"]
    assert st["groups"] == 4 and st["channels_after"] <= st["channels_before"]
    assert st["params_after"] <= st["params_before"] and st["speedup_batch1"] > 0
    assert summary["sabr"]["tensors"] == 4  # groups are the units that freeze
    model, meta = load_run(out)
    groups = channel_groups(model, example_input(meta, 1))
    named = dict(model.named_parameters())
    kept = sum(int((channel_rms(named, g) > 0).sum()) for g in groups)
    assert kept == st["channels_after"]  # the fine-tune kept the pruned channels at exactly zero
    assert cli.main(["prune", "--run", str(out), "--teta1", "0.5", "2", "--quiet"]) == 0
    assert cli.main(["export", "--run", str(out), "--format", "shrunk", "--out", str(tmp_path / "small"), "--quiet"]) == 0
    small, _ = load_model(tmp_path / "small.safetensors")
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in small.parameters()) == st["params_after"]


def test_batchnorm_recalibration_defaults_on_for_weights_and_off_for_channels():
    from sabr import RunConfig

    assert RunConfig().recalibrates and not RunConfig(structured=True).recalibrates
    assert RunConfig(structured=True, bn_recalibrate=True).recalibrates
    assert not RunConfig(bn_recalibrate=False).recalibrates
    assert RunConfig(structured=True, bn_recalibrate=True).command() == "sabr run --structured --bn-recalibrate"
