"""In-toto statements over gRPC: the server refuses a payload it cannot show as signed.

A wrong or missing payload type, a payload over 64 KiB, a statement that is not
one (bad JSON, wrong `_type`, no subjects, duplicate keys, nesting), text hidden
from officers (controls, invisible characters, fields never shown), numbers
shown otherwise than sent, and digests that are not of the payload's DSSE PAE:
each is refused with its reason and creates nothing.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from typing import Any

import grpc
import pytest

from signer.formats.intoto import (
    MAX_PAYLOAD_BYTES,
    PAYLOAD_TYPE,
    InTotoStatement,
    build_statement,
    pae_digest,
    predicate_json,
    unchecked,
)
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients
from testbed.process import Running
from tests.harness import audit_events, rpc_error

SHA256 = types_pb2.HASH_ALGORITHM_SHA256
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _digest(
    value: bytes, algorithm: types_pb2.HashAlgorithm.ValueType = SHA256, name: str = "statement"
) -> types_pb2.Digest:
    return types_pb2.Digest(algorithm=algorithm, value=value, artifact_name=name)


def _statement(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        build_statement([("a.bin", "sha256", hashlib.sha256(b"a").digest())], {})
    )
    doc.update(changes)
    return doc


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


GOOD = _encode(_statement())


def _pae(payload: bytes, payload_type: str = PAYLOAD_TYPE) -> list[types_pb2.Digest]:
    return [_digest(pae_digest(payload_type, payload, "sha256"))]


def _oversized() -> bytes:
    base = _encode(_statement(predicate={"pad": ""}))
    payload = _encode(_statement(predicate={"pad": "x" * (MAX_PAYLOAD_BYTES + 1 - len(base))}))
    assert len(payload) == MAX_PAYLOAD_BYTES + 1
    return payload


_A = hashlib.sha256(b"a").hexdigest()
_B = hashlib.sha256(b"b").hexdigest()
# Statements that would show officers something other than what is signed: a second
# subject hidden by terminal controls, invisible characters, fields never shown.
_HIDDEN_STATEMENTS: dict[str, dict[str, Any]] = {
    "escape in predicateType": {
        "predicateType": "https://x/\x1b[2K\x1b[1A",
    },
    "predicateType not a URI": {"predicateType": "release v1"},
    "escape in a digest-set key": {
        "subject": [{"name": "a.bin", "digest": {"sha256": _A, "x\x1b[8m": _B}}],
    },
    "zero-width space in a subject name": {
        "subject": [{"name": "app\u200b.tar", "digest": {"sha256": _A}}],
    },
    "arabic letter mark in a subject name": {
        "subject": [{"name": "app\u061c.tar", "digest": {"sha256": _A}}],
    },
    "BOM in a subject name": {"subject": [{"name": "\ufeffapp.tar", "digest": {"sha256": _A}}]},
    "line separator in a subject name": {
        "subject": [{"name": "a\u2028b", "digest": {"sha256": _A}}],
    },
    "OSC in a predicate value": {"predicate": {"note": "\x1b]8;;https://evil\x07click"}},
    "bidi override in a predicate key": {"predicate": {"a\u202eb": 1}},
    "control deep in the predicate": {"predicate": {"a": [{"b": ["ok", "\x9b2J"]}]}},
    "a field officers are not shown": {"extra": {"subject": "hidden.tar"}},
    "a subject field officers are not shown": {
        "subject": [{"name": "a.bin", "digest": {"sha256": _A}, "annotations": {"x": "y"}}],
    },
}

_DEEP = b"[" * 20_000 + b"]" * 20_000  # under the size limit, over json's recursion limit
_DUPLICATE = (
    b'{"_type":"https://in-toto.io/Statement/v1","_type":"https://in-toto.io/Statement/v1",'
    + GOOD[1:]
)


def _number(raw: bytes) -> bytes:
    """A statement whose predicate holds the JSON number text `raw`, as sent."""
    return _encode(_statement(predicate={"n": "@"})).replace(b'"@"', raw)


# Numbers officers would be shown otherwise than sent (the predicate is re-serialised).
_UNSHOWN_NUMBERS = {
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "float overflowing to infinity": b"1e400",
    "float with no exact double": b"1.00000000000000001",
    "integer past 2^53-1": b"9007199254740993",
    "integer of 5000 digits": b"9" * 5000,
    "zero with a huge exponent": b"0e99999999999999999999999",
    "float with a huge negative exponent": b"1e-99999999999999999999",
}

_Case = tuple[str, bytes, list[types_pb2.Digest], grpc.StatusCode, str]


def _bad_statement(payload: bytes) -> _Case:
    """`payload` sent as an in-toto statement with its PAE digest: refused as BAD_STATEMENT."""
    return (PAYLOAD_TYPE, payload, _pae(payload), INVALID, "BAD_STATEMENT")


# (payload_type, payload, digests) -> code, reason
_CASES: dict[str, _Case] = {
    "wrong payload_type": (
        "application/json",
        GOOD,
        _pae(GOOD, "application/json"),
        INVALID,
        "BAD_PAYLOAD_TYPE",
    ),
    "approval payload_type": (
        "application/vnd.signer.approval.v1+json",
        GOOD,
        _pae(GOOD, "application/vnd.signer.approval.v1+json"),
        INVALID,
        "BAD_PAYLOAD_TYPE",
    ),
    "payload without payload_type": ("", GOOD, _pae(GOOD, ""), INVALID, "BAD_PAYLOAD_TYPE"),
    "payload over 64 KiB": (
        PAYLOAD_TYPE,
        _oversized(),
        _pae(_oversized()),
        EXHAUSTED,
        "PAYLOAD_TOO_LARGE",
    ),
    "payload_type without payload": _bad_statement(b""),
    "not JSON": _bad_statement(b"not json"),
    "not UTF-8": _bad_statement(b'{"\xff":1}'),
    "JSON array": _bad_statement(b"[]"),
    "wrong _type": _bad_statement(_encode(_statement(_type="https://in-toto.io/Statement/v0.1"))),
    "no subjects": _bad_statement(_encode(_statement(subject=[]))),
    "subject without a sha2 digest": _bad_statement(
        _encode(_statement(subject=[{"name": "a", "digest": {"md5": "00" * 16}}]))
    ),
    "subject digest in upper case": _bad_statement(
        _encode(_statement(subject=[{"name": "a", "digest": {"sha256": "AB" * 32}}]))
    ),
    "duplicate JSON key": _bad_statement(_DUPLICATE),
    **{
        f"hidden text: {name}": _bad_statement(_encode(_statement(**changes)))
        for name, changes in _HIDDEN_STATEMENTS.items()
    },
    "nested too deeply": _bad_statement(_DEEP),
    **{f"number: {name}": _bad_statement(_number(raw)) for name, raw in _UNSHOWN_NUMBERS.items()},
    "two digests": (
        PAYLOAD_TYPE,
        GOOD,
        [*_pae(GOOD), _digest(hashlib.sha256(b"x").digest(), name="x.bin")],
        INVALID,
        "PAYLOAD_DIGEST_MISMATCH",
    ),
    "digest of the payload, not the PAE": (
        PAYLOAD_TYPE,
        GOOD,
        [_digest(hashlib.sha256(GOOD).digest())],
        INVALID,
        "PAYLOAD_DIGEST_MISMATCH",
    ),
    "digest of another statement's PAE": (
        PAYLOAD_TYPE,
        GOOD,
        _pae(_encode(_statement(predicate={"other": True}))),
        INVALID,
        "PAYLOAD_DIGEST_MISMATCH",
    ),
    "sha384 digest of the payload, not the PAE": (
        PAYLOAD_TYPE,
        GOOD,
        [_digest(hashlib.sha384(GOOD).digest(), types_pb2.HASH_ALGORITHM_SHA384)],
        INVALID,
        "PAYLOAD_DIGEST_MISMATCH",
    ),
}


def _created(r: Running) -> int:
    return sum(e["event"] == "request.created" for e in audit_events(r.env))


@pytest.mark.parametrize("case", list(_CASES))
def test_bad_payload_refused(shared: Running, clients: Clients, case: str) -> None:
    """Each malformed or unshowable statement is refused with its reason; nothing is created."""
    payload_type, payload, digests, code, reason = _CASES[case]
    before = _created(shared)
    err = rpc_error(
        lambda: clients.create(
            digests=digests, payload_type=payload_type, payload=payload, who="ci3"
        )
    )
    assert (err.code, err.reason) == (code, reason), err
    assert _created(shared) == before


@pytest.mark.parametrize("raw", [b"0.1", b"1.50", b"1e5", b"-0.0", b"9007199254740991", b"-7"])
def test_numbers_shown_as_sent_are_accepted(raw: bytes) -> None:
    """Ordinary numbers parse, and officers are shown the same value (not the same text:
    1.50 is shown 1.5)."""
    statement = InTotoStatement.parse(_number(raw))
    shown = json.loads(predicate_json(statement.predicate))["n"]
    assert decimal.Decimal(repr(shown)) == decimal.Decimal(raw.decode())


def test_payload_at_the_limit_is_accepted(shared: Running, clients: Clients) -> None:
    """The limit is inclusive: a statement of exactly 64 KiB makes a request."""
    base = _encode(_statement(predicate={"pad": ""}))
    payload = _encode(_statement(predicate={"pad": "x" * (MAX_PAYLOAD_BYTES - len(base))}))
    assert len(payload) == MAX_PAYLOAD_BYTES
    before = _created(shared)
    r = clients.create(digests=_pae(payload), payload_type=PAYLOAD_TYPE, payload=payload)
    try:
        assert r.payload == payload and r.state == types_pb2.REQUEST_STATE_PENDING
        assert _created(shared) == before + 1
    finally:
        clients.signing().CancelSigningRequest(
            signing_pb2.CancelSigningRequestRequest(id=r.id, reason="test"), timeout=RPC_TIMEOUT
        )


def test_a_subject_covers_a_file_only_if_each_of_its_hashes_is_the_files() -> None:
    """What `signer verify --bundle` and `approver --file` ask of a statement: the subject
    that is a file has each of its sha256, sha384 and sha512 digests equal the file's; one
    right on sha256 and wrong on sha512 is another file. Digests of other kinds are not
    checked by a file's hashes and are reported as such."""
    data = b"the release"
    own = {alg: hashlib.new(alg, data).digest() for alg in ("sha256", "sha384", "sha512")}

    def statement(digest: dict[str, str]) -> InTotoStatement:
        subject = {"name": "app.tar", "digest": digest}
        return InTotoStatement.parse(_encode(_statement(subject=[subject])))

    right = {"sha256": own["sha256"].hex(), "sha512": own["sha512"].hex()}
    assert statement(right).covers(None, own) is not None
    assert statement(right).covers("other.tar", own) is None
    wrong = {**right, "sha512": hashlib.sha512(b"another file").hexdigest()}
    assert statement(wrong).covers(None, own) is None
    assert statement(right).covers(None, {"sha256": own["sha256"]}) is None  # sha512 unchecked
    commit = statement({"sha256": own["sha256"].hex(), "gitCommit": "ab" * 20})
    subject = commit.covers(None, own)
    assert subject is not None and unchecked(subject) == ["gitCommit"]
