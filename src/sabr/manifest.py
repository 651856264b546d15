"""The manifest of a folder sabr writes: the list of what sabr put there, so that sabr deletes only that.

A folder sabr writes into (a run folder, a web site, an export folder) carries ``.sabr-manifest.json``::

    {"format": 1, "kind": "run", "entries": ["config.yaml", "export", "export/pruned-sparse.safetensors", ...]}

``kind`` is one of :data:`KINDS`; ``entries`` are paths relative to the folder (files, links and folders), each
listed *before* sabr writes it. The manifest is written first (an empty folder is claimed by writing it),
atomically, and stays after the work ends: it is the mark that the folder is sabr's. Removing a folder's
contents (``--overwrite``) deletes only listed entries, never follows a link, and removes a listed folder only
when nothing else is left in it -- a user's file stays where it is.

While a :class:`Manifest` is *active* (``with manifest:`` or :meth:`Manifest.activate`), every file that
:func:`sabr.checkpoint.atomic_write` or :func:`sabr.checkpoint.make_folder` writes inside its folder is
recorded first (:func:`note_written`), and a write that a symbolic link would carry out of the folder is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from .errors import ConfigError, SabrError, StorageError

MANIFEST = ".sabr-manifest.json"
"""The manifest's file name inside the folder it describes."""
FORMAT = 1
KINDS = ("run", "site", "export")
"""What a sabr folder can hold: a training run, a web export (``sabr export --format web``), an export folder."""

_ACTIVE: dict[str, "Manifest"] = {}  # absolute folder path -> the manifest recording writes into it


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or below it (both absolute, normalised)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _safe_entry(entry: object) -> bool:
    """A relative path without ``..`` (an entry from a damaged or crafted manifest is ignored, never followed)."""
    if not isinstance(entry, str) or not entry or entry.startswith("/") or "\0" in entry:
        return False
    return all(part not in ("", ".", "..") for part in entry.split("/"))


class Manifest:
    """The list of entries sabr wrote into ``folder`` (a folder of ``kind``); see the module docstring.

    Args:
        folder: the folder described.
        kind: one of :data:`KINDS`.
        entries: paths relative to ``folder`` (``/``-separated).
    """

    def __init__(self, folder: str | Path, kind: str, entries: Iterable[str] = ()) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown folder kind {kind!r}; pass one of {', '.join(KINDS)}.")
        self.folder, self.kind = Path(folder), kind
        self.entries: list[str] = list(dict.fromkeys(e for e in entries if _safe_entry(e)))

    def __repr__(self) -> str:
        return f"Manifest({str(self.folder)!r}, {self.kind!r}, {len(self.entries)} entries)"

    @property
    def path(self) -> Path:
        """``<folder>/.sabr-manifest.json``."""
        return self.folder / MANIFEST

    # ------------------------------------------------------------------ reading and claiming
    @classmethod
    def read(cls, folder: str | Path) -> "Manifest | None":
        """The manifest of ``folder``, or ``None`` when it has none.

        Raises:
            SabrError: the manifest is a link, unreadable or not sabr's format (sabr then deletes nothing).
        """
        path = Path(folder) / MANIFEST
        if not os.path.lexists(path):
            return None
        try:
            if path.is_symlink():
                raise ValueError("it is a symbolic link")
            data = json.loads(path.read_bytes())
            if not (isinstance(data, dict) and data.get("format") == FORMAT and data.get("kind") in KINDS
                    and isinstance(data.get("entries"), list)):
                raise ValueError(f"it is not sabr's format {FORMAT}")
        except (OSError, ValueError) as exc:
            raise SabrError(f"{path} is damaged ({getattr(exc, 'strerror', None) or exc}), so sabr cannot tell which "
                            "files of the folder are its own; delete the folder yourself or choose another.") from None
        return cls(folder, data["kind"], data["entries"])

    @classmethod
    def is_sabr_folder(cls, folder: str | Path, kind: str) -> bool:
        """True when ``folder`` carries a readable manifest of ``kind``."""
        try:
            found = cls.read(folder)
        except SabrError:
            return False
        return found is not None and found.kind == kind

    @classmethod
    def claim(cls, folder: str | Path, kind: str,
              adopt: Callable[[Path], Iterable[str] | None] | None = None) -> "Manifest":
        """The manifest of ``folder`` for writing a ``kind``, creating the folder and its manifest when needed.

        An empty (or new) folder gets a new, empty manifest, written at once; a folder with a manifest of
        ``kind`` keeps it. A folder without one is taken only when ``adopt(folder)`` names the entries an older
        sabr wrote there (a run folder of an earlier version); otherwise it is refused.

        Raises:
            SabrError: the folder is not empty and not a sabr folder of ``kind`` (one sentence naming it).
        """
        from .checkpoint import make_folder

        folder = Path(folder)
        found = cls.read(folder) if folder.is_dir() else None
        if found is not None:
            if found.kind != kind:
                raise SabrError(f"{folder} holds a sabr {found.kind}, not a {kind}; choose another folder.")
            return found
        make_folder(folder)
        adopted = None
        if any(folder.iterdir()):
            adopted = list(adopt(folder) or ()) if adopt else None
            if not adopted:
                raise SabrError(f"{folder} is not empty and is not a sabr {kind} folder (it has no {MANIFEST}); sabr "
                                "writes only into an empty folder or its own, so choose another (e.g. a new sub-folder).")
        manifest = cls(folder, kind, adopted or ())
        manifest.save()
        return manifest

    # ------------------------------------------------------------------ recording
    def save(self) -> None:
        """Write the manifest (atomically, through :func:`sabr.checkpoint.atomic_write`)."""
        from .checkpoint import atomic_write

        data = {"format": FORMAT, "kind": self.kind, "entries": self.entries}
        atomic_write({self.path: (json.dumps(data, indent=1) + "\n").encode()})

    def relative(self, path: str | Path) -> str | None:
        """``path`` relative to the folder (``/``-separated), or ``None`` when it is not below it."""
        full, root = os.path.abspath(path), os.path.abspath(self.folder)
        if not _inside(full, root) or full == root:
            return None
        return Path(os.path.relpath(full, root)).as_posix()

    def record(self, *paths: str | Path) -> None:
        """List ``paths`` (and the folders between them and the folder), then save if anything is new."""
        new = []
        for p in paths:
            rel = self.relative(p)
            if rel is None or rel == MANIFEST:
                continue
            parts = rel.split("/")
            new += ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        new = [e for e in dict.fromkeys(new) if e not in self.entries]
        if new:
            self.entries += new
            self.save()

    def check_inside(self, path: str | Path) -> None:
        """Refuse to write ``path`` when a symbolic link carries it out of the folder."""
        real_root = os.path.realpath(self.folder)
        if not _inside(os.path.realpath(Path(path).parent), real_root):
            raise StorageError(f"{Path(path).parent} leads out of the {self.kind} folder {self.folder} through a "
                               "symbolic link, and sabr never writes through links; remove the link or choose "
                               "another folder.")

    # ------------------------------------------------------------------ removing
    def clean_temps(self) -> None:
        """Delete the temporary files that a killed write of a listed entry left (``.<name>.<random>.tmp``)."""
        for parent in {(self.folder / e).parent for e in self.entries} | {self.folder}:
            if not self._safe_parent(parent / "x"):
                continue
            names = {Path(e).name for e in self.entries if (self.folder / e).parent == parent} | {MANIFEST}
            try:
                stray = [p for p in parent.iterdir()
                         if p.name.endswith(".tmp") and any(p.name.startswith(f".{n}.") for n in names)]
            except OSError:
                continue
            for p in stray:
                _unlink(p)

    def remove(self, keep: Iterable[str] = ()) -> None:
        """Delete every listed entry but ``keep`` (deepest first, links as links, folders only when empty),
        then save the manifest with what is left.

        Raises:
            StorageError: an entry could not be deleted (the manifest still lists what remains).
        """
        keep = set(keep)
        removed: set[str] = set()
        for entry in sorted(self.entries, key=lambda e: e.count("/"), reverse=True):
            path = self.folder / entry
            if entry in keep or not self._safe_parent(path):
                continue
            try:
                if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
                    path.unlink()
                elif path.is_dir():
                    if any(path.iterdir()):  # a user's file inside: the folder stays, still listed
                        continue
                    path.rmdir()
            except OSError as exc:
                self.entries = [e for e in self.entries if e not in removed]
                self.save()
                raise StorageError(f"could not delete {path} ({exc.strerror or exc}); delete it yourself or choose "
                                   "another folder.") from None
            removed.add(entry)
        self.entries = [e for e in self.entries if e not in removed]
        self.clean_temps()
        self.save()

    def _safe_parent(self, path: Path) -> bool:
        """The folder holding ``path`` is really inside this folder (no link leads out)."""
        return _inside(os.path.realpath(path.parent), os.path.realpath(self.folder))

    # ------------------------------------------------------------------ the active manifests
    def activate(self) -> "Manifest":
        """Record every write sabr makes inside the folder (until :meth:`deactivate`)."""
        _ACTIVE[os.path.abspath(self.folder)] = self
        return self

    def deactivate(self) -> None:
        """Stop recording (a no-op when not active)."""
        if _ACTIVE.get(os.path.abspath(self.folder)) is self:
            del _ACTIVE[os.path.abspath(self.folder)]

    def __enter__(self) -> "Manifest":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:  # clean-up never hides the real work
        pass


def active_for(path: str | Path) -> Manifest | None:
    """The active manifest whose folder holds ``path`` (the innermost), or ``None``."""
    full = os.path.abspath(path)
    real = os.path.realpath(Path(path).parent)
    best = None
    for root, m in _ACTIVE.items():
        if (full != root and _inside(full, root)) or _inside(real, os.path.realpath(root)):
            if best is None or len(root) > len(os.path.abspath(best.folder)):
                best = m
    return best


def note_written(*paths: str | Path, folders: bool = False) -> None:
    """Before sabr writes ``paths`` (files, or ``folders``): list them in the active manifest of their folder (if
    any), refusing a path that a symbolic link carries out of it. :func:`sabr.checkpoint.atomic_write` and
    :func:`sabr.checkpoint.make_folder` call this for everything they write."""
    for path in paths:
        m = active_for(path)
        if m is not None:  # its own manifest is never listed (record() skips it); a nested folder's is
            m.check_inside(Path(path) / "x" if folders else path)
            m.record(path)


def release(folder: str | Path) -> None:
    """Deactivate the manifest of ``folder`` (a no-op when none is active)."""
    _ACTIVE.pop(os.path.abspath(folder), None)
