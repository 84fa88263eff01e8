"""Canonical encodings shared by approvals and the audit log.

Canonical JSON here is: keys sorted, no insignificant whitespace, UTF-8, no
floats (integers and strings only), so the same value always has the same
bytes. Approval statements are signed over these bytes and audit entries are
hashed over them (docs/architecture.md §4, §6).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

__all__ = ["canonical_json", "format_time", "parse_time"]


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError("canonical JSON does not allow floats")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("canonical JSON keys must be strings")
            _reject_floats(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _reject_floats(v)


def canonical_json(value: Any) -> bytes:
    """Encode `value` as canonical JSON bytes."""
    _reject_floats(value)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def format_time(t: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds and a Z suffix, e.g. 2026-01-02T03:04:05.000006Z."""
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(s: str) -> dt.datetime:
    """Parse an RFC 3339 time with an explicit offset or Z."""
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"time {s!r} has no timezone")
    try:
        return t.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable UTC
        raise ValueError(f"time {s!r} is out of range") from None
