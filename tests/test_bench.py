"""Sparse kernels compute what the dense layers compute; the benchmark returns complete figures."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from sabr import Preprocess, create_model, load_dataset, prune
from sabr.bench import SparseConv2d, SparseLinear, bench_model, file_sizes, latencies, sparsify


def real_batch(n: int = 8) -> torch.Tensor:
    pre = Preprocess(8, 1)
    return pre.normalize(load_dataset("digits", pre, max_per_class=1, progress=False).images[:n])


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 0, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_sparse_conv_matches_dense(stride, padding, kernel, batch):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding)
    with torch.no_grad():
        conv.weight[conv.weight.abs() < 0.2] = 0
    x = torch.randn(batch, 4, 9, 9)
    with torch.no_grad():
        assert torch.allclose(SparseConv2d(conv)(x), conv(x), atol=1e-5)


def test_sparse_linear_matches_dense():
    torch.manual_seed(0)
    lin = nn.Linear(20, 7)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.15] = 0
        for x in (torch.randn(1, 20), torch.randn(5, 20)):
            assert torch.allclose(SparseLinear(lin)(x), lin(x), atol=1e-6)


def test_sparsify_switches_only_sparse_layers():
    torch.manual_seed(0)
    model = create_model("compact_cnn", 10, 1, 8).eval()
    prune(model, teta1=1.0)
    with torch.no_grad():
        model.features[0].weight.fill_(1.0)  # dense: stays a Conv2d
        model.classifier[0].weight[model.classifier[0].weight.abs() < 0.05] = 0
    fast, switched = sparsify(model, max_density=0.3)
    assert "features.0" not in switched and "classifier.0" in switched
    assert isinstance(fast.classifier[0], SparseLinear)
    x = real_batch()
    with torch.no_grad():
        assert (fast(x) - model(x)).abs().max() <= 1e-5


def test_latencies_are_medians_per_path(monkeypatch):
    lin = nn.Linear(8, 4).eval()
    t = latencies({"a": lin, "b": lin}, torch.randn(2, 8), runs=5, warmup=1)
    assert set(t) == {"a", "b"} and all(math.isfinite(v) and 0 < v < 1 for v in t.values())
    # with a fake clock: warm-up calls first, then the paths interleaved call by call, the median of the timed calls
    clock, calls = [0.0], []

    def path(name, seconds):
        it = iter(seconds)

        def call(x):
            calls.append(name)
            clock[0] += next(it)
        return call

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    t = latencies({"a": path("a", [9, 9, 1, 3, 100, 3, 4]), "b": path("b", [9, 9, 0.5, 0.25, 0.5, 7, 0.5])},
                  torch.zeros(1), runs=5, warmup=2)
    assert t == {"a": 3, "b": 0.5}
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 5


def test_bench_model_reports_latency_sizes_and_ideal():
    torch.manual_seed(0)
    model = create_model("compact_cnn", 10, 1, 8).eval()
    prune(model, teta1=1.0)
    meta = {"model": {"name": "compact_cnn", "num_classes": 10, "in_chans": 1, "image_size": 8},
            "classes": [str(i) for i in range(10)], "preprocess": Preprocess(8, 1).to_dict()}
    r = bench_model(model, meta, batch_sizes=(1, 4), runs=3, warmup=1)
    assert set(r["latency"]) == {"1", "4"}
    assert set(r["latency"]["1"]) == {"dense", "shrunk", "sparse", "shrunk+sparse"}
    assert r["latency"]["1"]["dense"]["speedup"] == 1.0
    assert r["ideal_speedup"] == pytest.approx(1 / (1 - r["macs_reduction"]))
    assert all(d <= 1e-4 for d in r["max_abs_diff"].values())
    s = r["sizes"]
    assert s["sparse"] < s["dense"] and s["sparse_gzip"] <= s["sparse"]
    assert s == file_sizes(model, meta, None) | {"shrunk": s["shrunk"]}
