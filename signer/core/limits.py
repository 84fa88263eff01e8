"""A key's signing limits (docs/architecture.md §12): how many signatures, and for how long an
approval counts.

- `per_request`: the most signatures (digests) one request may ask for;
- `per_day`: the most the key makes in any 24 hours (a rolling day, the same
  wherever the officers are);
- `per_window`: the most it makes in one opening of a release window (from the
  moment the window opened);
- `approval_max_age`: an approval counts for this long after it was given, so an
  approval given before a weekend does not sign after it;
- `hold_outside_windows`: a request made outside the key's windows is taken and
  waits for the next one to be signed (otherwise refused).

A request over `per_request` (or over a whole day's or window's allowance) is
refused when it is made; one that would take the key past its day's or window's
count waits, APPROVED, and is signed once the count allows (the sweeper tries
again every second). `Usage` is what the count is checked against: the server
reads it from its store in the transaction that records the signature, and
`signer audit verify` from the log it replays, with the same bounds.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signer.core.windows import Window
from signer.fields import field

__all__ = ["COUNTS", "DAY", "FIELDS", "KeyLimits", "SignedCounts", "Usage", "window_opened"]

DAY = dt.timedelta(hours=24)
MAX_COUNT = 10_000_000
MAX_AGE = dt.timedelta(days=30)
# The counts' names, in the config and the recorded policy alike.
COUNTS = ("max_signatures_per_request", "max_signatures_per_day", "max_signatures_per_window")
FIELDS = frozenset({*COUNTS, "approval_max_age_seconds", "outside_windows"})


@dataclass(frozen=True)
class Usage:
    """What a signature is counted against: its own signatures, the key's signatures in
    the 24 hours before it (exclusive), and since its window opened (inclusive)."""

    signatures: int
    last_day: int = 0
    this_window: int = 0


@dataclass(frozen=True)
class KeyLimits:
    per_request: int | None = None
    per_day: int | None = None
    per_window: int | None = None
    approval_max_age: dt.timedelta | None = None
    hold_outside_windows: bool = False

    @property
    def counted(self) -> bool:
        """Whether signing needs the key's `Usage`."""
        return self.per_day is not None or self.per_window is not None

    def request_problem(self, key: str, signatures: int) -> str | None:
        """Why a request of `signatures` can never be signed under these limits."""
        for limit, what in (
            (self.per_request, "per request"),
            (self.per_day, "in 24 hours"),
            (self.per_window, "per release window"),
        ):
            if limit is not None and signatures > limit:
                return (
                    f"key {key!r} makes at most {limit} signature{'s' * (limit != 1)} {what}; "
                    f"this request asks for {signatures}"
                )
        return None

    def signing_problem(self, key: str, usage: Usage) -> str | None:
        """Why signing now would take the key past its day's or window's count."""
        if self.per_day is not None and usage.last_day + usage.signatures > self.per_day:
            return (
                f"key {key!r} made {usage.last_day} signatures in the last 24 hours and makes "
                f"at most {self.per_day}: signed once the count allows"
            )
        if self.per_window is not None and usage.this_window + usage.signatures > self.per_window:
            return (
                f"key {key!r} made {usage.this_window} signatures in this release window and "
                f"makes at most {self.per_window} in one: signed in the next"
            )
        return None

    def approval_counts(self, given: dt.datetime, at: dt.datetime) -> bool:
        """Whether an approval given at `given` still counts at `at`."""
        return self.approval_max_age is None or at - given <= self.approval_max_age

    def as_dict(self) -> dict[str, Any]:
        """The recorded fields (absent when unset: what policies before them said)."""
        d: dict[str, Any] = {}
        if self.per_request is not None:
            d["max_signatures_per_request"] = self.per_request
        if self.per_day is not None:
            d["max_signatures_per_day"] = self.per_day
        if self.per_window is not None:
            d["max_signatures_per_window"] = self.per_window
        if self.approval_max_age is not None:
            d["approval_max_age_seconds"] = int(self.approval_max_age.total_seconds())
        if self.hold_outside_windows:
            d["outside_windows"] = "hold"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str, windows: Sequence[Window]) -> KeyLimits:
        """The recorded fields of a key's policy (hostile input); ValueError names one."""
        counts = {}
        for name in COUNTS:
            value = field(d, name, int, where, None)
            if value is not None and not 1 <= value <= MAX_COUNT:
                raise ValueError(f"{where}.{name} must be from 1 to {MAX_COUNT}")
            counts[name] = value
        age = field(d, "approval_max_age_seconds", int, where, None)
        if age is not None and not 1 <= age <= MAX_AGE.total_seconds():
            raise ValueError(
                f"{where}.approval_max_age_seconds must be from 1 to {int(MAX_AGE.total_seconds())}"
            )
        outside = field(d, "outside_windows", str, where, "refuse")
        if outside not in ("refuse", "hold"):
            raise ValueError(f"{where}.outside_windows must be refuse or hold")
        limits = cls(
            counts["max_signatures_per_request"],
            counts["max_signatures_per_day"],
            counts["max_signatures_per_window"],
            dt.timedelta(seconds=age) if age is not None else None,
            outside == "hold",
        )
        if (problem := limits.windows_problem(windows)) is not None:
            raise ValueError(f"{where}: {problem}")
        return limits

    def windows_problem(self, windows: Sequence[Window]) -> str | None:
        """What the windows-bound settings need that `windows` lacks."""
        if not windows and self.per_window is not None:
            return "max_signatures_per_window needs release windows"
        if not windows and self.hold_outside_windows:
            return "outside_windows needs release windows"
        return None


def window_opened(windows: Sequence[Window], at: dt.datetime) -> dt.datetime | None:
    """When the window `at` is in opened (the earliest of those it is in), or None."""
    opened = [o for w in windows if (o := w.opened(at)) is not None]
    return min(opened) if opened else None


class SignedCounts:
    """The signatures each key made, as a log replays them (`signer audit verify`): the
    `Usage` a new signature meets, counted as the server counts it from its store."""

    _KEPT = DAY + dt.timedelta(hours=1)  # past any window and day (clocks of replicas)

    def __init__(self) -> None:
        self._signed: dict[str, deque[tuple[dt.datetime, int]]] = {}

    def usage(self, key: str, windows: Sequence[Window], signatures: int, at: dt.datetime) -> Usage:
        made = self._signed.get(key, deque())
        opened = window_opened(windows, at)
        return Usage(
            signatures,
            sum(n for t, n in made if t > at - DAY),
            sum(n for t, n in made if opened is not None and t >= opened),
        )

    def add(self, key: str, at: dt.datetime, signatures: int) -> None:
        made = self._signed.setdefault(key, deque())
        made.append((at, signatures))
        while made and made[0][0] < at - self._KEPT:
            made.popleft()
