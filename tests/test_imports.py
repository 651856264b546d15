"""The package's module-level imports form no cycle (a cycle only works, if at all, in one import order)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements that run when the module is imported: at top level, also inside ``try`` / ``if`` blocks,
    but not under ``if TYPE_CHECKING:`` and not inside functions or classes."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


def import_graph(src: Path = SRC, package: str = "sabr") -> dict[str, set[str]]:
    """``module -> the package's modules it needs at import time``. Importing ``a.b.c`` imports ``a`` and ``a.b``
    first, but a module's own packages are already being imported when it runs, so they count only where it
    takes a name that is not a submodule from one (``from . import name``)."""
    modules = {_module_name(p, src): p for p in (src / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets, direct = [a.name for a in node.names], set()
            else:
                base = here.rsplit(".", node.level - 1)[0] if node.level else ""
                mod = ".".join(p for p in (base, node.module) if p)
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
                direct = {mod} if any(f"{mod}.{a.name}" not in modules for a in node.names) else set()
            graph[name] |= direct & set(modules) - {name}
            for target in targets:
                while target and target != package:
                    if target in modules and target != name and target not in ancestors:
                        graph[name].add(target)
                    target = target.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("import os\ntry:\n    from . import c\nexcept ImportError:\n    pass\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import x\n"
                              "from pkg.a import g\ndef later():\n    from . import b\n")
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_sabr_has_no_import_cycle():
    graph = import_graph()
    assert "sabr.weights" in graph["sabr.regularizer"] and "sabr.weights" in graph["sabr.pruning"]
    assert cycles(graph) == []
