"""Canonical encodings: canonical JSON, DSSE PAE and envelopes, statements, audit entries.

Approval statements are signed over canonical bytes and audit entries are
hashed over them, so one value must have exactly one encoding and anything
else must be refused (DESIGN §4, §6, invariants 4 and 6).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signer.algorithms import HASH_SIZES
from signer.approval.ed25519 import Ed25519Signer
from signer.audit.entry import EVENTS, AuditEntry
from signer.dsse import (
    MAX_ENVELOPE_BYTES,
    PAYLOAD_TYPE,
    Envelope,
    Statement,
    key_id_of,
    pae,
    sign_statement,
)
from signer.encoding import canonical_json, format_time, parse_time
from signer.errors import EnvelopeError
from signer.model import Digest
from signer.parsing import parse_duration

KEY = Ed25519Signer.generate()
OTHER_KEY = Ed25519Signer.generate()
T = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)

# -- strategies ------------------------------------------------------------------------

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
digests = st.sampled_from(sorted(HASH_SIZES)).flatmap(
    lambda alg: st.builds(
        Digest,
        st.just(alg),
        st.binary(min_size=HASH_SIZES[alg], max_size=HASH_SIZES[alg]),
        st.text(min_size=1, max_size=40),
    )
)
statements = st.one_of(
    st.builds(
        Statement,
        request_id=st.uuids().map(str),
        key_name=st.text(min_size=1, max_size=20),
        key_id=st.binary(min_size=32, max_size=32).map(bytes.hex),
        digests=st.lists(digests, min_size=1, max_size=4).map(tuple),
        decision=st.just("approve"),
        approver=st.text(min_size=1, max_size=20),
        issued_at=times,
        reason=st.just(""),
    ),
    st.builds(
        Statement,
        request_id=st.uuids().map(str),
        key_name=st.text(min_size=1, max_size=20),
        key_id=st.binary(min_size=32, max_size=32).map(bytes.hex),
        digests=st.lists(digests, min_size=1, max_size=4).map(tuple),
        decision=st.just("deny"),
        approver=st.text(min_size=1, max_size=20),
        issued_at=times,
        reason=st.text(max_size=50),
    ),
)
entries = st.builds(
    AuditEntry,
    index=st.integers(0, 2**53),
    time=times,
    event=st.sampled_from(EVENTS),
    actor=st.text(max_size=20),
    request_id=st.text(max_size=40),
    details=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)


def _statement(**kw: Any) -> Statement:
    fields: dict[str, Any] = {
        "request_id": "0b1c2d3e-0000-4000-8000-000000000001",
        "key_name": "release",
        "key_id": "ab" * 32,
        "digests": (Digest("sha256", b"\x01" * 32, "app.tar"),),
        "decision": "approve",
        "approver": "alice",
        "issued_at": T,
    }
    return Statement(**{**fields, **kw})


def _envelope_dict(**kw: Any) -> dict[str, Any]:
    return {**json.loads(sign_statement(_statement(), KEY)), **kw}


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


# -- DSSE ------------------------------------------------------------------------------


def test_pae_known_answer() -> None:
    """The DSSE specification's example pre-authentication encoding."""
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    """Lengths are UTF-8 byte counts, so non-ASCII types cannot be confused."""
    assert pae("é", b"") == b"DSSEv1 2 \xc3\xa9 0 "


@given(st.text(max_size=30), st.binary(max_size=30), st.text(max_size=30), st.binary(max_size=30))
def test_pae_is_injective(t1: str, p1: bytes, t2: str, p2: bytes) -> None:
    """Different (type, payload) pairs never share an encoding."""
    if (t1, p1) != (t2, p2):
        assert pae(t1, p1) != pae(t2, p2)


@settings(max_examples=50)
@given(statements)
def test_statement_round_trips(statement: Statement) -> None:
    """Statement.to_bytes is canonical and from_bytes gives the same statement back."""
    raw = statement.to_bytes()
    assert raw == canonical_json(json.loads(raw))
    assert Statement.from_bytes(raw) == statement


@settings(max_examples=25)
@given(statements)
def test_signed_statement_verifies(statement: Statement) -> None:
    """sign_statement makes an envelope that parses and verifies to the same statement."""
    env = Envelope.parse(sign_statement(statement, KEY))
    assert env.payload_type == PAYLOAD_TYPE and env.keyid == key_id_of(KEY.public_key())
    assert env.verify(KEY.public_key()) == statement


def _noncanonical(raw: bytes) -> list[bytes]:
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


def test_noncanonical_statement_is_rejected() -> None:
    """Only the canonical bytes of a statement are accepted, never an equivalent form."""
    raw = _statement(approver="zoë", key_name="a" * 3).to_bytes()
    assert Statement.from_bytes(raw).approver == "zoë"
    for bad in _noncanonical(raw):
        assert bad != raw
        with pytest.raises(EnvelopeError):
            Statement.from_bytes(bad)


@pytest.mark.parametrize(
    "change",
    [
        {"decision": "maybe"},
        {"extra": 1},
        {"reason": "x"},  # a reason on an approval
        {"request_id": 1},
        {"approver": None},
        {"issued_at": "2026-01-02T03:04:05"},
        {"issued_at": "soon"},
        {"digests": [{"algorithm": "sha256", "digest": "zz", "artifact": "a"}]},
        {"digests": [{"algorithm": "sha256", "artifact": "a"}]},
        {"digests": "abc"},
        {"digests": [{"algorithm": 1.5, "digest": "00", "artifact": "a"}]},
        {"key_id": 0.5},
    ],
    ids=repr,
)
def test_malformed_statement_is_rejected(change: dict[str, Any]) -> None:
    """A statement with a wrong, missing or extra field is an EnvelopeError, nothing else."""
    d = {**_statement().as_dict(), **change}
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(EnvelopeError):
        Statement.from_bytes(raw)


@pytest.mark.parametrize("reason", [5, None, ["no"], {"why": "no"}])
def test_deny_reason_must_be_a_string(reason: Any) -> None:
    """A denial whose reason is not a string is refused at parse time."""
    d = {**_statement(decision="deny", reason="x").as_dict(), "reason": reason}
    with pytest.raises(EnvelopeError):
        Statement.from_bytes(json.dumps(d, sort_keys=True, separators=(",", ":")).encode())


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"x"', b"null", b"", b"{", b"[" * 50_000])
def test_statement_that_is_not_an_object_is_rejected(payload: bytes) -> None:
    """Non-object or unparsable payloads are EnvelopeErrors."""
    with pytest.raises(EnvelopeError):
        Statement.from_bytes(payload)


_ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=10)  # lone surrogates too
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ANY_TEXT, inner, max_size=3),
    max_leaves=10,
)
_FIELDS = ("request_id", "key_name", "key_id", "digests", "decision", "approver", "issued_at")


_PLAUSIBLE = {
    "decision": st.sampled_from(["approve", "deny"]) | _ANY_JSON,
    "digests": st.lists(
        st.fixed_dictionaries(
            {
                "algorithm": st.just("sha256") | _ANY_JSON,
                "digest": st.just("00" * 32) | _ANY_JSON,
                "artifact": _ANY_TEXT | _ANY_JSON,
            }
        ),
        max_size=2,
    )
    | _ANY_JSON,
    "issued_at": st.sampled_from([format_time(T), "2026-01-02T03:04:05Z", "x"]) | _ANY_JSON,
}


@settings(max_examples=200)
@given(
    st.fixed_dictionaries(
        {k: _PLAUSIBLE.get(k, _ANY_TEXT) for k in _FIELDS},
        optional={"reason": _ANY_TEXT | _ANY_JSON, "extra": _ANY_JSON},
    ),
    st.booleans(),
)
def test_statement_parser_raises_only_envelope_errors(d: dict[str, Any], ascii_only: bool) -> None:
    """Any JSON object, however odd its values, parses or is an EnvelopeError, nothing else."""
    payload = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only)
    try:
        raw = payload.encode("utf-8")
    except UnicodeEncodeError:
        raw = payload.encode("utf-8", "surrogatepass")
    try:
        st_ = Statement.from_bytes(raw)
    except EnvelopeError:
        return
    assert st_.to_bytes() == raw


@settings(max_examples=200)
@given(st.binary(max_size=300) | _ANY_JSON.map(lambda v: json.dumps(v).encode()))
def test_envelope_parser_raises_only_envelope_errors(raw: bytes) -> None:
    """Any bytes parse as an envelope or are an EnvelopeError, nothing else."""
    with contextlib.suppress(EnvelopeError):
        Envelope.parse(raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_VALID = sign_statement(_statement(), KEY)
_SIG = _envelope_dict()["signatures"][0]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b"{}",
        json.dumps(_envelope_dict(payloadType="application/vnd.in-toto+json")).encode(),
        json.dumps(_envelope_dict(payloadType=None)).encode(),
        json.dumps(_envelope_dict(signatures=[])).encode(),
        json.dumps(_envelope_dict(signatures=[_SIG, _SIG])).encode(),
        json.dumps(_envelope_dict(signatures=_SIG)).encode(),
        json.dumps(_envelope_dict(signatures=["sig"])).encode(),
        json.dumps(_envelope_dict(signatures=[{"keyid": ""}])).encode(),
        json.dumps(_envelope_dict(signatures=[{**_SIG, "sig": "!!!"}])).encode(),
        json.dumps(_envelope_dict(signatures=[{**_SIG, "sig": 12}])).encode(),
        json.dumps(_envelope_dict(payload="not base64!")).encode(),
        json.dumps(_envelope_dict(payload="YWJj\n")).encode(),
        json.dumps(_envelope_dict(payload=None)).encode(),
        json.dumps({k: v for k, v in _envelope_dict().items() if k != "payload"}).encode(),
        _VALID[:-1],
        _VALID.decode().encode("utf-16"),
        _VALID.decode().encode("utf-32"),
        b"\xff\xfe" + _VALID,
        b"[" * 100_000,
        b'{"a":' * 50_000,
        _VALID + b" " * MAX_ENVELOPE_BYTES,
    ],
    ids=lambda r: repr(r[:40]) + f"..{len(r)}",
)
def test_envelope_parse_rejects_malformed(raw: bytes) -> None:
    """Empty, not JSON, wrong payloadType, 0 or 2 signatures, bad base64, oversize, nesting."""
    with pytest.raises(EnvelopeError):
        Envelope.parse(raw)


def test_envelope_size_limit_is_inclusive() -> None:
    """An envelope of exactly MAX_ENVELOPE_BYTES parses; one byte more is refused."""
    padded = _VALID + b" " * (MAX_ENVELOPE_BYTES - len(_VALID))
    assert len(padded) == MAX_ENVELOPE_BYTES
    assert Envelope.parse(padded).verify(KEY.public_key()) == _statement()
    with pytest.raises(EnvelopeError, match="over"):
        Envelope.parse(padded + b" ")


def test_envelope_verify_with_wrong_key() -> None:
    """An envelope does not verify with another officer's key."""
    with pytest.raises(EnvelopeError) as e:
        Envelope.parse(_VALID).verify(OTHER_KEY.public_key())
    assert e.value.reason == "BAD_APPROVAL_SIGNATURE"


def test_envelope_payload_type_is_signed() -> None:
    """The signature covers the payload type: the same sig over another type fails."""
    payload = _statement().to_bytes()
    sig = KEY.sign(pae("application/json", payload))
    raw = json.dumps(
        {"payload": _b64(payload), "payloadType": PAYLOAD_TYPE, "signatures": [{"sig": _b64(sig)}]}
    ).encode()
    with pytest.raises(EnvelopeError):
        Envelope.parse(raw).verify(KEY.public_key())


def _with(payload: bytes, sig: bytes) -> bytes:
    return json.dumps(
        {"payload": _b64(payload), "payloadType": PAYLOAD_TYPE, "signatures": [{"sig": _b64(sig)}]}
    ).encode()


def test_any_bit_flip_in_payload_or_sig_fails() -> None:
    """Flipping any single bit of the payload or of the signature breaks verification."""
    env = Envelope.parse(_VALID)
    assert Envelope.parse(_with(env.payload, env.sig)).verify(KEY.public_key()) == _statement()
    for field in ("payload", "sig"):
        original = getattr(env, field)
        for bit in range(len(original) * 8):
            flipped = bytearray(original)
            flipped[bit // 8] ^= 1 << (bit % 8)
            parts = {"payload": env.payload, "sig": env.sig, field: bytes(flipped)}
            with pytest.raises(EnvelopeError):
                Envelope.parse(_with(parts["payload"], parts["sig"])).verify(KEY.public_key())


def test_envelope_keyid_is_not_trusted() -> None:
    """The keyid is an unsigned hint: a wrong keyid still verifies with the right key."""
    d = _envelope_dict()
    d["signatures"][0]["keyid"] = key_id_of(OTHER_KEY.public_key())
    assert Envelope.parse(json.dumps(d).encode()).verify(KEY.public_key()) == _statement()


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
    for bad in _noncanonical(raw)[:-1]:
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
