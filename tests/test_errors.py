"""Every error sabr raises for a user is a SabrError: no stray built-in exception in src/sabr (an abstract
method's NotImplementedError and an exception caught where it is raised aside)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

from sabr.apps import Elevator
from sabr.budget import choose
from sabr.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src" / "sabr"
PROTOCOL = {("_lazy.py", "AttributeError"),  # a module's __getattr__ must raise it
            ("units.py", "KeyError"),  # a Mapping's __getitem__ must raise it
            ("resume.py", "KeyError"),  # _unflatten's missing tensor, which RunState.from_dict turns into one sentence
            ("channel_peers.py", "ImportError"),  # a missing optional package, which callers catch as such
            ("fields.py", "TypeError")}  # a settings class declares an unsupported field type: the code's error


def _name(exc: ast.expr | None) -> str | None:
    exc = exc.func if isinstance(exc, ast.Call) else exc
    return exc.id if isinstance(exc, ast.Name) else None


def _caught_here(tree: ast.Module) -> set[int]:
    """Ids of the raise statements inside a ``try`` whose own handlers catch what they raise (control flow
    within one function, never reaching the caller)."""
    caught = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            names = {n for h in node.handlers for e in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])
                     if (n := _name(e))}
            caught |= {id(r) for stmt in node.body for r in ast.walk(stmt)
                       if isinstance(r, ast.Raise) and _name(r.exc) in names}
    return caught


def _builtin_raises() -> list[tuple[str, int, str]]:
    found = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        caught = _caught_here(tree)
        for node in ast.walk(tree):
            name = _name(node.exc) if isinstance(node, ast.Raise) else None
            if (name and isinstance(getattr(builtins, name, None), type) and name != "NotImplementedError"
                    and (path.name, name) not in PROTOCOL and id(node) not in caught):
                found.append((str(path.relative_to(SRC)), node.lineno, name))
    return found


def test_no_builtin_exception_is_raised_outside_the_protocols_that_need_one():
    assert _builtin_raises() == []


def test_the_former_stray_errors_are_config_errors():
    with pytest.raises(ConfigError, match="at least one trial"):
        choose([], 0.5)
    with pytest.raises(ConfigError, match="dt must be >= 0"):
        Elevator(floors=3).step(-1.0)
