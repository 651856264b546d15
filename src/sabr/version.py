"""sabr's version (the one source ``pyproject.toml`` reads too) and the provenance every result records.

:func:`versions` is what ``summary.json``, every checkpoint's JSON and every export carry as ``"versions"``:
the same command under another sabr, torch or torchvision can give another model, and these say which
software made a file. ``CHANGELOG.md`` says what each sabr version changed.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

__version__ = "0.2.0"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout sabr is imported from (``+dirty`` when tracked files have changes), or
    ``None`` when sabr is installed from a wheel (or git is not available)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or not (root / "pyproject.toml").is_file():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def versions() -> dict[str, str | None]:
    """``{"sabr", "git_commit", "torch", "torchvision", "python"}``: the software that wrote a result (the commit
    only from a checkout; torchvision ``None`` when it is not installed)."""
    import torch

    try:
        import torchvision

        vision: str | None = torchvision.__version__
    except ImportError:
        vision = None
    return {"sabr": __version__, "git_commit": git_commit(), "torch": torch.__version__, "torchvision": vision,
            "python": platform.python_version()}
