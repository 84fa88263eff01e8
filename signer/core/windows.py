"""Release windows (docs/architecture.md §12): the days and hours, in a named time zone, in which a
key's requests may be made and signed.

A window is written `DAYS HH:MM-HH:MM ZONE`, e.g. `Mon-Fri 09:00-17:00 Europe/Berlin`:
DAYS a day (`Sat`), a range (`Mon-Fri`, wrapping past Sunday: `Fri-Mon`) or a comma
list of them (`Mon,Wed,Fri`); the hours a half-open range within one day (start
before end; a night is two windows); ZONE an IANA time zone. `contains` reads the
instant in that zone, so daylight saving moves the window with the clock on the
wall. `str()` is the canonical form the policy records; `parse` reads only what it
would write back the same.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Window", "in_windows"]

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HOST_ZONES = {"localtime", "posixrules", "Factory"}  # mean one thing here, another there
_FORM = re.compile(
    r"(?P<days>[A-Za-z,-]{3,64}) (?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d) "
    r"(?P<zone>[A-Za-z0-9_+/-]{1,64})\Z"
)


def _day(name: str) -> int:
    if name not in _DAYS:
        raise ValueError(f"{name!r} is not a day ({', '.join(_DAYS)})")
    return _DAYS.index(name)


def _time(text: str) -> dt.time:
    hours, minutes = int(text[:2]), int(text[3:])
    if hours == 24 and minutes == 0:
        return dt.time.max
    if not (hours < 24 and minutes < 60):
        raise ValueError(f"{text} is not a time of day (00:00 to 24:00)")
    return dt.time(hours, minutes)


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday), a start and an end time, a time zone."""

    days: tuple[str, ...]  # as written: "Mon-Fri", "Sat"
    start: dt.time
    end: dt.time
    zone: str

    @classmethod
    def parse(cls, text: str) -> Window:
        """A window as written; ValueError naming what is wrong."""
        m = _FORM.match(text)
        if m is None:
            raise ValueError(
                f"{text!r} is not a window: DAYS HH:MM-HH:MM ZONE, e.g. "
                "'Mon-Fri 09:00-17:00 Europe/Berlin'"
            )
        parts = tuple(m["days"].split(","))
        for part in parts:
            if part.count("-") > 1:
                raise ValueError(f"{part!r} is not a day or a range of days")
            for name in part.split("-"):
                _day(name)
        start, end = _time(m["start"]), _time(m["end"])
        if start >= end:
            raise ValueError(f"{text!r}: the window must start before it ends (a night is two)")
        try:
            if m["zone"] in _HOST_ZONES or m["zone"].startswith(("posix/", "right/")):
                raise ValueError("a name whose meaning depends on the host")
            ZoneInfo(m["zone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{m['zone']!r} is not a time zone (IANA, e.g. Europe/Berlin)"
            ) from None
        window = cls(parts, start, end, m["zone"])
        if str(window) != text:
            raise ValueError(f"{text!r} is not in canonical form; write {str(window)!r}")
        return window

    @property
    def weekdays(self) -> frozenset[int]:
        out: set[int] = set()
        for part in self.days:
            first, _, last = part.partition("-")
            a, b = _day(first), _day(last or first)
            out |= {(a + i) % 7 for i in range((b - a) % 7 + 1)}
        return frozenset(out)

    def contains(self, at: dt.datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.zone))
        if local.weekday() not in self.weekdays:
            return False
        clock = local.time().replace(tzinfo=None)
        return self.start <= clock and (clock < self.end or self.end == dt.time.max)

    def opened(self, at: dt.datetime) -> dt.datetime | None:
        """When this window, if `at` is in it, opened (UTC); None when `at` is outside."""
        if not self.contains(at):
            return None
        zone = ZoneInfo(self.zone)
        local = at.astimezone(zone)
        return dt.datetime.combine(local.date(), self.start, tzinfo=zone).astimezone(dt.UTC)

    def __str__(self) -> str:
        end = "24:00" if self.end == dt.time.max else self.end.strftime("%H:%M")
        return f"{','.join(self.days)} {self.start.strftime('%H:%M')}-{end} {self.zone}"


def in_windows(windows: tuple[Window, ...], at: dt.datetime) -> bool:
    """Whether `at` falls in one of `windows` (no windows: always)."""
    return not windows or any(w.contains(at) for w in windows)
