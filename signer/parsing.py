"""Parsers of setting values shared by the server, the clients and the CLIs.

Durations (`1h30m`, bounded), HOST:PORT addresses, and secrets read from a file
or an environment variable (never argv, invariant 7). Nothing here knows the
server's configuration: clients parse their profiles and flags with the same
rules as the server parses its config file.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from signer.errors import ConfigError

__all__ = [
    "MAX_DURATION",
    "MAX_TTL",
    "format_duration",
    "parse_address",
    "parse_duration",
    "read_secret",
]

_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
# The longest duration any setting, flag or URI may name: far below what datetime holds,
# so no expiry or deadline computed from one can overflow.
MAX_DURATION = dt.timedelta(days=366)
MAX_TTL = dt.timedelta(days=30)  # a request's lifetime (keys.NAME.max_ttl, --ttl, waits on one)


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) -> (host, port); ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} must be HOST:PORT (port 1-65535), e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


def parse_duration(
    text: str, low: dt.timedelta = dt.timedelta(0), high: dt.timedelta = MAX_DURATION
) -> dt.timedelta:
    """Parse `1h30m`, `15m`, `90s`, `2d` within [low, high]; ValueError naming the range."""
    m = _DURATION.fullmatch(text.strip()) if len(text) <= 64 else None
    if not text.strip() or m is None:
        raise ValueError(f"{text!r} is not a duration like 15m, 1h or 1h30m")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    seconds = ((d * 24 + h) * 60 + mi) * 60 + s  # exact (Python ints): checked before timedelta
    if not low.total_seconds() <= seconds <= high.total_seconds():
        raise ValueError(
            f"{text.strip()!r} is out of range: must be from {format_duration(low)} "
            f"to {format_duration(high)}"
        )
    return dt.timedelta(seconds=seconds)


def format_duration(d: dt.timedelta) -> str:
    """The shortest `parse_duration` text for a whole number of seconds, e.g. 1h30m."""
    s = int(d.total_seconds())
    parts = [(s // 86400, "d"), (s // 3600 % 24, "h"), (s // 60 % 60, "m"), (s % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def read_secret(file: Path | None, env: str | None, what: str) -> str:
    """Read a secret from a file or environment variable (never argv)."""
    if file is not None:
        try:
            value = file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {what} file {file}: {e.strerror}") from None
        if file.stat().st_mode & 0o077:
            raise ConfigError(
                f"{what} file {file} is readable by group or others; run chmod 600 {file}"
            )
    elif env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"environment variable {env} ({what}) is not set or empty")
    else:
        raise ConfigError(f"no {what} configured: set a file or an environment variable")
    if not value:
        raise ConfigError(f"{what} is empty")
    return value
