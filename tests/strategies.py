"""Values for the encoding tests: strategies for JSON and times, a fixed time, non-canonical forms.

`noncanonical_forms(raw)` is the same JSON value as `raw` written every other
way a careless encoder might (spaces, key order, escapes, BOM, another time
form, UTF-16): each must be refused where canonical bytes are required.
"""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import strategies as st

__all__ = ["T", "json_scalars", "json_values", "noncanonical_forms", "times"]

T = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)

json_scalars = st.none() | st.booleans() | st.integers() | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
times = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.just(dt.UTC),
)


def noncanonical_forms(raw: bytes) -> list[bytes]:
    d = json.loads(raw)
    return [
        json.dumps(d, sort_keys=True).encode(),  # spaces
        json.dumps(d, separators=(",", ":")).encode(),  # unsorted
        json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(),
        raw + b"\n",
        b" " + raw,
        b"\xef\xbb\xbf" + raw,  # BOM
        raw.replace(b"Z", b"+00:00"),
        json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-16"),
    ]
