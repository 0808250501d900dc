"""Typed dataclasses from JSON: what a checkpoint's metadata must hold, checked field by field.

:func:`from_dict` builds a dataclass from a JSON object and rejects unknown keys, missing keys and
values of the wrong type with one :class:`~attnkit.errors.AttentionError` that names the field
(``task.model_config.hidden_dim must be an int, got '256'``), so that a damaged or hand-edited
checkpoint never reaches the model constructors as a string where a number belongs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from ..errors import AttentionError

__all__ = ["check_value", "from_dict", "type_name"]


def type_name(value) -> str:
    """The JSON name of ``value``'s type, for messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, bool) or value is None:
        return names[type(value)]
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_value(value, kind, what: str) -> None:
    """Raise unless the JSON value ``value`` fits the annotation ``kind`` (int, float, bool, str,
    None, ``X | None``, ``list[X]``, ``dict``, ``dict[str, X]``); ``what`` names it in the message."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        errors = []
        for option in options:
            try:
                check_value(value, option, what)
                return
            except AttentionError as err:
                errors.append(err)
        wanted = " or ".join(_wanted(o) for o in options)
        raise AttentionError(f"{what} must be {wanted}, got {type_name(value)} {_shown(value)}")
    if kind is type(None) or kind is None:
        ok = value is None
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is list or origin is list:
        ok = isinstance(value, list)
        if ok and typing.get_args(kind):
            (item,) = typing.get_args(kind)
            for i, x in enumerate(value):
                check_value(x, item, f"{what}[{i}]")
    elif kind is dict or origin is dict:
        ok = isinstance(value, dict)
        if ok and typing.get_args(kind):
            _, item = typing.get_args(kind)
            for k, x in value.items():
                check_value(x, item, f"{what}.{k}")
    elif kind is typing.Any:
        ok = True
    else:  # pragma: no cover - an annotation this checker does not know is a bug in attnkit
        raise TypeError(f"{what}: cannot check values against {kind!r}")
    if not ok:
        raise AttentionError(f"{what} must be {_wanted(kind)}, got {type_name(value)} {_shown(value)}")


def _wanted(kind) -> str:
    origin = typing.get_origin(kind)
    if kind is type(None) or kind is None:
        return "null"
    if kind is float:
        return "a finite number"
    if kind is list or origin is list:
        return "a list"
    if kind is dict or origin is dict:
        return "an object"
    return {bool: "a boolean", int: "an int", str: "a string"}.get(kind, str(kind))


def from_dict(cls, doc, what: str):
    """The dataclass ``cls`` built from the JSON object ``doc``: unknown keys, missing keys (fields
    without a default) and wrong types are an AttentionError that names the field as ``what.field``.
    The dataclass's own ``__post_init__`` then checks the values."""
    if not isinstance(doc, dict):
        raise AttentionError(f"{what} must be an object, got {type_name(doc)} {_shown(doc)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(doc) - set(fields))
    if unknown:
        raise AttentionError(f"{what} has unknown keys {unknown}; expected some of {sorted(fields)}")
    required = dataclasses.MISSING
    missing = [
        name
        for name, f in fields.items()
        if name not in doc and f.default is required and f.default_factory is required
    ]
    if missing:
        raise AttentionError(f"{what} has no {missing[0]!r}")
    hints = typing.get_type_hints(cls)
    for name, value in doc.items():
        check_value(value, hints[name], f"{what}.{name}")
    return cls(**doc)
