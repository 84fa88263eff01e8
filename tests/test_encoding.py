"""Canonical encodings: canonical JSON, times, audit entries and durations.

Approval statements are signed over canonical bytes and audit entries are
hashed over them, so one value must have exactly one encoding and anything
else must be refused (docs/architecture.md §4, §6, invariants 4 and 6). DSSE and statements:
tests/test_encoding_dsse.py.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signer.audit.entry import EVENTS, AuditEntry
from signer.encoding import canonical_json, format_time, parse_time
from signer.parsing import parse_duration
from tests.strategies import T, json_scalars, json_values, noncanonical_forms, times

entries = st.builds(
    AuditEntry,
    index=st.integers(0, 2**53),
    time=times,
    event=st.sampled_from(EVENTS),
    actor=st.text(max_size=20),
    request_id=st.text(max_size=40),
    details=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)


# -- canonical JSON --------------------------------------------------------------------


@given(json_values)
def test_canonical_json_round_trips(value: Any) -> None:
    """canonical_json decodes back to the same value and re-encodes to the same bytes."""
    raw = canonical_json(value)
    assert json.loads(raw.decode("utf-8")) == value
    assert canonical_json(json.loads(raw)) == raw


@given(st.dictionaries(st.text(), json_scalars, max_size=8), st.randoms())
def test_canonical_json_sorts_keys(value: dict[str, Any], rnd: Any) -> None:
    """Key order in the input does not change the bytes; keys come out sorted."""
    items = list(value.items())
    rnd.shuffle(items)
    raw = canonical_json(dict(items))
    assert raw == canonical_json(value)
    assert list(json.loads(raw)) == sorted(value)


_NO_SPACE = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc")))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | _NO_SPACE,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_NO_SPACE, inner, max_size=4),
        max_leaves=20,
    )
)
def test_canonical_json_has_no_insignificant_whitespace(value: Any) -> None:
    """Without whitespace inside strings, the encoding contains no whitespace at all."""
    raw = canonical_json(value)
    assert not any(c in raw for c in b" \t\r\n")


@given(st.text(st.characters(min_codepoint=0x80, blacklist_categories=["Cs"]), min_size=1))
def test_canonical_json_is_utf8_not_escaped(text: str) -> None:
    """Non-ASCII characters are written as UTF-8, not as \\u escapes."""
    assert canonical_json(text) == b'"' + text.encode("utf-8") + b'"'


def test_canonical_json_known_answer() -> None:
    """A fixed value has fixed bytes."""
    value = {"b": [1, True, None], "a": "é x", "c": {"z": -1, "y": ""}}
    assert canonical_json(value) == '{"a":"é x","b":[1,true,null],"c":{"y":"","z":-1}}'.encode()


@pytest.mark.parametrize(
    "value",
    [1.0, 0.5, float("nan"), float("inf"), [1, [2.5]], {"a": {"b": 1e3}}, ({"x": -0.0},)],
)
def test_canonical_json_rejects_floats(value: Any) -> None:
    """A float anywhere in the value is refused."""
    with pytest.raises(ValueError, match="float"):
        canonical_json(value)


@given(json_values, st.floats())
def test_canonical_json_rejects_floats_anywhere(value: Any, f: float) -> None:
    """A float nested inside any value is refused."""
    with pytest.raises(ValueError):
        canonical_json({"v": value, "f": [f]})


@pytest.mark.parametrize("value", [{1: "a"}, {"a": {None: 1}}, {(1, 2): 0}])
def test_canonical_json_rejects_non_string_keys(value: Any) -> None:
    """Object keys must be strings (json would silently convert them)."""
    with pytest.raises(ValueError):
        canonical_json(value)


@given(times)
def test_time_format_round_trips(t: dt.datetime) -> None:
    """format_time is fixed-width RFC 3339 UTC with microseconds and parses back exactly."""
    s = format_time(t)
    assert len(s) == 27 and s.endswith("Z")
    assert parse_time(s) == t


@pytest.mark.parametrize("s", ["2026-01-02T03:04:05", "yesterday", ""])
def test_parse_time_rejects_naive_or_junk(s: str) -> None:
    """A time without an offset, or not a time, is refused."""
    with pytest.raises(ValueError):
        parse_time(s)


def test_format_time_rejects_naive() -> None:
    """A naive datetime cannot be formatted."""
    with pytest.raises(ValueError):
        format_time(dt.datetime(2026, 1, 1))


# -- audit entries ---------------------------------------------------------------------


@settings(max_examples=50)
@given(entries)
def test_audit_entry_round_trips(entry: AuditEntry) -> None:
    """An entry's bytes are canonical and parse back to the same entry."""
    raw = entry.to_bytes()
    assert raw == canonical_json(json.loads(raw))
    assert set(json.loads(raw)) == {"index", "time", "event", "actor", "request_id", "details"}
    assert AuditEntry.from_bytes(raw) == entry


def test_audit_entry_noncanonical_is_rejected() -> None:
    """Spaces, key order, escapes or another time form make an entry invalid."""
    entry = AuditEntry(3, T, "request.created", "cï", "r", {"b": 1, "a": ["x"]})
    raw = entry.to_bytes()
    for bad in noncanonical_forms(raw)[:-1]:
        with pytest.raises(ValueError):
            AuditEntry.from_bytes(bad)


# -- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", dt.timedelta(minutes=15)),
        ("1h", dt.timedelta(hours=1)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("90s", dt.timedelta(seconds=90)),
        ("2d", dt.timedelta(days=2)),
        ("1d2h3m4s", dt.timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0s", dt.timedelta(0)),
        (" 5m ", dt.timedelta(minutes=5)),
        ("100h", dt.timedelta(hours=100)),
    ],
)
def test_parse_duration_valid(text: str, expected: dt.timedelta) -> None:
    """Durations like 15m, 1h30m, 90s and 2d parse."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "15",
        "m",
        "1.5h",
        "-5m",
        "5 m",
        "30m1h",
        "1h1h",
        "5M",
        "1w",
        "PT5M",
        "5min",
        "1h 30m",
    ],
)
def test_parse_duration_invalid(text: str) -> None:
    """Anything else is a ValueError that shows the expected form."""
    with pytest.raises(ValueError, match="like 15m"):
        parse_duration(text)
