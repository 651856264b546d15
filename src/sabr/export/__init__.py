"""Make the sparsity real: compressed checkpoints, physically smaller models and ONNX files.

Three formats, all written as a weights file plus a JSON file beside it that carries the run's
metadata (``classes``, ``preprocess``, ``model``), so an export is usable wherever a run is:

* ``sparse`` (:mod:`.sparse`, :func:`save_sparse`): only the non-zeros are stored; loading restores
  bit-identical weights.
* ``shrunk`` (:mod:`.shrink`, :func:`shrink`, :func:`save_shrunk`): a smaller dense model with the same
  outputs; which channels move together comes from the channel graph (:mod:`.graph`, a torch.fx trace).
* ``onnx`` (:mod:`.onnx`, :func:`export_onnx`): the (pruned or shrunk) model as ONNX, checked with onnxruntime.
* ``web`` (:mod:`.web`, :func:`export_web`): a static site that runs the recogniser and the elevator in a
  browser with onnxruntime-web; :mod:`sabr.serve` serves it on this machine (``sabr serve``).

:func:`load_model` (:mod:`.load`) is the one loader: it opens any of them, run folders and phase
checkpoints, and returns ``(model, metadata)``. :func:`export_run` (:mod:`.run`) is ``sabr export``.
"""

from .load import check_outputs, load_model, load_run
from .onnx import OnnxModel, export_onnx
from .run import FORMATS, example_input, export_run
from .shrink import ShrinkReport, save_shrunk, shrink
from .sparse import dense_state_dict, save_sparse, sparse_state_dict
from .web import export_web

__all__ = [
    "FORMATS", "OnnxModel", "ShrinkReport", "check_outputs", "dense_state_dict", "example_input", "export_onnx",
    "export_run", "export_web", "load_model", "load_run", "save_shrunk", "save_sparse", "shrink", "sparse_state_dict",
]
