"""SIGTERM handled like Ctrl-C: ``kill``, a scheduler's time limit or a container stop unwinds sabr normally.

Python's default for SIGTERM ends the process at once (exit status -15, no message, temporary files left).
Inside :func:`sigterm_as_interrupt` it raises :class:`Terminated`, a :class:`KeyboardInterrupt`, so that the
same clean-up runs as for Ctrl-C (a temporary file being written is removed, the last finished epoch's resume
state stays) and the CLI prints one sentence and exits with 143 (128 + 15, what a shell reports for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (e.g. ``kill``, a scheduler's time limit) received: unwinds like Ctrl-C, exit code 143."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (so temporary files are removed and one sentence
    is printed); the previous handler is restored afterwards. Outside the main thread nothing changes."""
    def on_sigterm(signum: int, frame: object) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
