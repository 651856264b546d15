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
    .lock                  held (``flock``) by the run writing the folder; the OS releases it when that process ends
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import os
import shutil
from datetime import datetime
from pathlib import Path

from .checkpoint import PHASES, atomic_write, make_folder
from .config import load_yaml
from .errors import CheckpointError, SabrError, StorageError
from .resume import RunState, load_state, save_state


_HELD: dict[str, int] = {}  # run folders locked by this process -> the lock file's descriptor


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
    LOCK = ".lock"
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
        """:meth:`check`, create the folder and :meth:`lock` it, check again (now that no other run can change
        it); ``overwrite`` then deletes everything the old run left there (all but the lock file)."""
        self.check(overwrite, resume)
        if not resume:
            make_folder(self.path)
        self.lock()
        self.check(overwrite, resume)
        if overwrite:
            self._clear()
        return self

    def lock(self) -> None:
        """Hold ``.lock`` in the folder for the rest of this process (or until :meth:`unlock`).

        An advisory ``flock``: the operating system releases it when the process ends, however it ends
        (SIGKILL included), so a killed run can be resumed at once while a second live run is refused.
        Re-entrant within one process.
        """
        key = os.path.realpath(self.path)
        if key in _HELD:
            return
        try:
            fd = os.open(self.file(self.LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create {self.file(self.LOCK)} ({exc.strerror or exc}); the run folder "
                               "must be writable.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SabrError(f"{self.path} is in use by another sabr process (it holds {self.LOCK}); wait for it to "
                            "end, or choose another --out.") from None
        _HELD[key] = fd

    def unlock(self) -> None:
        """Release :meth:`lock` (a no-op when this process does not hold it)."""
        fd = _HELD.pop(os.path.realpath(self.path), None)
        if fd is not None:
            os.close(fd)

    def _clear(self) -> None:
        """Delete every file and folder of the old run (``--overwrite``), all but the lock file."""
        try:
            for entry in self.path.iterdir():
                if entry.name == self.LOCK:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        except OSError as exc:
            raise StorageError(f"--overwrite could not delete the old run in {self.path} ({exc.strerror or exc}); "
                               "delete the folder yourself or choose another --out.") from None

    # ------------------------------------------------------------------ reading and writing
    def read_config(self) -> dict:
        """The saved settings (``config.yaml``, read with :func:`sabr.config.load_yaml`).

        Raises:
            CheckpointError: the folder has no ``config.yaml``.
        """
        if not self.config.is_file():
            raise self.no_run_error()
        values = load_yaml(self.config)
        if not values:
            raise CheckpointError(f"{self.config} is empty, so the run's settings are lost; sabr will not guess "
                                  "them. Start the run again with --overwrite (or restore the file).")
        return values

    def config_sha256(self) -> str | None:
        """The SHA-256 of ``config.yaml`` (``None`` when there is none): a resume state records it."""
        try:
            return hashlib.sha256(self.config.read_bytes()).hexdigest()
        except FileNotFoundError:
            return None

    def write_config(self, values: dict) -> None:
        """Write ``config.yaml`` (keys in the given order)."""
        import yaml

        atomic_write({self.config: yaml.safe_dump(values, sort_keys=False).encode()})

    def write_skipped(self, names: list[str]) -> None:
        """List the unreadable image files left out of the dataset (nothing is written for none), one per line,
        each as the file system spells it (a name that is not UTF-8 keeps its bytes)."""
        if names:
            atomic_write({self.skipped_images: ("\n".join(names) + "\n").encode("utf-8", "surrogateescape")})

    def write_history(self, phase: str, rows: list[dict]) -> None:
        """``history_<phase>.csv``: one row per epoch, the columns in first-seen order (nothing for no rows)."""
        if not rows:
            return
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write({self.history(phase): buf.getvalue().encode()})

    def load_resume(self) -> RunState | None:
        """The saved training state (see :mod:`sabr.resume`), or ``None`` when there is none.

        Raises:
            CheckpointError: the state is damaged, or ``config.yaml`` changed since it was saved (its hash differs).
        """
        if not self.resume_state.is_file():
            return None
        state = RunState.from_dict(load_state(self.resume_state), source=str(self.resume_state))
        saved = state.config_sha256
        if saved is not None and saved != self.config_sha256():
            raise CheckpointError(f"{self.config} was changed after the run began, so its saved epochs no longer "
                                  "match it; undo the edit to resume, or start a new run (--overwrite) with the "
                                  "new settings.")
        return state

    def save_resume(self, state: RunState) -> None:
        """Replace the saved training state atomically (with the hash of ``config.yaml`` it belongs to)."""
        save_state(self.resume_state, dataclasses.replace(state, config_sha256=self.config_sha256()))

    def drop_resume(self) -> None:
        """Remove the training state once the run is complete (nothing is left to resume)."""
        self.resume_state.unlink(missing_ok=True)
