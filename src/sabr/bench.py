"""CPU latency and file sizes of a pruned model, its shrunk copy and a sparse-kernel path, eager and in
ONNX Runtime.

Pure measurement: every function returns data; ``sabr bench`` prints it (:func:`format_table`). Latencies
are medians of many single calls after a warm-up, with the paths interleaved call by call in the same
process, so that a noisy shared CPU slows every path alike and the ratios stay meaningful.
:func:`measure_latency` times any set of models that way (eager PyTorch, and each model exported to ONNX
and run by onnxruntime with the same thread count).
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import logging
import math
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import MAX_BATCH_SIZE
from .errors import ConfigError
from .export import OnnxModel, check_outputs, example_input, export_onnx, load_model, save_sparse, save_shrunk, shrink
from .metrics import count_pruned_macs

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sparse-kernel path
def _csr(w: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and measured here
        warnings.simplefilter("ignore", UserWarning)
        return w.to_sparse_csr()


class SparseLinear(nn.Module):
    """A Linear layer whose weight is a CSR sparse matrix: only the non-zeros are multiplied."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = _csr(linear.weight.detach())
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = (self.weight @ x.reshape(-1, x.shape[-1]).t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], -1)


class SparseConv2d(nn.Module):
    """A Conv2d (groups=1) computed as CSR weight ``(out, in*kh*kw)`` times the unfolded input."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = _csr(conv.weight.detach().reshape(conv.out_channels, -1))
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.out_channels = conv.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (conv.kernel_size, conv.stride,
                                                                       conv.padding, conv.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0):
            cols = x.reshape(n, x.shape[1], h * w)
        else:
            cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (n, c*k*k, L)
        if n == 1:
            out = self.weight @ cols[0]
        else:
            out = self.weight @ cols.transpose(0, 1).reshape(cols.shape[1], -1)
            out = out.reshape(self.out_channels, n, -1).transpose(0, 1)
        out = out.reshape(n, self.out_channels, oh, ow)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out


def sparsify(model: nn.Module, max_density: float = 0.3) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose Linear and (groups=1) Conv2d layers with few non-zeros use sparse kernels.

    Args:
        model: the (pruned) network.
        max_density: a layer switches to CSR when its fraction of non-zero weights is at most this
            (dense kernels win above it on a CPU).

    Returns:
        ``(copy in eval mode, names of the layers that were switched)``.
    """
    model = copy.deepcopy(model).cpu().eval()
    switched = []
    for name, m in list(model.named_modules()):
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or (isinstance(m, nn.Conv2d) and m.groups != 1):
            continue
        density = float(torch.count_nonzero(m.weight)) / m.weight.numel()
        if density > max_density:
            continue
        new = SparseLinear(m) if isinstance(m, nn.Linear) else SparseConv2d(m)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        switched.append(name)
    return model, switched


# --------------------------------------------------------------------------- measurements
@torch.no_grad()
def latencies(paths: dict[str, Callable], x: torch.Tensor, runs: int = 50, warmup: int = 5) -> dict[str, float]:
    """Median seconds per call of each path on ``x``, interleaved call by call (same process, same load)."""
    for fn in paths.values():
        for _ in range(warmup):
            fn(x)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(runs):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def file_sizes(model: nn.Module, metadata: dict, shrunk: nn.Module | None = None) -> dict[str, int]:
    """Bytes of the dense safetensors file, the sparse export, the sparse export gzipped (and the shrunk file)."""
    from .checkpoint import save_checkpoint

    metadata = {k: v for k, v in metadata.items() if k != "transform"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {"dense": save_checkpoint(model, tmp / "dense", metadata).stat().st_size}
        sparse = save_sparse(model, tmp / "sparse", metadata)
        sizes["sparse"] = sparse.stat().st_size
        sizes["sparse_gzip"] = len(gzip.compress(sparse.read_bytes(), compresslevel=9, mtime=0))
        if shrunk is not None:
            sizes["shrunk"] = save_shrunk(shrunk, tmp / "shrunk", metadata).stat().st_size
    return sizes


MAX_RUNS = 100_000
"""The most timed (or warm-up) calls per path and batch size."""


def check_options(batch_sizes: tuple[int, ...] = (1, 32), runs: int = 50, warmup: int = 5, max_density: float = 0.3,
                  threads: int | None = None) -> None:
    """Refuse options :func:`bench_model` cannot measure with (raises :class:`~sabr.errors.ConfigError`)."""
    if not batch_sizes or any(int(b) != b or not 1 <= b <= MAX_BATCH_SIZE for b in batch_sizes):
        raise ConfigError(f"batch sizes must be whole numbers >= 1 and <= {MAX_BATCH_SIZE:,}, got {list(batch_sizes)}.")
    if not (1 <= runs <= MAX_RUNS and 0 <= warmup <= MAX_RUNS):
        raise ConfigError(f"--runs must be >= 1 and --warmup >= 0 (both <= {MAX_RUNS:,}), got {runs} and {warmup}.")
    if not 0 <= max_density <= 1:  # NaN fails this too
        raise ConfigError(f"--max-density is a fraction in [0, 1], got {max_density}.")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}.")


def _onnx_sessions(models: dict[str, nn.Module], names: Iterable[str], sample: torch.Tensor, threads: int,
                   folder: Path) -> dict[str, OnnxModel]:
    """``{"ort_<name>": session}`` for the named models, exported to ONNX in ``folder``; empty, with a warning,
    when onnxruntime is not installed."""
    names = list(names)
    if not names:
        return {}
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        log.warning("onnx or onnxruntime is not installed, so the ONNX Runtime latencies are left out "
                    "(pip install 'torch-sabr[export]').")
        return {}
    sessions = {}
    for i, name in enumerate(names):
        path, _ = export_onnx(models[name], folder / f"model{i}", {}, sample, atol=math.inf)  # checked per batch
        sessions[f"ort_{name}"] = OnnxModel(path, threads)
    return sessions


def measure_latency(models: dict[str, nn.Module], sample: torch.Tensor, batch_sizes: tuple[int, ...] = (1, 32),
                    runs: int = 50, warmup: int = 5, threads: int | None = None,
                    onnx: Iterable[str] | None = None) -> dict:
    """Median CPU latency of several models, eager and in ONNX Runtime, interleaved call by call.

    Args:
        models: name -> network (run on the CPU in eval mode). The first is the reference: every
            ``speedup`` is a ratio within one runtime, the reference's latency divided by the path's (eager
            paths against the eager reference, ``ort_`` paths against ``ort_<reference>``; against the eager
            reference when the reference itself is not timed in ONNX Runtime).
        sample: one input ``(1, C, H, W)``; each batch size gets a batch of that shape drawn from a
            normal distribution (seed 0).
        batch_sizes, runs, warmup: as in :func:`bench_model`.
        threads: torch threads during the measurement, and onnxruntime's intra-op threads (one inter-op
            thread, sequential execution); default: torch's current count.
        onnx: names of the models to also export to ONNX and time with onnxruntime, as ``ort_<name>``
            (default: all). Skipped, with a logged warning, when onnxruntime is not installed.

    Returns:
        ``{"threads", "runs", "warmup", "onnxruntime": its version or None, "latency": {str(batch): {path:
        {"seconds", "speedup"}}}, "max_abs_diff": {path: float}}``. ``max_abs_diff`` is the largest absolute
        logit difference over the batches: of an eager path from the first model (meaningful where the
        models compute the same function, as in :func:`bench_model`), of an ``ort_`` path from its own
        eager model; ``inf`` where the shapes differ.
    """
    check_options(batch_sizes, runs, warmup, 0.0, threads)
    unknown = sorted(set(onnx or ()) - set(models))
    if not models or unknown:
        raise ConfigError(f"measure_latency needs at least one model, and onnx names among {sorted(models)}; "
                          f"got {sorted(models) if not models else unknown}.")
    models = {k: m.cpu().eval() for k, m in models.items()}
    reference = next(iter(models))
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ort = _onnx_sessions(models, models if onnx is None else onnx, sample.cpu(), torch.get_num_threads(),
                                 Path(tmp))
            result = {"threads": torch.get_num_threads(), "runs": runs, "warmup": warmup,
                      "onnxruntime": _ort_version() if ort else None, "latency": {}, "max_abs_diff": {}}
            paths: dict[str, Callable] = {**models, **ort}
            g = torch.Generator().manual_seed(0)
            for b in batch_sizes:
                x = torch.randn((b, *sample.shape[1:]), generator=g)
                _update_diffs(result["max_abs_diff"], paths, reference, x)
                t = latencies(paths, x, runs, warmup)
                result["latency"][str(b)] = {k: {"seconds": v, "speedup": t[_same_runtime(k, reference, t)] / v}
                                             for k, v in t.items()}
                log.info("batch %d: %s", b, ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in t.items()))
    finally:
        torch.set_num_threads(old_threads)
    return result


def _same_runtime(path: str, reference: str, times: dict[str, float]) -> str:
    """The path ``path``'s speedup is measured against: the reference in the same runtime."""
    ort_reference = f"ort_{reference}"
    return ort_reference if path.startswith("ort_") and ort_reference in times else reference


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


@torch.no_grad()
def _update_diffs(diffs: dict[str, float], paths: dict[str, Callable], reference: str, x: torch.Tensor) -> None:
    """Raise each path's ``diffs`` entry to its largest absolute difference on ``x`` (see :func:`measure_latency`)."""
    eager = {k: fn(x) for k, fn in paths.items() if not k.startswith("ort_")}
    for name, fn in paths.items():
        ref = eager[name[4:]] if name.startswith("ort_") else eager[reference]
        out = fn(x) if name.startswith("ort_") else eager[name]
        diff = float((out - ref).abs().max()) if out.shape == ref.shape else math.inf
        diffs[name] = max(diffs.get(name, 0.0), diff)


def bench_model(model: nn.Module, metadata: dict, batch_sizes: tuple[int, ...] = (1, 32), runs: int = 50,
                warmup: int = 5, max_density: float = 0.3, threads: int | None = None, onnx: bool = True) -> dict:
    """Latency (per batch size) and file sizes of a pruned model and of its faster forms.

    Paths: ``dense`` (the pruned model as it is), ``shrunk`` (:func:`~sabr.export.shrink`), ``sparse``
    (:func:`sparsify` of the pruned model) and ``shrunk+sparse``, all eager PyTorch; with ``onnx``, also
    ``ort_dense`` and ``ort_shrunk`` (the dense and shrunk models in ONNX Runtime, see
    :func:`measure_latency`). Each latency comes with its speedup over ``dense`` in the same runtime (ONNX
    Runtime shrunk against ONNX Runtime dense); ``ideal_speedup`` is ``macs_dense / macs_pruned``, what the MAC
    count promises (:func:`~sabr.metrics.count_pruned_macs`, the MACs of the run's headline and summary).

    Args:
        model: the model as returned by :func:`~sabr.load_run`.
        metadata: its metadata, as returned by :func:`~sabr.load_run`.
        batch_sizes: batch sizes to time.
        runs: timed calls per path.
        warmup: untimed calls per path before them.
        max_density: see :func:`sparsify`.
        threads: ``torch.set_num_threads`` (and onnxruntime's threads) during the measurement (default:
            leave as is).
        onnx: also time the ONNX Runtime paths (default True; skipped with a warning without onnxruntime).
    """
    check_options(batch_sizes, runs, warmup, max_density, threads)
    model = model.cpu().eval()
    x1 = example_input(metadata, 1)
    macs = count_pruned_macs(model, x1)
    small, rep = shrink(model, example_input(metadata, 2))
    sparse, switched = sparsify(model, max_density)
    small_sparse, _ = sparsify(small, max_density)
    paths = {"dense": model, "shrunk": small, "sparse": sparse, "shrunk+sparse": small_sparse}
    timing = measure_latency(paths, x1, batch_sizes, runs, warmup, threads, ("dense", "shrunk") if onnx else ())
    result = {"threads": timing["threads"], "runs": runs, "warmup": warmup,
              "macs_dense": macs.macs_dense, "macs_pruned": int(round(macs.macs_pruned)),
              "macs_reduction": macs.reduction, "ideal_speedup": 1.0 / max(1.0 - macs.reduction, 1e-12),
              "params_dense": rep.params_before, "params_shrunk": rep.params_after, "sparse_layers": switched,
              "onnxruntime": timing["onnxruntime"], "latency": timing["latency"],
              "max_abs_diff": timing["max_abs_diff"]}
    result["sizes"] = file_sizes(model, metadata, small)
    return result


def format_table(result: dict) -> str:
    """:func:`bench_model`'s (or :func:`bench_run`'s) figures as a text table: per batch size and model form,
    eager and ONNX Runtime latency side by side, each with its speedup over ``dense`` in the same runtime, next
    to the ideal speedup and the largest output differences."""
    r = result
    lines = [f"{r.get('model', {}).get('name', '?')}: MACs {r['macs_dense']:,} -> {int(r['macs_pruned']):,} "
             f"({100 * r['macs_reduction']:.2f}% fewer), ideal speedup {r['ideal_speedup']:.2f}x, "
             f"{r['threads']} thread(s), median of {r['runs']} runs, onnxruntime {r.get('onnxruntime') or 'not used'}; "
             "each speedup is over dense in the same runtime",
             f"{'batch':>5}  {'path':<14} {'eager ms':>9} {'speedup':>8} {'ORT ms':>9} {'speedup':>8} {'ideal':>6}"
             f"  {'max |diff|':>10} {'ORT |diff|':>10}"]
    for b, paths in r["latency"].items():
        for name, t in paths.items():
            if name.startswith("ort_"):
                continue
            o = paths.get(f"ort_{name}")
            ort = (f"{1e3 * o['seconds']:>9.3f} {o['speedup']:>7.2f}x" if o else f"{'-':>9} {'-':>8}")
            ort_diff = f"{r['max_abs_diff'][f'ort_{name}']:>10.1e}" if o else f"{'-':>10}"
            lines.append(f"{b:>5}  {name:<14} {1e3 * t['seconds']:>9.3f} {t['speedup']:>7.2f}x {ort} "
                         f"{r['ideal_speedup']:>5.2f}x  {r['max_abs_diff'][name]:>10.1e} {ort_diff}")
    s = r["sizes"]
    lines.append("files: " + ", ".join(f"{k} {v:,} bytes ({100 * v / s['dense']:.1f}%)" for k, v in s.items()))
    return "\n".join(lines)


def bench_run(run_dir: str | Path, phase: str = "pruned", trust_model_code: bool = False, onnx: bool = True,
              **kwargs) -> dict:
    """:func:`bench_model` on one phase of a finished run (default: the pruned model), or on a checkpoint file
    (:func:`sabr.save_checkpoint`); ``trust_model_code``: see :func:`~sabr.export.load_model`."""
    check_options(**kwargs)
    model, meta = load_model(run_dir, phase, trust_model_code=trust_model_code)
    check_outputs(model, meta, run_dir)
    result = bench_model(model, meta, onnx=onnx, **kwargs)
    result["run"] = str(run_dir)
    result["model"] = meta.get("model", {})
    return result
