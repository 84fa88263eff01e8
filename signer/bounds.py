"""Bounds on what one caller can make the server hold or write (DESIGN §14).

- `echo` is the one way a value a caller sent (an id, a name, a reason) is put
  into an error message or a log line: quoted, control and format characters
  escaped, cut to a few dozen characters with its length said. `clip` cuts a
  whole message, and `clip_log_values` (a structlog processor) cuts every value
  of every log line, so no call can write more than a few KiB to the log.
- `RateLimit` lets a few log lines per identity and minute through (the rate of
  `Limits.max_rejections_per_minute`, as for the audit log's rejection entries)
  and counts the rest into the next line let through, with a cap across
  identities as well.
- `Slots` bounds how many calls of one kind an identity may hold at once; a
  caller over its cap is told at once (RESOURCE_EXHAUSTED), it never queues.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from signer.errors import TooLargeError

__all__ = [
    "MAX_ECHO",
    "MAX_MESSAGE",
    "RateLimit",
    "Slots",
    "clip",
    "clip_log_values",
    "echo",
    "fitting",
]

MAX_ECHO = 128  # characters of a caller's value shown in a message
MAX_MESSAGE = 1024  # characters of a status message or of one log value


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """`value` as quoted in a message: repr (controls escaped), at most `limit` characters
    of it, and its length when it was cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def fitting(sizes: Sequence[int], max_bytes: int | None) -> int:
    """How many of the first `sizes` fit in `max_bytes` together (all when None), and
    one at least: a page always moves on."""
    if max_bytes is None:
        return len(sizes)
    total = 0
    for n, size in enumerate(sizes):
        total += size
        if total > max_bytes:
            return max(n, 1)
    return len(sizes)


def clip_log_values(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """structlog processor: no value of a log line is over MAX_MESSAGE characters (a
    traceback, `exception`, over 16 times that)."""
    for key, value in event.items():
        if isinstance(value, bool | int | float | type(None)):
            continue
        limit = MAX_MESSAGE * 16 if key == "exception" else MAX_MESSAGE
        text = value if isinstance(value, str) else repr(value) if isinstance(value, bytes) else ""
        text = text or str(value)
        if len(text) > limit:
            event[key] = clip(text, limit)
    return event


class RateLimit:
    """At most `per_key` events per key and `overall` in all, per window of `window` seconds.

    `allow(key)` returns None when the event is over the limit (it is counted), else how
    many of that key's events were held back since the last one let through.
    """

    def __init__(
        self,
        per_key: int,
        overall: int | None = None,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_key = per_key
        self.overall = overall if overall is not None else per_key * 10
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._seen: dict[str, int] = {}  # events let through in this window, by key
        self._held: dict[str, int] = {}  # events held back in this window, by key
        self._carried: dict[str, int] = {}  # held back in the last window, not yet told
        self._total = 0

    def allow(self, key: str) -> int | None:
        with self._lock:
            now = self._clock()
            if now - self._start >= self.window:
                # A count is told with the key's next event in the following window, or
                # dropped: the maps hold only keys active in the last two windows.
                self._start, self._seen, self._total = now, {}, 0
                self._carried, self._held = self._held, {}
            seen = self._seen.get(key, 0)
            if seen >= self.per_key or self._total >= self.overall:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._seen[key] = seen + 1
            self._total += 1
            return self._carried.pop(key, 0) + self._held.pop(key, 0)


class Slots:
    """At most `limit` concurrent holders per identity of one kind of call."""

    def __init__(self, limit: int, what: str, reason: str) -> None:
        self.limit = limit
        self.what = what  # e.g. "waits open", for the message
        self.reason = reason
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    def held(self, identity: str) -> int:
        with self._lock:
            return self._held.get(identity, 0)

    def acquire(self, identity: str) -> None:
        """Take a slot, or raise TooLargeError (RESOURCE_EXHAUSTED) at once."""
        with self._lock:
            n = self._held.get(identity, 0)
            if n >= self.limit:
                raise TooLargeError(
                    f"{echo(identity)} already has {self.limit} {self.what}; "
                    "finish or cancel some first",
                    reason=self.reason,
                )
            self._held[identity] = n + 1

    def release(self, identity: str) -> None:
        with self._lock:
            n = self._held.get(identity, 0) - 1
            if n > 0:
                self._held[identity] = n
            else:
                self._held.pop(identity, None)  # the map holds only identities with calls

    @contextmanager
    def hold(self, identity: str) -> Iterator[None]:
        self.acquire(identity)
        try:
            yield
        finally:
            self.release(identity)
