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
    .sabr-manifest.json    every file and folder sabr wrote here (:mod:`sabr.manifest`): ``--overwrite`` deletes
                           only those, so a user's own file in the folder is never touched
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import os
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

from .checkpoint import PHASES, atomic_write
from .config import load_yaml
from .errors import CheckpointError, SabrError, StorageError
from .manifest import MANIFEST, Manifest, release
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
    MANIFEST = MANIFEST
    TENSORBOARD = "tensorboard"
    CHECKPOINTS = PHASES
    PLOTS = ("training_curves.png", "lambda_history.png", "layer_sparsity.png", "accuracy_vs_sparsity.png",
             "savings_overall.png", "savings_per_layer.png")
    HISTORIES = ("base", "sabr", "finetune")

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

    # ------------------------------------------------------------------ what is the run's
    @classmethod
    def own_names(cls) -> list[str]:
        """Every name a run writes at the top of its folder (``export/`` aside): what no output may replace."""
        names = [cls.CONFIG, cls.SUMMARY_JSON, cls.SUMMARY_MD, cls.LAMBDAS, cls.SABR_STATE, cls.RESUME, cls.SKIPPED,
                 cls.TRADEOFF_JSON, cls.TRADEOFF_PNG, cls.LOCK, cls.MANIFEST, cls.TENSORBOARD, *cls.PLOTS]
        names += [f"history_{p}.csv" for p in cls.HISTORIES]
        return names + [f"{p}{s}" for p in cls.CHECKPOINTS for s in (".safetensors", ".json")]

    def _legacy_entries(self, folder: Path) -> list[str]:
        """What a run folder of a sabr without manifests holds of sabr's (its known names, their old ``.tmp``
        files, ``tensorboard/`` and the default export names); nothing for a folder that is not such a run.

        A folder is such a run when it holds ``config.yaml``, ``resume.safetensors`` or ``summary.json``, or
        nothing but a ``.lock``. Any other file in it is the user's, and stays.
        """
        try:
            present = {p.name for p in folder.iterdir()}
        except OSError:
            return []
        markers = {self.CONFIG, self.RESUME, self.SUMMARY_JSON}
        if not (present & markers or present == {self.LOCK}):
            return []
        known = set(self.own_names()) | {self.EXPORT}
        found = [n for n in sorted(present) if n in known or (n.endswith(".tmp") and n[:-4] in known)]
        for sub, names in ((self.TENSORBOARD, None), (self.EXPORT, self._default_export_names())):
            top = folder / sub
            if top.is_dir() and not top.is_symlink():
                found += [p.relative_to(folder).as_posix() for p in sorted(top.rglob("*"))
                          if names is None or p.name in names or (p.name.endswith(".tmp") and p.name[:-4] in names)]
        return found

    def _default_export_names(self) -> set[str]:
        return {f"{p}-{f}{s}" for p in self.CHECKPOINTS for f in ("sparse", "shrunk", "onnx")
                for s in (".safetensors", ".json", ".onnx")}

    def is_run_folder(self) -> bool:
        """True when the folder carries a run manifest, or is a run folder of an older sabr (see
        :meth:`_legacy_entries`)."""
        try:
            found = Manifest.read(self.path)
        except SabrError:
            return False
        return found.kind == "run" if found is not None else bool(self._legacy_entries(self.path))

    def claim(self) -> Manifest:
        """The folder's run manifest (an older run folder's known files adopted, an empty folder's created)."""
        return Manifest.claim(self.path, "run", adopt=self._legacy_entries)

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

        A new run refuses a folder of other files (neither empty nor a sabr run folder) and a folder holding
        another run unless ``overwrite``; ``resume`` needs a run's config and refuses a finished run (its
        ``summary.json`` written and no resume state left).
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
            return
        found = Manifest.read(self.path) if self.path.is_dir() else None  # a damaged one is refused here
        if found is not None and found.kind != "run":
            raise SabrError(f"--out {self.path} holds a sabr {found.kind}, not a run; choose another --out.")
        if self.path.is_dir() and any(self.path.iterdir()) and not self.is_run_folder():
            raise SabrError(f"--out {self.path} is not empty and is not a sabr run folder (it has no {self.MANIFEST}), "
                            "and sabr never writes over or deletes your files; choose another --out (e.g. a new "
                            "sub-folder).")
        if self.holds_run() and not overwrite:
            raise SabrError(f"{self.path} already holds a run; choose another --out, pass --resume {self.path} to "
                            "continue it, or --overwrite to replace it.")

    def open(self, overwrite: bool = False, resume: bool = False) -> "RunDir":
        """:meth:`check`, claim the folder (its manifest written first), :meth:`lock` it, check again (now that
        no other run can change it) and delete the temporary files a killed run left; ``overwrite`` then deletes
        everything the manifest lists (all but the lock file: never a file sabr did not write)."""
        self.check(overwrite, resume)
        manifest = self.claim()
        self.lock()
        manifest.record(self.file(self.LOCK))
        self.check(overwrite, resume)
        manifest.clean_temps()
        if overwrite:
            manifest.remove(keep=(self.LOCK,))
        manifest.activate()
        return self

    @contextmanager
    def writing(self):
        """Hold the folder's lock and record what is written into it (a finished run's ``sabr prune``, exports
        into ``export/``): a context manager. Refuses a folder in use by a running ``sabr run``."""
        held = os.path.realpath(self.path) in _HELD
        self.lock()
        try:
            manifest = self.claim()
            manifest.record(self.file(self.LOCK))
            manifest.clean_temps()
            with manifest:
                yield self
        finally:
            if not held:
                self.unlock()

    def lock(self) -> None:
        """Hold ``.lock`` in the folder for the rest of this process (or until :meth:`unlock`).

        An advisory ``flock``: the operating system releases it when the process ends, however it ends
        (SIGKILL included), so a killed run can be resumed at once while a second live run is refused.
        Re-entrant within one process. A ``.lock`` that is a symbolic link is refused, never followed.
        """
        key = os.path.realpath(self.path)
        if key in _HELD:
            return
        try:
            fd = os.open(self.file(self.LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if self.file(self.LOCK).is_symlink():
                raise SabrError(f"{self.file(self.LOCK)} is a symbolic link, and sabr never writes through links; "
                                "delete it and try again.") from None
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
        """Release :meth:`lock` and stop recording writes (a no-op when this process does not hold it)."""
        release(self.path)
        fd = _HELD.pop(os.path.realpath(self.path), None)
        if fd is not None:
            os.close(fd)

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
        each as the file system spells it (a name that is not UTF-8 keeps its bytes), with a backslash, a
        newline and a carriage return written as ``\\\\``, ``\\n`` and ``\\r`` (:func:`escape_name`)."""
        if names:
            lines = [escape_name(n) for n in names]
            atomic_write({self.skipped_images: ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")})

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


def escape_name(name: str) -> str:
    """A file name on one line: backslash, newline and carriage return as ``\\\\``, ``\\n`` and ``\\r``."""
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _run_of(source: Path) -> RunDir | None:
    """The run folder that ``source`` (a run folder, or a file in one) belongs to, if any."""
    folder = RunDir(source if source.is_dir() else source.parent)
    return folder if folder.holds_run() or folder.is_run_folder() else None


def _within(path: str | Path, other: str | Path) -> bool:
    """``path`` is ``other`` or inside it: lexically, or once links are resolved."""
    for a, b in ((os.path.abspath(path), os.path.abspath(other)), (os.path.realpath(path), os.path.realpath(other))):
        if a == b or a.startswith(b.rstrip(os.sep) + os.sep):
            return True
    return False


def guard_outputs(source: str | Path, outputs: list[str | Path], flag: str = "--out"):
    """Refuse outputs that would land on what a command reads, and return the context to write them in.

    ``source`` is the run folder or model file the command reads (``sabr export``, ``bench``, ``recognize``);
    ``outputs`` are the files (or folders) it will write. An output that is, or is inside, one of the run's own
    files (:meth:`RunDir.own_names`: checkpoints, config, resume state, summary, manifest, ...) or the model file
    read (with its ``.json``) is refused at once, as is an output a symbolic link carries out of the run folder.

    Returns:
        a context manager: :meth:`RunDir.writing` (the run's lock held, the files recorded in its manifest) when
        an output lies in the run folder, else one that does nothing.

    Raises:
        SabrError: one sentence naming the output and what it would replace.
    """
    source = Path(source).expanduser()
    run = _run_of(source)
    inputs = [run.file(n) for n in run.own_names()] if run is not None else []
    if source.is_file() or not source.exists():
        inputs += [source.with_suffix(s) for s in (".safetensors", ".json", ".onnx")]
    inside = False
    for out in map(Path, outputs):
        hit = next((p for p in inputs if _within(out, p)), None)
        if hit is not None:
            raise SabrError(f"{flag} {out} would replace {hit}, which the command reads from {source}; choose "
                            "another path (the default needs no --out).")
        if run is not None and _within(out, run.path):
            inside = True
            if not _within(os.path.realpath(out.parent), os.path.realpath(run.path)):
                raise SabrError(f"{flag} {out} leads out of the run folder {run.path} through a symbolic link, and "
                                "sabr never writes through links; remove the link or choose another path.")
    return run.writing() if inside else nullcontext()
