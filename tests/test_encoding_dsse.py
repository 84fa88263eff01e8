"""DSSE: the pre-authentication encoding, approval statements and signed envelopes.

Approval statements are signed over canonical bytes, so one statement has
exactly one encoding and anything else must be refused (docs/architecture.md §4, invariant
4): statements round-trip, odd or malformed ones are EnvelopeErrors and nothing
else, and an envelope verifies only with the officer's key, whole.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signer.algorithms import HASH_SIZES
from signer.approval.ed25519 import Ed25519Signer
from signer.dsse import (
    MAX_ENVELOPE_BYTES,
    PAYLOAD_TYPE,
    Envelope,
    Statement,
    key_id_of,
    pae,
    sign_statement,
)
from signer.encoding import canonical_json, format_time
from signer.errors import EnvelopeError
from signer.model import Digest
from tests.strategies import T, noncanonical_forms, times

KEY = Ed25519Signer.generate()
OTHER_KEY = Ed25519Signer.generate()

digests = st.sampled_from(sorted(HASH_SIZES)).flatmap(
    lambda alg: st.builds(
        Digest,
        st.just(alg),
        st.binary(min_size=HASH_SIZES[alg], max_size=HASH_SIZES[alg]),
        st.text(min_size=1, max_size=40),
    )
)


def _statements(decision: str, reason: st.SearchStrategy[str]) -> st.SearchStrategy[Statement]:
    return st.builds(
        Statement,
        request_id=st.uuids().map(str),
        key_name=st.text(min_size=1, max_size=20),
        key_id=st.binary(min_size=32, max_size=32).map(bytes.hex),
        digests=st.lists(digests, min_size=1, max_size=4).map(tuple),
        decision=st.just(decision),
        approver=st.text(min_size=1, max_size=20),
        issued_at=times,
        reason=reason,
    )


statements = st.one_of(
    _statements("approve", st.just("")), _statements("deny", st.text(max_size=50))
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


def test_noncanonical_statement_is_rejected() -> None:
    """Only the canonical bytes of a statement are accepted, never an equivalent form."""
    raw = _statement(approver="zoë", key_name="a" * 3).to_bytes()
    assert Statement.from_bytes(raw).approver == "zoë"
    for bad in noncanonical_forms(raw):
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
        {"issued_at": "0001-01-01T00:00:00+01:00"},  # before the first representable UTC
        {"issued_at": "9999-12-31T23:59:59-14:00"},  # after the last
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
