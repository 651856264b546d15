"""The run folder: every file name a run writes, when a folder may be used, config and resume-state I/O.

Layout of ``<out>/`` (see :class:`RunDir`)::

    config.yaml            the resolved settings (written first; ``sabr run --resume`` reads them back)
    skipped_images.txt     unreadable image files left out of the dataset, if any
    resume.safetensors     the last finished epoch's full training state (removed when the run ends)
    history_<phase>.csv    one row per epoch of ``base``, ``sabr`` and ``finetune``
    sabr_state.json        SABR's final state (lambdas, history, frozen tensors)
    base / sabr / pruned   checkpoints (``.safetensors`` + ``.json``)
    summary.json           the results (written last), ``summary.md`` and ``lambdas.csv`` beside it
    tradeoff.json / .png   ``sabr prune --run``'s re-pruning curve
    export/                ``sabr export``'s files
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path

from .checkpoint import PHASES, atomic_write
from .config import load_yaml
from .errors import CheckpointError, SabrError
from .resume import load_state, save_state


class RunDir:
    """One run folder: its file names (attributes and methods below) and the rules for using it.

    Args:
        path: the folder (it need not exist yet: :meth:`open` creates it).
    """

    CONFIG = "config.yaml"
    SUMMARY_JSON = "summary.json"
    SUMMARY_MD = "summary.md"
    LAMBDAS = "lambdas.csv"
    SABR_STATE = "sabr_state.json"
    RESUME = "resume.safetensors"
    SKIPPED = "skipped_images.txt"
    EXPORT = "export"
    TRADEOFF_JSON = "tradeoff.json"
    TRADEOFF_PNG = "tradeoff.png"
    CHECKPOINTS = PHASES

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def default(cls, dataset_name: str, model_name: str) -> "RunDir":
        """``runs/<dataset>-<model>-<YYYYmmdd-HHMMSS>``: where a run goes without ``--out``."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls(Path("runs") / f"{dataset_name}-{model_name}-{stamp}")

    # ------------------------------------------------------------------ file names
    def file(self, name: str) -> Path:
        """``<folder>/<name>``."""
        return self.path / name

    config = property(lambda self: self.file(self.CONFIG), doc="``config.yaml``")
    summary_json = property(lambda self: self.file(self.SUMMARY_JSON), doc="``summary.json``")
    summary_md = property(lambda self: self.file(self.SUMMARY_MD), doc="``summary.md``")
    lambdas_csv = property(lambda self: self.file(self.LAMBDAS), doc="``lambdas.csv``")
    sabr_state = property(lambda self: self.file(self.SABR_STATE), doc="``sabr_state.json``")
    resume_state = property(lambda self: self.file(self.RESUME), doc="``resume.safetensors``")
    skipped_images = property(lambda self: self.file(self.SKIPPED), doc="``skipped_images.txt``")
    tradeoff_json = property(lambda self: self.file(self.TRADEOFF_JSON), doc="``tradeoff.json``")
    tradeoff_png = property(lambda self: self.file(self.TRADEOFF_PNG), doc="``tradeoff.png``")
    export_dir = property(lambda self: self.file(self.EXPORT), doc="``export/``")

    def history(self, phase: str) -> Path:
        """``history_<phase>.csv`` (``base``, ``sabr`` or ``finetune``)."""
        return self.path / f"history_{phase}.csv"

    def checkpoint(self, phase: str) -> Path:
        """A phase checkpoint's path without suffix (``base``, ``sabr`` or ``pruned``; see
        :func:`sabr.checkpoint.save_checkpoint`)."""
        if phase not in self.CHECKPOINTS:
            raise SabrError(f"unknown checkpoint {phase!r}; a run folder holds {', '.join(self.CHECKPOINTS)}.")
        return self.path / phase

    # ------------------------------------------------------------------ opening rules
    def holds_run(self) -> bool:
        """True when the folder holds a run (its config or a resume state)."""
        return self.path.is_dir() and (self.config.exists() or self.resume_state.exists())

    def no_run_error(self) -> CheckpointError:
        """The error for a folder that holds no run to resume."""
        return CheckpointError(f"{self.path} holds no run to resume (no {self.CONFIG}); pass the --out folder of "
                               "a `sabr run`, or start a new run without --resume.")

    def check(self, overwrite: bool = False, resume: bool = False) -> None:
        """Refuse a folder that cannot take this run (nothing is created).

        A new run refuses a folder holding another run unless ``overwrite``; ``resume`` needs a run's
        config and refuses a finished run (its ``summary.json`` written and no resume state left).
        """
        if self.path.exists() and not self.path.is_dir():
            raise SabrError(f"--out {self.path} is a file, not a folder; choose another --out.")
        if resume:
            if not self.config.is_file():
                raise self.no_run_error()
            if self.summary_json.is_file() and not self.resume_state.exists():
                raise SabrError(f"the run in {self.path} has already finished ({self.SUMMARY_JSON} is written); "
                                "nothing to resume. Use `sabr prune --run` to re-prune it, or --overwrite to train "
                                "it again.")
        elif self.holds_run() and not overwrite:
            raise SabrError(f"{self.path} already holds a run; choose another --out, pass --resume {self.path} to "
                            "continue it, or --overwrite to replace it.")

    def open(self, overwrite: bool = False, resume: bool = False) -> "RunDir":
        """:meth:`check`, then create the folder; ``overwrite`` also drops an old resume state."""
        self.check(overwrite, resume)
        if not resume:
            self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self.resume_state.unlink(missing_ok=True)
        return self

    # ------------------------------------------------------------------ reading and writing
    def read_config(self) -> dict:
        """The saved settings (``config.yaml``, read with :func:`sabr.config.load_yaml`).

        Raises:
            CheckpointError: the folder has no ``config.yaml``.
        """
        if not self.config.is_file():
            raise self.no_run_error()
        return load_yaml(self.config)

    def write_config(self, values: dict) -> None:
        """Write ``config.yaml`` (keys in the given order)."""
        import yaml

        atomic_write({self.config: yaml.safe_dump(values, sort_keys=False).encode()})

    def write_skipped(self, names: list[str]) -> None:
        """List the unreadable image files left out of the dataset (nothing is written for none)."""
        if names:
            atomic_write({self.skipped_images: ("\n".join(names) + "\n").encode()})

    def write_history(self, phase: str, rows: list[dict]) -> None:
        """``history_<phase>.csv``: one row per epoch, the columns in first-seen order (nothing for no rows)."""
        if not rows:
            return
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write({self.history(phase): buf.getvalue().encode()})

    def load_resume(self) -> dict | None:
        """The saved training state (see :mod:`sabr.resume`), or ``None`` when there is none."""
        return load_state(self.resume_state) if self.resume_state.is_file() else None

    def save_resume(self, state: dict) -> None:
        """Replace the saved training state atomically."""
        save_state(self.resume_state, state)

    def drop_resume(self) -> None:
        """Remove the training state once the run is complete (nothing is left to resume)."""
        self.resume_state.unlink(missing_ok=True)
