"""The apps' headless output folder: annotated frames (a video, or PNGs for an image folder), a JSONL record
and a snapshot, written without following links and refused where it would land on the model's files."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from ..checkpoint import atomic_write, json_line, make_folder
from ..errors import ConfigError, StorageError
from ..manifest import note_written
from ..rundir import guard_outputs
from .sources import VideoWriter


class Output:
    """Headless output: annotated frames (video, or PNGs for an image folder), a JSONL file, a snapshot.

    Nothing is written through a symbolic link: the JSONL file is opened with ``O_NOFOLLOW`` and the PNGs go
    through :func:`sabr.checkpoint.atomic_write`; a write that fails (full disk) is a :class:`StorageError`.
    ``guard`` (:func:`sabr.rundir.guard_outputs`'s context) is held until :meth:`close`.
    """

    def __init__(self, out: Path, jsonl_name: str, video_name: str, fps: float, png_frames: bool,
                 snapshot: int | None, guard: contextlib.AbstractContextManager | None = None) -> None:
        self._stack = contextlib.ExitStack()
        self.jsonl_path = out / jsonl_name
        with self._stack.pop_all() as stack:  # left again if anything below fails
            if guard is not None:
                stack.enter_context(guard)
            self.out = make_folder(out)
            note_written(self.jsonl_path)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
            try:
                self._jsonl = stack.enter_context(os.fdopen(os.open(self.jsonl_path, flags, 0o666), "w"))
            except OSError as exc:
                raise self._error(self.jsonl_path, exc) from None
            self._stack = stack.pop_all()
        self.frames_dir = out / "frames" if png_frames else None
        self.video = None if png_frames else VideoWriter(out / video_name, fps)
        self.snapshot = snapshot
        self.count = 0

    def _error(self, path: Path, exc: OSError) -> StorageError:
        link = " (a symbolic link: sabr never writes through links)" if path.is_symlink() else ""
        return StorageError(f"could not write {path}{link} ({exc.strerror or exc}); free some space or choose "
                            "another --out, then run the command again.")

    def record(self, row: dict) -> None:
        """Append one JSON line (a number that is not finite is written as ``null``: the file stays JSON)."""
        try:
            self._jsonl.write(json_line(row))
            self._jsonl.flush()
        except OSError as exc:
            raise self._error(self.jsonl_path, exc) from None

    def frame(self, rgb: np.ndarray, name: str) -> None:
        """Write one annotated frame (``name`` names its PNG), and the snapshot when it is this one."""
        if self.frames_dir is not None:
            make_folder(self.frames_dir)
            _save_png(rgb, self.frames_dir / f"{Path(name).stem}.png")
        else:
            self.video.write(rgb)
        if self.snapshot is not None and self.count == self.snapshot:
            _save_png(rgb, self.out / "snapshot.png")
        self.count += 1

    def close(self) -> None:
        """Close the JSONL file and the video, and leave the guard."""
        try:
            if self.video is not None:
                self.video.close()
        finally:
            try:
                self._stack.close()
            except OSError as exc:
                raise self._error(self.jsonl_path, exc) from None


def _save_png(rgb: np.ndarray, path: Path) -> None:
    """Encode ``rgb`` as PNG and write it atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="png")
    atomic_write({path: buf.getvalue()})


def open_output(out: str | Path | None, headless: bool, jsonl: str, video: str, fps: float, png: bool,
                 snapshot: int | None, model: str | Path | None = None) -> Output | None:
    """The headless output in ``out`` (``None`` when no ``out``); a headless run must have one.

    Call it only once every option has been accepted: it creates ``out`` and truncates its JSONL file. An
    ``out`` that would land on the files of ``model`` (a run folder or checkpoint) is refused; one inside
    its run folder holds the run's lock while it is open.
    """
    if headless and out is None:
        raise ConfigError("--headless needs --out DIR for the annotated frames and the JSONL file.")
    if out is None:
        return None
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder for the annotated frames and "
                          f"{jsonl}.")
    guard = guard_outputs(model, [Path(out) / jsonl, Path(out)]) if model else None
    return Output(Path(out), jsonl, video, fps, png, snapshot, guard)
