"""TensorBoard logging of a run: ``sabr run --log tensorboard`` writes ``<run>/tensorboard/``.

Each epoch of each phase (``base``, ``sabr``, and ``finetune`` with ``--finetune-epochs``) adds its losses,
accuracies (fractions) and learning rate under ``<phase>/``; in phase 2 also SABR's per-tensor lambdas
(``lambda/<tensor>``), the near-zero and prunable sparsity, the number of frozen tensors, and each freeze as
a text event (``sabr/freeze``). Steps are epochs of the phase. :func:`epoch_scalars` is the one list of figures (the Lightning callback logs the same names).
Needs the real ``tensorboard`` package (``pip install 'torch-sabr[tensorboard]'``).
"""

from __future__ import annotations

from pathlib import Path

ROW_FIGURES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "near_zero_sparsity",
               "prunable_sparsity", "mean_lambda", "frozen")
"""History-row fields logged as ``<phase>/<field>`` when the row has them."""


def epoch_scalars(phase: str, row: dict, lambdas: dict[str, float] | None = None) -> dict[str, float]:
    """``{tag: value}`` of one epoch: the row's :data:`ROW_FIGURES` under ``<phase>/`` and each tensor's
    lambda under ``lambda/<tensor>``."""
    scalars = {f"{phase}/{k}": float(row[k]) for k in ROW_FIGURES if row.get(k) is not None}
    scalars.update({f"lambda/{name}": float(value) for name, value in (lambdas or {}).items()})
    return scalars


class TensorBoardLogger:
    """Writes :func:`epoch_scalars` and freeze events of each epoch to ``log_dir`` (created)."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        from ..checkpoint import make_folder

        self.log_dir = make_folder(log_dir)  # listed in the run's manifest, refused when a link leads out
        self.writer = SummaryWriter(str(self.log_dir))

    def log_epoch(self, phase: str, state: dict) -> None:
        """One finished epoch from a phase's resume state (``rows``, and ``sabr`` in phase 2); flushed."""
        row = state["rows"][-1]
        step = int(row["epoch"])
        lambdas = state["sabr"]["lambdas"] if "sabr" in state else None
        for tag, value in epoch_scalars(phase, row, lambdas).items():
            self.writer.add_scalar(tag, value, step)
        if row.get("froze"):
            self.writer.add_text("sabr/freeze", f"epoch {step}: froze {row['froze']}", step)
        self.writer.flush()
        self._record()

    def close(self) -> None:
        """Close the event file (listed in the run's manifest)."""
        self.writer.close()
        self._record()

    def _record(self) -> None:
        """List the event files (written by tensorboard, not by sabr's write path) in the run's manifest."""
        from ..manifest import note_written

        note_written(*(p for p in self.log_dir.rglob("*") if p.is_file()))


def logger_for(log: str | None, run_folder: str | Path) -> TensorBoardLogger | None:
    """The logger a run's ``log`` setting asks for (``"tensorboard"``: ``<run_folder>/tensorboard/``), or None."""
    return TensorBoardLogger(Path(run_folder) / "tensorboard") if log == "tensorboard" else None
