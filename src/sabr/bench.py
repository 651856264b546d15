"""CPU latency and file sizes of a pruned model, its shrunk copy and a sparse-kernel path.

Pure measurement: every function returns data; ``sabr bench`` prints it. Latencies are medians of
many single calls after a warm-up, with the paths interleaved call by call in the same process, so
that a noisy shared CPU slows every path alike and the ratios stay meaningful.
"""

from __future__ import annotations

import copy
import gzip
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .export import example_input, load_model, save_sparse, save_shrunk, shrink
from .metrics import count_macs

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


def check_options(batch_sizes: tuple[int, ...] = (1, 32), runs: int = 50, warmup: int = 5, max_density: float = 0.3,
                  threads: int | None = None) -> None:
    """Refuse options :func:`bench_model` cannot measure with (raises :class:`~sabr.errors.ConfigError`)."""
    if not batch_sizes or any(int(b) != b or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be whole numbers >= 1, got {list(batch_sizes)}.")
    if runs < 1 or warmup < 0:
        raise ConfigError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}.")
    if not 0 <= max_density <= 1:  # NaN fails this too
        raise ConfigError(f"--max-density is a fraction in [0, 1], got {max_density}.")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}.")


def bench_model(model: nn.Module, metadata: dict, batch_sizes: tuple[int, ...] = (1, 32), runs: int = 50,
                warmup: int = 5, max_density: float = 0.3, threads: int | None = None) -> dict:
    """Latency (per batch size) and file sizes of a pruned model and of its faster forms.

    Paths: ``dense`` (the pruned model as it is), ``shrunk`` (:func:`~sabr.export.shrink`), ``sparse``
    (:func:`sparsify` of the pruned model) and ``shrunk+sparse``. Each latency comes with its speedup
    over ``dense``; ``ideal_speedup`` is ``1 / (1 - macs_reduction)``, what the MAC count promises.

    Args:
        model, metadata: as returned by :func:`~sabr.load_run`.
        batch_sizes: batch sizes to time.
        runs, warmup: timed and untimed calls per path.
        max_density: see :func:`sparsify`.
        threads: ``torch.set_num_threads`` during the measurement (default: leave as is).
    """
    check_options(batch_sizes, runs, warmup, max_density, threads)
    model = model.cpu().eval()
    x1 = example_input(metadata, 1)
    macs = count_macs(model, x1)
    small, rep = shrink(model, example_input(metadata, 2))
    sparse, switched = sparsify(model, max_density)
    small_sparse, _ = sparsify(small, max_density)
    paths = {"dense": model, "shrunk": small, "sparse": sparse, "shrunk+sparse": small_sparse}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        result = {"threads": torch.get_num_threads(), "runs": runs, "warmup": warmup,
                  "macs_dense": macs.macs_dense, "macs_pruned": macs.macs_pruned,
                  "macs_reduction": macs.reduction, "ideal_speedup": 1.0 / max(1.0 - macs.reduction, 1e-12),
                  "params_dense": rep.params_before, "params_shrunk": rep.params_after,
                  "sparse_layers": switched, "latency": {}, "max_abs_diff": {}}
        g = torch.Generator().manual_seed(0)
        for b in batch_sizes:
            x = torch.randn((b, *x1.shape[1:]), generator=g)
            with torch.no_grad():
                ref = model(x)
                for name, fn in paths.items():
                    result["max_abs_diff"][name] = max(result["max_abs_diff"].get(name, 0.0),
                                                       float((fn(x) - ref).abs().max()))
            t = latencies(paths, x, runs, warmup)
            result["latency"][str(b)] = {k: {"seconds": v, "speedup": t["dense"] / v} for k, v in t.items()}
            log.info("batch %d: %s", b, ", ".join(f"{k} {1e3 * v:.2f} ms" for k, v in t.items()))
    finally:
        torch.set_num_threads(old_threads)
    result["sizes"] = file_sizes(model, metadata, small)
    return result


def bench_run(run_dir: str | Path, phase: str = "pruned", trust_model_code: bool = False, **kwargs) -> dict:
    """:func:`bench_model` on one phase of a finished run (default: the pruned model), or on a checkpoint file
    (:func:`sabr.save_checkpoint`); ``trust_model_code``: see :func:`~sabr.export.load_model`."""
    check_options(**kwargs)
    model, meta = load_model(run_dir, phase, trust_model_code=trust_model_code)
    result = bench_model(model, meta, **kwargs)
    result["run"] = str(run_dir)
    result["model"] = meta.get("model", {})
    return result
