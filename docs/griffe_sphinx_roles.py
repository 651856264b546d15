"""A Griffe extension for the API reference (mkdocs.yml): sabr's docstrings name other objects with Sphinx
roles (:func:`prune`, :class:`~sabr.SABR`) and open literal blocks with ``::``, which Markdown would show as
written; this shows the name as code and ends the sentence with one colon (the indented block that follows is
a code block in Markdown too)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|meth|class|data|mod|attr|exc|obj|const):`~?([^`]+)`")
_LITERAL = re.compile(r"(?<=\S)::\n\n")


def _rewrite(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _LITERAL.sub(":\n\n", _ROLE.sub(r"`\1`", obj.docstring.value))
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the package, once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _rewrite(pkg)
