"""Every error sabr raises for a user is a SabrError: no stray built-in exception in src/sabr."""

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
            ("sources.py", "NotImplementedError"),  # an abstract method
            ("baselines.py", "ImportError"),  # a missing optional package, which callers catch as such
            ("fields.py", "TypeError")}  # a settings class declares an unsupported field type: the code's error


def _builtin_raises() -> list[tuple[str, int, str]]:
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            exc = node.exc.func if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) else \
                node.exc if isinstance(node, ast.Raise) else None
            name = exc.id if isinstance(exc, ast.Name) else None
            if name and isinstance(getattr(builtins, name, None), type) and (path.name, name) not in PROTOCOL:
                found.append((str(path.relative_to(SRC)), node.lineno, name))
    return found


def test_no_builtin_exception_is_raised_outside_the_protocols_that_need_one():
    assert _builtin_raises() == []


def test_the_former_stray_errors_are_config_errors():
    with pytest.raises(ConfigError, match="at least one trial"):
        choose([], 0.5)
    with pytest.raises(ConfigError, match="dt must be >= 0"):
        Elevator(floors=3).step(-1.0)
