"""Lazy package attributes (PEP 562): a package lists which submodule holds each public name, and the
submodule is imported on the first access (as is a submodule itself, ``sabr.export``), so importing the
package (and ``sabr --help``) stays fast."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable


def attach(package: str, exports: dict[str, tuple[str, ...]], namespace: dict[str, Any]
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose ``exports`` maps a submodule (relative,
    without the dot) to the names it provides; ``namespace`` is the package's ``globals()`` (each name is
    cached there on first use)."""
    where = {name: module for module, names in exports.items() for name in names}
    names = sorted(where)

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f".{module}", package), name)
        elif importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule: sabr.export, ...
            value = importlib.import_module(f".{name}", package)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__, names
