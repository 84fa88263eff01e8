"""Typed reads of parsed JSON from an untrusted source (a fetched audit log, the policy it
records).

Each value must be of its JSON type (a boolean is never an integer); a wrong one
raises `ValueError` naming the path of the field and both types, so a hostile
file yields one clear message and never a `KeyError` or `TypeError` deep inside
a check (invariant 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["field", "json_type", "strings", "typed"]

_JSON_TYPES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "an object",
}


def json_type(value: Any) -> str:
    """The JSON type of `value` as a message names it ("a string", "null"...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return next((n for t, n in _JSON_TYPES.items() if isinstance(value, t)), type(value).__name__)


def typed(value: Any, kind: type, where: str) -> Any:
    """`value` if it is of the JSON type `kind` (a boolean is not an integer)."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{where} must be {_JSON_TYPES[kind]}, not {json_type(value)}")


def field(d: Mapping[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    """`d[key]` of the JSON type `kind`; `default` if it is missing and one is given."""
    if key not in d:
        if default is not ...:
            return default
        raise ValueError(f"{where}.{key} is missing")
    return typed(d[key], kind, f"{where}.{key}")


def strings(d: Mapping[str, Any], key: str, where: str, default: Any = ...) -> list[str]:
    """`d[key]`, a list of strings."""
    values: list[str] = field(d, key, list, where, default)
    for i, v in enumerate(values):
        typed(v, str, f"{where}.{key}[{i}]")
    return values
