"""Bounds on what one caller can make the server hold or write (docs/architecture.md §14).

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
- `Watchdog` runs an action (cancel the call) when what a call waits for has
  not come within a fixed time; one thread serves every call.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog

from signer.errors import TooLargeError

__all__ = [
    "MAX_ECHO",
    "MAX_MESSAGE",
    "RateLimit",
    "Slots",
    "Watchdog",
    "clip",
    "clip_log_values",
    "echo",
    "fitting",
]

log = structlog.get_logger("signer.bounds")

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


@dataclass
class Watch:
    """One watched wait: `expired` once the watchdog has acted on it."""

    expired: bool = False


class Watchdog:
    """Runs `on_expiry` for a wait not over within `seconds` (the same for every wait).

    Waits expire in the order they began, so an ordered map is the whole schedule: a
    wait that ends is taken out of it in O(1), and a single daemon thread, started on
    the first wait, sleeps until the oldest one's time.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._waits: OrderedDict[int, tuple[float, Watch, Callable[[], object]]] = OrderedDict()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def within(self, on_expiry: Callable[[], object]) -> Iterator[Watch]:
        """`on_expiry` runs (on the watchdog's thread) if the block lasts over `seconds`."""
        watch = Watch()
        key = next(self._ids)
        with self._cond:
            self._waits[key] = (self._clock() + self.seconds, watch, on_expiry)
            if self._thread is None or not self._thread.is_alive():  # first, or it died
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            elif len(self._waits) == 1:
                self._cond.notify()
        try:
            yield watch
        finally:
            with self._cond:
                self._waits.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waits:
                    self._cond.wait()
                key, (deadline, watch, on_expiry) = next(iter(self._waits.items()))
                left = deadline - self._clock()
                if left > 0:
                    self._cond.wait(left)
                    continue
                del self._waits[key]
                watch.expired = True
            try:
                on_expiry()
            except Exception:  # one action that fails stops none of the others
                log.exception("watchdog action failed")
