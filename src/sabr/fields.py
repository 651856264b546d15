"""The fields of a settings dataclass (:class:`~sabr.config.RunConfig`, the apps' settings): each field's type,
resolved once from its annotation, and the one reading of a value as that type.

The YAML reader (:func:`check_fields`) and the command line (:func:`sabr.cli.add_config_arguments`) both
read :func:`field_types`, so a field typed ``Path``, ``Literal[...]`` or ``tuple[int, ...]`` means the same
in a ``--config`` file and as a flag. Supported: ``int``, ``float``, ``str``, ``bool``, ``Path``,
``Literal[...]`` (of one type), ``list[X]`` and ``tuple[X, ...]`` / ``tuple[X, X]`` of those scalars, each
optionally ``| None``; a union of two kinds (``float | str``) is passed through for the dataclass to read.
Any other annotation is a programming error (``TypeError`` when the class is first read).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

from .errors import ConfigError

_SCALARS = (int, float, str, bool, Path)
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _f(default: Any, help: str, **kw) -> Any:
    """A settings field: its default, its help text, and its checks (``min``, ``gt``, ``max``, ``choices``,
    ``nargs``, ``switch``) as metadata."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class FieldType:
    """One field's type, resolved from its annotation.

    Attributes:
        kind: the type of one value (``int``, ``float``, ``str``, ``bool`` or ``Path``; a ``Literal``'s
            values' type); ``None`` for a union of several kinds, whose value is passed through.
        optional: ``None`` is allowed.
        many: ``list`` or ``tuple`` when the field holds several values, else ``None``.
        length: a fixed-length tuple's length (``tuple[int, int]``: 2).
        literals: a ``Literal``'s allowed values.
    """

    kind: type | None
    optional: bool = False
    many: type | None = None
    length: int | None = None
    literals: tuple | None = None

    @property
    def flag_type(self) -> type:
        """What the command line converts one string with (``str`` for a pass-through union)."""
        return self.kind or str

    def coerce(self, name: str, value: Any) -> Any:
        """``value`` read as this type the way the command line reads its strings; :class:`ConfigError` naming
        ``name`` when it cannot be."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{name} needs a value, got none.")
        if self.kind is None:  # a number or a keyword (accuracy_threshold): the dataclass's own rule
            return value
        if self.many is None:
            return _scalar(name, self.kind, value)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not items:
            raise ConfigError(f"{name} needs at least one value, got an empty list.")
        if self.length is not None and len(items) != self.length:
            raise ConfigError(f"{name} needs {self.length} values, got {len(items)}.")
        return self.many(_scalar(name, self.kind, v) for v in items)


@functools.cache
def field_types(cls: type) -> dict[str, FieldType]:
    """Every field of the dataclass ``cls`` with its :class:`FieldType` (resolved once per class)."""
    hints = typing.get_type_hints(cls)
    return {f.name: resolve(hints[f.name], f"{cls.__name__}.{f.name}") for f in fields(cls)}


def resolve(annotation: Any, where: str = "field") -> FieldType:
    """The :class:`FieldType` of an evaluated annotation; ``TypeError`` for an unsupported one."""
    optional = False
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) > 1:
            if not all(a in _SCALARS for a in rest):
                raise TypeError(f"{where}: unsupported union {annotation!r}")
            return FieldType(None, optional)
        annotation = rest[0]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return FieldType(_one(args[0], where), optional, many=list)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return FieldType(_one(args[0], where), optional, many=tuple)
    if origin is tuple and args and len(set(args)) == 1:
        return FieldType(_one(args[0], where), optional, many=tuple, length=len(args))
    if origin is Literal:
        return FieldType(_literal_kind(args, where), optional, literals=args)
    return FieldType(_one(annotation, where), optional)


def _one(annotation: Any, where: str) -> type:
    if annotation in _SCALARS:
        return annotation
    raise TypeError(f"{where}: unsupported field type {annotation!r} (use one of int, float, str, bool, Path, "
                    "Literal[...], list[...] or tuple[...] of those, optionally | None)")


def _literal_kind(values: tuple, where: str) -> type:
    kinds = {type(v) for v in values}
    if len(kinds) != 1 or next(iter(kinds)) not in (int, str):
        raise TypeError(f"{where}: a Literal's values must all be int or all be str, got {values!r}")
    return kinds.pop()


def check_fields(obj: Any) -> None:
    """Validate the dataclass ``obj`` in place, field by field, from its :func:`field_types` and metadata.

    Each value is coerced like a command-line string: ``int`` fields take whole numbers (``"5"``, and
    ``5.0``; ``2.5`` is refused), ``float`` fields take any finite number (``"1e-3"``; NaN and infinity
    are refused), ``str`` fields take text (a number becomes its text: ``data: 12`` is the folder ``12``),
    ``Path`` fields the same as a ``Path``, ``bool`` fields take true/false (yes/no, on/off, 1/0), list and
    tuple fields take one value or a list of them; ``None`` only where the field allows it. Then the
    field's metadata ``min`` / ``gt`` / ``max`` bounds and ``choices`` (or its ``Literal`` values) are
    checked. Raises :class:`ConfigError` naming the field, the value and the rule.
    """
    types_ = field_types(type(obj))
    for f in fields(obj):
        ftype = types_[f.name]
        value = ftype.coerce(f.name, getattr(obj, f.name))
        meta = f.metadata if ftype.literals is None else {"choices": ftype.literals, **f.metadata}
        for item in value if isinstance(value, (list, tuple)) else [value]:
            _check_range(f.name, item, meta)
        setattr(obj, f.name, value)


def _scalar(name: str, kind: type, value: Any) -> Any:
    """One value as ``kind`` (``int``, ``float``, ``str``, ``bool`` or ``Path``), read the way the command
    line reads it."""
    text = value.strip() if isinstance(value, str) else None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ConfigError(f"{name} is true or false, got {value!r}.")
    if kind in (str, Path):
        if isinstance(value, (str, int, float, os.PathLike)) and not isinstance(value, bool):
            text = str(value) if not isinstance(value, os.PathLike) else os.fspath(value)
            return text if kind is str else Path(text)
        raise ConfigError(f"{name} is text, got {value!r}.")
    number = _number(value, text)
    if number is None or not math.isfinite(number):
        what = "a whole number" if kind is int else "a finite number"
        raise ConfigError(f"{name} must be {what}, got {value!r}.")
    if kind is int:
        if not float(number).is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value!r}.")
        return int(number)
    return float(number)


def _number(value: Any, text: str | None) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):  # NumPy's scalars too
        return float(value) if not isinstance(value, numbers.Integral) else int(value)
    if text is not None:
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
    return None


def _check_range(name: str, value: Any, meta: Any) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {value!r}.")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{name} must be >= {meta['min']}, got {value!r}.")
    if "gt" in meta and not value > meta["gt"]:
        raise ConfigError(f"{name} must be > {meta['gt']}, got {value!r}.")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{name} must be <= {meta['max']}, got {value!r}.")


def check_number(name: str, value: Any, *, integer: bool = False, **bounds: float) -> None:
    """Refuse an argument of the Python API that a settings field of that type and ``bounds`` (``min``,
    ``gt``, ``max``) would refuse: not a (whole) number, NaN, infinite or out of range; raises
    :class:`ConfigError` naming ``name``. Numbers given as text are refused too (the API takes numbers)."""
    if isinstance(value, str):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    _check_range(name, _scalar(name, int if integer else float, value), bounds)
