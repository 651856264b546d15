"""The ``onnx`` export format: the (pruned or shrunk) model as ONNX, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import atomic_write, make_folder, write_json
from ..errors import SabrError
from ._files import plain_meta


def export_onnx(model: nn.Module, path: str | Path, metadata: dict, example_input: torch.Tensor,
                check_input: torch.Tensor | None = None, atol: float = 1e-4) -> tuple[Path, float]:
    """Export to ONNX (dynamic batch, input ``input``, output ``logits``) and check it with onnxruntime.

    Args:
        model: the network (pruned or shrunk).
        path: the ``.onnx`` file; ``metadata`` goes to the ``.json`` beside it.
        example_input: a batch shaped like real inputs (used for tracing).
        check_input: the batch compared between PyTorch and onnxruntime (default: ``example_input``).
            The input height and width are fixed to those of ``example_input`` (the batch is dynamic).
        atol: the largest accepted absolute difference of the logits.

    Returns:
        ``(path, max abs difference)``. Raises :class:`SabrError` when the difference exceeds ``atol``.
    """
    path = Path(path).with_suffix(".onnx")
    make_folder(path.parent)
    model = model.cpu().eval()
    exported = _onnx_friendly(model, example_input.cpu())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(exported, (example_input.cpu(),), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17)
    atomic_write({path: buf.getvalue()})
    x = (check_input if check_input is not None else example_input).cpu()
    with torch.no_grad():
        expected = model(x)
    got = OnnxModel(path)(x)
    diff = float((got - expected).abs().max())
    if diff > atol:
        raise SabrError(f"the ONNX model differs from PyTorch by {diff:.2e} (> {atol:g}); export with opset 17 "
                        "or report the model that fails.")
    write_json(path.with_suffix(".json"), plain_meta(metadata) | {"export": {"format": "onnx", "max_abs_diff": diff}})
    return path, diff


class _PoolAsMatmul(nn.Module):
    """Adaptive average pooling for one fixed input size as two matrix products (exportable to ONNX
    even when the output size does not divide the input size, e.g. VGG's 7x7 pool after a 2x2 map)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()

        def matrix(n_in: int, n_out: int) -> torch.Tensor:
            m = torch.zeros(n_out, n_in)
            for i in range(n_out):
                start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
                m[i, start:end] = 1.0 / (end - start)
            return m

        self.register_buffer("rows", matrix(in_hw[0], out_hw[0]))
        self.register_buffer("cols", matrix(in_hw[1], out_hw[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows @ x @ self.cols.t()


def _onnx_friendly(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose AdaptiveAvgPool2d layers that ONNX cannot express are matrix products."""
    seen: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(
        name, (tuple(i[0].shape[2:]), tuple(o.shape[2:]))))
        for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    todo = {n: io for n, io in seen.items() if any(i % o for i, o in zip(*io))}
    if not todo:
        return model
    model = copy.deepcopy(model)
    for name, (in_hw, out_hw) in todo.items():
        model.set_submodule(name, _PoolAsMatmul(in_hw, out_hw))
    return model


class OnnxModel:
    """An onnxruntime session that behaves like a model: ``OnnxModel(path)(x)`` -> logits tensor.

    ``x`` is a float32 tensor ``(N, C, H, W)``; the result is a CPU tensor ``(N, classes)``.
    ``threads`` sets onnxruntime's intra-op threads (default: its own choice); the graph runs sequentially
    with one inter-op thread, so ``threads`` is the whole thread count (what :mod:`sabr.bench` measures with).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)

    def eval(self) -> "OnnxModel":
        """No-op, so that code written for ``nn.Module`` can call it."""
        return self
