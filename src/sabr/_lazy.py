"""Lazy package attributes (PEP 562): a package lists which submodule holds each public name, and the
submodule is imported on the first access (as is a submodule itself, ``sabr.export``), so importing the
package (and ``sabr --help``) stays fast."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable


def attach(package: str, exports: dict[str, tuple[str, ...]], namespace: dict[str, Any], extra: tuple[str, ...] = ()
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose ``exports`` maps a submodule (relative,
    without the dot) to the names it provides; ``namespace`` is the package's ``globals()`` (each name is
    cached there on first use); ``extra`` names public values defined in the package itself (``__version__``).

    ``dir(package)`` and ``__all__`` list the public names only, not the package's own imports
    (``annotations``, ``TYPE_CHECKING``)."""
    where = {name: module for module, names in exports.items() for name in names}
    names = sorted(set(where) | set(extra))

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
        return list(names)

    return __getattr__, __dir__, names
