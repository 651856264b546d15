"""The ``onnx`` export format: the (pruned or shrunk) model as ONNX, checked against PyTorch with onnxruntime.

The graph has two outputs: ``logits`` (raw, what the OOD score is computed on) and ``probs``, the calibrated
probabilities ``softmax(logits / temperature)`` with the temperature of the metadata's ``calibration``
(1 without one); the ``.json`` beside it carries the whole ``calibration`` (threshold, OOD check) too.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..calibration import Calibration
from ..checkpoint import _jsonable, atomic_write, make_folder
from ..errors import SabrError
from ..version import versions
from ._files import plain_meta


def export_onnx(model: nn.Module, path: str | Path, metadata: dict, example_input: torch.Tensor,
                check_input: torch.Tensor | None = None, atol: float = 1e-4) -> tuple[Path, float]:
    """Export to ONNX (dynamic batch, input ``input``, outputs ``logits`` and calibrated ``probs``) and check both
    with onnxruntime.

    Args:
        model: the network (pruned or shrunk).
        path: the ``.onnx`` file; ``metadata`` goes to the ``.json`` beside it.
        example_input: a batch shaped like real inputs (used for tracing).
        check_input: the batch compared between PyTorch and onnxruntime (default: ``example_input``).
            The input height and width are fixed to those of ``example_input`` (the batch is dynamic).
        atol: the largest accepted absolute difference of the logits (the probabilities must agree to ``1e-5``).

    Returns:
        ``(path, max abs difference of the logits)``. Raises :class:`SabrError` when a difference is too large.
    """
    path = Path(path).with_suffix(".onnx")
    make_folder(path.parent)
    model = model.cpu().eval()
    cal = Calibration.from_dict(metadata.get("calibration"))
    exported = _WithProbs(_onnx_friendly(model, example_input.cpu()), cal.temperature).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(exported, (example_input.cpu(),), buf, dynamo=False, input_names=["input"],
                          output_names=["logits", "probs"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}, "probs": {0: "batch"}})
    x = (check_input if check_input is not None else example_input).cpu()
    with torch.no_grad():
        expected = model(x)
    onnx = OnnxModel(buf.getvalue())  # checked in memory: the .onnx and its .json are then written together
    diff = float((onnx(x) - expected).abs().max())
    probs_diff = float((onnx.probabilities(x) - cal.probabilities(expected)).abs().max())
    if diff > atol or probs_diff > PROBS_ATOL:
        raise SabrError(f"the ONNX model differs from PyTorch by {diff:.2e} in its logits (> {atol:g}) or "
                        f"{probs_diff:.2e} in its probabilities (> {PROBS_ATOL:g}); export with opset 17 or report "
                        "the model that fails.")
    meta = plain_meta(metadata) | {"export": {
        "format": "onnx", "max_abs_diff": diff, "probs_max_abs_diff": probs_diff, "outputs": ["logits", "probs"],
        "temperature_in_graph": cal.temperature}, "versions": versions()}
    atomic_write({path: buf.getvalue(), path.with_suffix(".json"): (json.dumps(meta, indent=2, default=_jsonable)
                                                                    + "\n").encode()})
    return path, diff


PROBS_ATOL = 1e-5
"""The largest accepted difference between onnxruntime's and PyTorch's calibrated probabilities."""


class _WithProbs(nn.Module):
    """``model`` with a second output: the calibrated probabilities ``softmax(logits / temperature)``."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits / self.temperature, dim=-1)


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

    ``x`` is a float32 tensor ``(N, C, H, W)``; the result is a CPU tensor ``(N, classes)``. ``path`` may also be
    the model's bytes (then ``self.path`` is ``None``).
    ``threads`` sets onnxruntime's intra-op threads (default: its own choice); the graph runs sequentially
    with one inter-op thread, so ``threads`` is the whole thread count (what :mod:`sabr.bench` measures with).
    """

    def __init__(self, path: str | Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = None if isinstance(path, bytes) else Path(path)
        self.session = ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["logits"] if self._has("logits") else None,
                               {self.input_name: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's calibrated ``probs`` output (``softmax(logits / temperature)``) for ``x``; a file exported
        before it had that output gives ``softmax(logits)``."""
        if not self._has("probs"):
            return torch.softmax(self(x), dim=-1)
        return torch.from_numpy(self.session.run(["probs"], {self.input_name: x.detach().cpu().float().numpy()})[0])

    def _has(self, name: str) -> bool:
        return any(o.name == name for o in self.session.get_outputs())

    def eval(self) -> "OnnxModel":
        """No-op, so that code written for ``nn.Module`` can call it."""
        return self
