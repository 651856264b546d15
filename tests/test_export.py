"""Export formats round-trip on compact_cnn, VGG11 and MobileNetV2, on real digit images."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from sabr import Preprocess, create_model, load_dataset, load_model, load_run, prune
from sabr.errors import CheckpointError, SabrError
from sabr.export import export_onnx, save_shrunk, save_sparse, shrink
from sabr.regularizer import resolve_params

ARCHS = [("compact_cnn", 1, 8), pytest.param("vgg11", 3, 32, marks=pytest.mark.slow), ("mobilenet_v2", 3, 32)]


def pruned_model(name: str, channels: int, size: int) -> nn.Module:
    """A fresh copy of :func:`_pruned_model` (built once per architecture: VGG11 has 22M weights)."""
    return copy.deepcopy(_pruned_model(name, channels, size))


@functools.lru_cache(maxsize=None)
def real_batch(channels: int, size: int, n: int = 16) -> torch.Tensor:
    """``n`` real digit images (sklearn's digits), preprocessed to ``channels`` x ``size`` x ``size``."""
    pre = Preprocess(size, channels)
    ds = load_dataset("digits", pre, max_per_class=2, progress=False)
    return pre.normalize(ds.images[:n])


@functools.lru_cache(maxsize=None)
def _pruned_model(name: str, channels: int, size: int, channel_fraction: float = 0.4) -> nn.Module:
    """An eval-mode model with realistic BatchNorm statistics, pruned by SABR's rule, with some whole
    output channels zeroed (what SABR produces on the channels a task does not need)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=channels, image_size=size)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial shifts, so dead channels carry constants
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
        prune(model, teta1=1.0)
        g = torch.Generator().manual_seed(1)
        params = resolve_params(model)
        for pname in list(params)[:-1]:  # never the logits
            w = params[pname]
            rows = torch.randperm(w.shape[0], generator=g)[: int(channel_fraction * w.shape[0])]
            w[rows] = 0
    return model.eval()


def meta_for(name: str, channels: int, size: int) -> dict:
    pre = Preprocess(size, channels)
    return {"model": {"name": name, "num_classes": 10, "in_chans": channels, "image_size": size},
            "classes": [str(i) for i in range(10)], "preprocess": pre.to_dict(), "phase": "pruned"}


@pytest.mark.parametrize("name,channels,size", ARCHS)
def test_sparse_round_trip_is_bit_identical(tmp_path, name, channels, size):
    model = pruned_model(name, channels, size)
    path = save_sparse(model, tmp_path / "m", meta_for(name, channels, size))
    loaded, meta = load_model(path)
    assert meta["export"]["format"] == "sparse" and meta["classes"][3] == "3"
    assert isinstance(meta["transform"], Preprocess)
    own, back = model.state_dict(), loaded.state_dict()
    assert set(own) == set(back)
    for k in own:
        assert torch.equal(own[k], back[k]), k
    x = real_batch(channels, size)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_sparse_file_is_small_at_high_sparsity(tmp_path):
    name, channels, size = ARCHS[0]
    model = create_model(name, 10, channels, size)
    prune(model, teta1=3.0)
    with torch.no_grad():  # top 4% magnitudes survive in every tensor: >= 95% sparsity
        for w in resolve_params(model).values():
            w[w.abs() < w.abs().flatten().quantile(0.96)] = 0
    from sabr import save_checkpoint, sparsity_report

    assert sparsity_report(model).sparsity >= 0.95
    dense = save_checkpoint(model, tmp_path / "dense", meta_for(name, channels, size)).stat().st_size
    sparse = save_sparse(model, tmp_path / "sparse", meta_for(name, channels, size)).stat().st_size
    assert sparse <= 0.12 * dense


@pytest.mark.parametrize("name,channels,size", ARCHS)
def test_shrunk_model_is_smaller_and_equivalent(tmp_path, name, channels, size):
    model = pruned_model(name, channels, size)
    x = real_batch(channels, size)
    small, report = shrink(model, torch.zeros(2, channels, size, size))
    assert report.params_after < 0.8 * report.params_before
    assert report.params_after == sum(p.numel() for p in small.parameters())
    assert any(after < before for before, after in report.layers.values())
    last = list(report.layers)[-1]
    assert report.layers[last] == (10, 10)  # the logits stay
    with torch.no_grad():
        ref = model(x)
        assert (small(x) - ref).abs().max() <= 1e-5
    path = save_shrunk(small, tmp_path / "small", meta_for(name, channels, size), report)
    loaded, meta = load_model(path)
    assert meta["export"]["format"] == "shrunk"
    assert sum(p.numel() for p in loaded.parameters()) == report.params_after
    with torch.no_grad():
        assert (loaded(x) - ref).abs().max() <= 1e-5


def test_shrink_folds_constant_channels_into_the_next_bias():
    """A conv channel with all-zero weights still outputs BN's shift: removing it must keep outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 3, 1), nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[1].bias[1] = 2.0  # channel 1 is the constant relu(2.0 - mean...) > 0
        model[1].running_mean.zero_()
    x = real_batch(1, 8)
    small, report = shrink(model, torch.zeros(2, 1, 8, 8))
    assert report.layers["0"] == (4, 3)
    assert small[3].in_channels == 3
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-5


def test_shrink_keeps_constant_channels_a_padded_conv_reads():
    """Zero padding makes a constant input non-constant at the borders: such a channel must stay."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1),
                          nn.Flatten(), nn.Linear(2 * 8 * 8, 3)).eval()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 1.0
    small, report = shrink(model, torch.zeros(2, 1, 8, 8))
    assert report.layers["0"] == (4, 4)
    x = real_batch(1, 8)
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name,channels,size", ARCHS)
def test_onnx_matches_pytorch(tmp_path, name, channels, size):
    pytest.importorskip("onnxruntime")
    model = pruned_model(name, channels, size)
    if name == "vgg11":  # the shrunk model: the same function, a quarter of the file
        model, _ = shrink(model, torch.zeros(2, channels, size, size))
    x = real_batch(channels, size)
    path, diff = export_onnx(model, tmp_path / "m", meta_for(name, channels, size),
                             torch.zeros(1, channels, size, size), check_input=x)
    assert diff <= 1e-4
    loaded, meta = load_model(path)
    assert meta["classes"] == [str(i) for i in range(10)]
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() <= 1e-4
    assert loaded(x[:1]).shape == (1, 10)  # dynamic batch


def test_onnx_gives_the_calibrated_probabilities_of_eager_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from sabr.calibration import Calibration

    name, channels, size = ARCHS[0]
    model = pruned_model(name, channels, size)
    cal = Calibration(temperature=0.137, threshold=0.61, ood_score="max_logit", ood_threshold=0.57)
    x = real_batch(channels, size)
    path, _ = export_onnx(model, tmp_path / "m", meta_for(name, channels, size) | {"calibration": cal.to_dict()},
                          torch.zeros(1, channels, size, size), check_input=x)
    loaded, meta = load_model(path)
    assert meta["calibration"] == cal.to_dict() and meta["export"]["temperature_in_graph"] == 0.137
    with torch.no_grad():
        eager = Calibration.from_dict(meta["calibration"]).probabilities(model(x))
    assert (loaded.probabilities(x) - eager).abs().max() <= 1e-5
    assert (eager - torch.softmax(model(x).detach(), 1)).abs().max() > 0.01  # the temperature does change them
    sparse = save_sparse(model, tmp_path / "s", meta_for(name, channels, size) | {"calibration": cal.to_dict()})
    assert load_model(sparse)[1]["calibration"] == cal.to_dict()  # the other formats carry it too


def test_load_model_errors(tmp_path):
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "missing.safetensors")
    model = pruned_model(*ARCHS[0])
    path = save_sparse(model, tmp_path / "m", meta_for(*ARCHS[0]))
    meta_path = path.with_suffix(".json")
    meta_path.write_text(meta_path.read_text().replace('"sparse"', '"zipped"'))
    with pytest.raises(SabrError, match="zipped"):
        load_model(path)
    (tmp_path / "model.bin").write_text("x")
    with pytest.raises(CheckpointError, match="unknown model format"):
        load_model(tmp_path / "model.bin")
    with pytest.raises(CheckpointError, match="phase must be one of"):
        load_model(tmp_path, phase="best")
    with pytest.raises(CheckpointError, match="has no pruned checkpoint"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="run folder"):
        load_run(path)  # a file, not a run folder


@pytest.mark.slow
def test_export_cli_round_trips_a_real_run(tmp_path, capsys):
    from sabr.cli import main

    run = tmp_path / "run"
    assert main(["run", "--out", str(run), "--epochs-base", "2", "--epochs-sabr", "1", "--quiet",
                 "--max-per-class", "40", "--sweep", "0.2"]) == 0
    reference, _ = load_model(run)
    x = real_batch(1, 8)
    for fmt in ("sparse", "shrunk", "onnx"):
        out = tmp_path / f"m-{fmt}"
        assert main(["export", "--run", str(run), "--format", fmt, "--out", str(out), "--quiet"]) == 0
        loaded, meta = load_model(out.with_suffix(".onnx" if fmt == "onnx" else ".safetensors"))
        assert meta["export"]["format"] == fmt and len(meta["classes"]) == 10
        with torch.no_grad():
            assert (loaded(x) - reference(x)).abs().max() <= (1e-4 if fmt == "onnx" else 1e-5)
    assert "output channels" in capsys.readouterr().out
    assert main(["export", "--run", str(tmp_path / "nope"), "--format", "sparse", "--quiet"]) == 2


def test_channel_graph_joins_residual_spaces_and_ties_depthwise():
    from sabr.export.graph import trace_channels

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.fc = nn.Linear(4 * 4, 2)

        def forward(self, x):
            y = self.a(x)
            y = y + self.b(y)
            return self.fc(torch.flatten(self.dw(y), 1))

    g, _ = trace_channels(Net().eval(), torch.zeros(1, 3, 2, 2))
    spaces = {tuple(sp.producers): sp for sp in g.spaces.values()}
    joined = spaces[("a", "b")]  # the residual addition made one space of both outputs
    assert [c[0] for c in joined.consumers] == ["b", "dw"] and not joined.locked
    ((src, out),) = g.ties
    assert g.space(src) is joined and g.space(out).producers == ["dw"]
    assert g.space(out).consumers == [("fc", "flatten", 4)]  # fc reads 4 features per channel
    assert spaces[("fc",)].locked  # the logits are never shrunk
