"""Typed access to the server config's TOML tables, for the config's parsers.

Every error names the file and the dotted key, and says how to fix it; a
setting a table does not have (a typo) is refused, never silently ignored; a
duration is read with its range, so a value outside it names the range.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from signer.errors import ConfigError
from signer.parsing import parse_duration

__all__: list[str] = []  # for signer.server.config and signer.server.policy_config only

_SECOND = dt.timedelta(seconds=1)


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str) -> None:
        self.path, self.table, self.prefix = path, table, prefix

    def error(self, key: str, problem: str) -> ConfigError:
        where = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(f"{self.path}: {where}: {problem}")

    def get(self, key: str, kind: type, default: Any = ..., *, required: bool = True) -> Any:
        if key not in self.table:
            if default is not ...:
                return default
            raise self.error(key, f"missing; add `{key} = ...` to [{self.prefix}]")
        value = self.table[key]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.error(key, f"must be a {kind.__name__}, got {value!r}")
        return value

    def path_of(self, key: str, default: Any = ...) -> Path | None:
        value = self.get(key, str, default)
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def sub(self, key: str, *, required: bool = True) -> _Reader:
        value = self.table.get(key, None if required else {})
        if value is None:
            raise self.error(key, f"missing table; add a [{key}] section")
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        prefix = f"{self.prefix}.{key}" if self.prefix else key
        return _Reader(self.path, value, prefix)

    def only(self, *allowed: str) -> None:
        """Refuse keys this table does not have: a typo must not be silently ignored."""
        for key in self.table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                raise self.error(key, f"unknown setting; {hint}")

    def names(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default)
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)


def _duration_of(
    r: _Reader, key: str, default: str, low: dt.timedelta, high: dt.timedelta
) -> dt.timedelta:
    try:
        value = parse_duration(r.get(key, str, default), low, high)
    except ValueError as e:
        raise r.error(key, str(e)) from None
    return value
