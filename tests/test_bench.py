"""Sparse kernels compute what the dense layers compute; the benchmark returns complete figures."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from sabr import Preprocess, create_model, load_dataset, prune
from sabr.bench import (SparseConv2d, SparseLinear, bench_model, file_sizes, format_table, latencies,
                        measure_latency, sparsify)
from sabr.errors import ConfigError


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
    assert set(r["latency"]["1"]) == {"dense", "shrunk", "sparse", "shrunk+sparse", "ort_dense", "ort_shrunk"}
    assert r["latency"]["1"]["dense"]["speedup"] == 1.0
    assert r["onnxruntime"] and r["latency"]["4"]["ort_shrunk"]["speedup"] > 0
    assert r["ideal_speedup"] == pytest.approx(1 / (1 - r["macs_reduction"]))
    assert all(d <= 1e-4 for d in r["max_abs_diff"].values())
    s = r["sizes"]
    assert s["sparse"] < s["dense"] and s["sparse_gzip"] <= s["sparse"]
    assert s == file_sizes(model, meta, None) | {"shrunk": s["shrunk"]}


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x[:, :, 1:-1, 1:-1].flatten(1)  # the shape of a 3x3 convolution's output (one channel in each)


def test_measure_latency_times_eager_and_onnxruntime_with_the_thread_count():
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Flatten()).eval(), Doubler()
    old = torch.get_num_threads()
    r = measure_latency({"a": a, "b": b}, torch.zeros(1, 3, 6, 6), batch_sizes=(1, 3), runs=2, warmup=1,
                        threads=1, onnx=["b"])
    assert torch.get_num_threads() == old and r["threads"] == 1
    assert set(r["latency"]["3"]) == {"a", "b", "ort_b"} and r["latency"]["1"]["a"]["speedup"] == 1.0
    assert r["latency"]["1"]["ort_b"]["speedup"] == pytest.approx(r["latency"]["1"]["a"]["seconds"]
                                                                  / r["latency"]["1"]["ort_b"]["seconds"])
    assert r["max_abs_diff"]["a"] == 0 and r["max_abs_diff"]["b"] > 1  # another function than a
    assert r["max_abs_diff"]["ort_b"] <= 1e-5  # ONNX Runtime against b itself
    assert measure_latency({"a": a}, torch.zeros(1, 3, 6, 6), (1,), 1, 0, onnx=())["onnxruntime"] is None
    with pytest.raises(ConfigError, match="onnx names"):
        measure_latency({"a": a}, torch.zeros(1, 3, 6, 6), onnx=["c"])


def test_without_onnxruntime_the_ort_paths_are_left_out_with_a_warning(monkeypatch, caplog):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime"
                        else find_spec(name, *a))
    r = measure_latency({"b": Doubler()}, torch.zeros(1, 1, 3, 3), (1,), runs=1, warmup=0)
    assert set(r["latency"]["1"]) == {"b"} and r["onnxruntime"] is None
    assert "torch-sabr[export]" in caplog.text


def test_format_table_puts_eager_and_onnxruntime_side_by_side():
    t = lambda s, x: {"seconds": s, "speedup": x}  # noqa: E731
    r = {"model": {"name": "m"}, "macs_dense": 100, "macs_pruned": 50, "macs_reduction": 0.5, "ideal_speedup": 2.0,
         "threads": 1, "runs": 3, "onnxruntime": "1.0",
         "latency": {"1": {"dense": t(0.002, 1.0), "sparse": t(0.004, 0.5), "ort_dense": t(0.001, 2.0)}},
         "max_abs_diff": {"dense": 0.0, "sparse": 1e-6, "ort_dense": 2e-6}, "sizes": {"dense": 10, "sparse": 5}}
    lines = format_table(r).splitlines()
    assert "eager ms" in lines[1] and "ORT ms" in lines[1] and "onnxruntime 1.0" in lines[0]
    assert lines[2].split() == ["1", "dense", "2.000", "1.00x", "1.000", "2.00x", "2.00x", "0.0e+00", "2.0e-06"]
    assert lines[3].split() == ["1", "sparse", "4.000", "0.50x", "-", "-", "2.00x", "1.0e-06", "-"]
    assert lines[4].startswith("files: dense 10 bytes (100.0%), sparse 5 bytes (50.0%)")
