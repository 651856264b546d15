"""A Griffe extension for the API reference (mkdocs.yml): sabr's docstrings name other objects with Sphinx
roles (:func:`prune`, :class:`~sabr.SABR`), which Markdown would show as written; this shows the name as code."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|meth|class|data|mod|attr|exc|obj|const):`~?([^`]+)`")


def _strip_roles(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = _ROLE.sub(r"`\1`", obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _strip_roles(member)


class SphinxRoles(griffe.Extension):
    """Turn ``:role:`name``` into ``name`` in every docstring of the package, once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _strip_roles(pkg)
