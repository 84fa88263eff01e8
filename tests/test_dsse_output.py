"""`--format dsse`: an in-toto Statement over the artifacts, signed as a DSSE envelope.

One request is made once for the module as a pipeline makes it (`signer sign
--format dsse --no-wait` as ci on two files, approvals by alice and bob, `signer
status ID --format dsse --out E`). The envelope's payload is a Statement v1 with
both files as sha256 subjects; its bundle verifies for each file with `signer
verify --bundle`; securesystemslib, knowing only the release public key, verifies
the envelope; officers see the subjects and the payload check. Over gRPC the server
refuses bad payloads (type, size, statement, digest) and creates nothing.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import decimal
import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # no __all__

from signer.errors import VerificationError
from signer.formats.bundle import Bundle, Trust, verify_bundle
from signer.formats.intoto import (
    MAX_PAYLOAD_BYTES,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    InTotoStatement,
    build_statement,
    pae_digest,
    predicate_json,
)
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients
from testbed.commands import APPROVER, SIGNER, run
from testbed.process import Running
from tests.harness import audit_events, rpc_error

SHA256 = types_pb2.HASH_ALGORITHM_SHA256
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclasses.dataclass(frozen=True)
class Dsse:
    r: Running
    dir: Path
    files: tuple[Path, Path]
    request: types_pb2.SigningRequest
    envelope_path: Path
    envelope: dict[str, Any]
    bundle_path: Path
    trust_path: Path


@pytest.fixture(scope="module")
def dsse(shared: Running, tmp_path_factory: pytest.TempPathFactory) -> Dsse:
    root = tmp_path_factory.mktemp("dsse")
    files = (root / "app-linux.tar", root / "app-darwin.tar")
    for f in files:
        f.write_bytes(os.urandom(2048))
    ci = ["--profile", str(shared.env.profile_path("ci"))]
    args = ["sign", "--key-name", "release", "--file", str(files[0]), "--file", str(files[1])]
    request_id = run([*SIGNER, *args, "--no-wait", "--format", "dsse", *ci]).stdout.strip()
    c = shared.clients
    request = c.get(request_id)
    c.approve("alice", request)
    assert c.approve("bob", request).state == types_pb2.REQUEST_STATE_SIGNED
    out = root / "release.intoto.json"
    run([*SIGNER, "status", request_id, "--format", "dsse", "--out", str(out), *ci])
    return Dsse(
        r=shared,
        dir=root,
        files=files,
        request=c.get(request_id),
        envelope_path=out,
        envelope=json.loads(out.read_text()),
        bundle_path=out.with_name(out.name + ".bundle.json"),
        trust_path=shared.env.root / "trust" / "release.toml",
    )


def _verify_cli(
    bundle: Path, file: Path, trust: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["verify", "--bundle", str(bundle), "--file", str(file), "--trust", str(trust)]
    return run([*SIGNER, *args, *extra], check=False)


def _payload(envelope: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return doc


# -- the envelope and its bundle ----------------------------------------------------------


def test_envelope_is_intoto_statement_over_both_files(dsse: Dsse) -> None:
    """The envelope is a Statement v1 with both files as sha256 subjects; the one digest
    signed is that of its DSSE PAE."""
    env, request = dsse.envelope, dsse.request
    assert set(env) == {"payload", "payloadType", "signatures"}
    assert env["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    assert env["signatures"] == [
        {"keyid": request.key_id, "sig": base64.b64encode(request.signatures[0]).decode()}
    ]
    statement = _payload(env)
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"] == [
        {"name": f.name, "digest": {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()}}
        for f in dsse.files
    ]
    # The request carried the statement; the one digest signed is that of its DSSE PAE.
    payload = base64.b64decode(env["payload"])
    assert request.payload_type == PAYLOAD_TYPE and request.payload == payload
    [digest] = request.digests
    assert digest.algorithm == SHA256
    assert digest.value == pae_digest(PAYLOAD_TYPE, payload, "sha256")
    assert digest.artifact_name == "in-toto statement: app-linux.tar and 1 more"


def test_bundle_verifies_for_each_file(dsse: Dsse) -> None:
    """The bundle holds the envelope and `signer verify` accepts it for each file."""
    for f in dsse.files:
        p = _verify_cli(dsse.bundle_path, f, dsse.trust_path, "--json")
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["artifact"] == f.name
        assert out["request_id"] == dsse.request.id
        assert out["approvers"] == ["alice", "bob"]
    bundle = json.loads(dsse.bundle_path.read_text())
    assert bundle["dsse"] == dsse.envelope


def test_bundle_refuses_file_not_a_subject(dsse: Dsse) -> None:
    """A file that is not a subject of the statement fails `signer verify` (exit 1)."""
    stranger = dsse.dir / "app-windows.tar"
    stranger.write_bytes(os.urandom(2048))
    p = _verify_cli(dsse.bundle_path, stranger, dsse.trust_path)
    assert p.returncode == 1, p.stdout + p.stderr
    message = " ".join(p.stderr.split())
    assert "bundle INVALID: app-windows.tar is not a subject of the signed statement" in message


def test_bundle_statement_in_process(dsse: Dsse) -> None:
    """verify_bundle accepts the second file and returns the statement's subjects."""
    trust = Trust.load(dsse.trust_path)
    bundle = Bundle.read(dsse.bundle_path)
    result = verify_bundle(bundle, trust, dsse.files[1])
    assert result.artifact == "app-darwin.tar"
    assert result.statement is not None
    assert [s.name for s in result.statement.subjects] == [f.name for f in dsse.files]


def _bundle_doc(dsse: Dsse, edit: Callable[[dict[str, Any]], None]) -> Bundle:
    doc = json.loads(dsse.bundle_path.read_text())
    edit(doc)
    return Bundle.from_json(doc)


@pytest.mark.parametrize(
    ("what", "match"),
    [
        ("payload", "the signed digest is not that of the DSSE payload"),
        ("payload type", "the DSSE payload type is not application/vnd.in-toto"),
        ("second signature", "the DSSE signature is not the bundle's one signature"),
        ("dsse removed", "app-linux.tar's digest is not one the bundle signs"),
        ("no payload", "malformed DSSE envelope in the bundle"),
    ],
)
def test_bundle_dsse_tampered(dsse: Dsse, what: str, match: str) -> None:
    """An edited payload or type, a second signature, or no envelope is refused."""

    def edit(doc: dict[str, Any]) -> None:
        env = doc["dsse"]
        if what == "payload":
            st = _payload(env)
            st["subject"].append({"name": "evil.tar", "digest": {"sha256": "ab" * 32}})
            env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
        elif what == "payload type":
            env["payloadType"] = "application/json"
        elif what == "second signature":
            env["signatures"].append(copy.deepcopy(env["signatures"][0]))
        elif what == "dsse removed":
            del doc["dsse"]
        else:
            del env["payload"]

    with pytest.raises(VerificationError, match=match):
        verify_bundle(_bundle_doc(dsse, edit), Trust.load(dsse.trust_path), dsse.files[0])


# -- securesystemslib, an independent DSSE implementation ------------------------------------


def _sslib_key(dsse: Dsse, keyid: str | None) -> SSlibKey:
    pem = (dsse.r.env.root / "trust" / "release.pem").read_bytes()
    public_key = serialization.load_pem_public_key(pem)
    return SSlibKey.from_crypto(public_key, keyid=keyid, scheme="ecdsa-sha2-nistp256")


def test_securesystemslib_verifies_envelope(dsse: Dsse) -> None:
    """securesystemslib, knowing only the release public key, verifies the envelope."""
    key = _sslib_key(dsse, dsse.request.key_id)
    assert key.keyid == dsse.request.key_id
    envelope = SslibEnvelope.from_dict(copy.deepcopy(dsse.envelope))
    assert envelope.payload_type == PAYLOAD_TYPE
    accepted = envelope.verify([key], 1)
    assert accepted == {dsse.request.key_id: key}
    assert json.loads(envelope.payload)["subject"][0]["name"] == "app-linux.tar"


def test_securesystemslib_refuses_tampered_payload(dsse: Dsse) -> None:
    """securesystemslib refuses the envelope once a subject digest is changed."""
    key = _sslib_key(dsse, dsse.request.key_id)
    doc = copy.deepcopy(dsse.envelope)
    st = _payload(doc)
    st["subject"][0]["digest"]["sha256"] = "00" * 32
    doc["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    with pytest.raises(sslib_exceptions.VerificationError):
        SslibEnvelope.from_dict(doc).verify([key], 1)


def test_securesystemslib_refuses_tampered_signature_and_other_key(dsse: Dsse) -> None:
    """securesystemslib refuses a changed signature, and the key under another keyid."""
    key = _sslib_key(dsse, dsse.request.key_id)
    doc = copy.deepcopy(dsse.envelope)
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(sslib_exceptions.VerificationError):
        SslibEnvelope.from_dict(doc).verify([key], 1)
    # The same key under securesystemslib's own default keyid matches no signature.
    default = _sslib_key(dsse, None)
    assert default.keyid != dsse.request.key_id
    with pytest.raises(sslib_exceptions.VerificationError):
        SslibEnvelope.from_dict(copy.deepcopy(dsse.envelope)).verify([default], 1)


# -- what the officers see ------------------------------------------------------------------


def test_approver_show_json_has_statement(dsse: Dsse) -> None:
    """`approver show --json` gives the payload, that it matches, and the subjects."""
    profile = str(dsse.r.env.profile_path("alice"))
    shown = json.loads(
        run([*APPROVER, "show", dsse.request.id, "--json", "--profile", profile]).stdout
    )
    assert shown["payload_type"] == PAYLOAD_TYPE
    assert base64.b64decode(shown["payload"]) == dsse.request.payload
    assert shown["payload_matches_digest"] is True
    assert shown["statement"] == {
        "predicate_type": PREDICATE_TYPE,
        "predicate": {},
        "subjects": [
            {"name": f.name, "digest": {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()}}
            for f in dsse.files
        ],
    }


# -- bad payloads over gRPC ---------------------------------------------------------------------


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

# (payload_type, payload, digests) -> code, reason
_CASES: dict[str, tuple[str, bytes, list[types_pb2.Digest], grpc.StatusCode, str]] = {
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
    "payload_type without payload": (PAYLOAD_TYPE, b"", _pae(b""), INVALID, "BAD_STATEMENT"),
    "not JSON": (PAYLOAD_TYPE, b"not json", _pae(b"not json"), INVALID, "BAD_STATEMENT"),
    "not UTF-8": (PAYLOAD_TYPE, b'{"\xff":1}', _pae(b'{"\xff":1}'), INVALID, "BAD_STATEMENT"),
    "JSON array": (PAYLOAD_TYPE, b"[]", _pae(b"[]"), INVALID, "BAD_STATEMENT"),
    "wrong _type": (
        PAYLOAD_TYPE,
        _encode(_statement(_type="https://in-toto.io/Statement/v0.1")),
        _pae(_encode(_statement(_type="https://in-toto.io/Statement/v0.1"))),
        INVALID,
        "BAD_STATEMENT",
    ),
    "no subjects": (
        PAYLOAD_TYPE,
        _encode(_statement(subject=[])),
        _pae(_encode(_statement(subject=[]))),
        INVALID,
        "BAD_STATEMENT",
    ),
    "subject without a sha2 digest": (
        PAYLOAD_TYPE,
        _encode(_statement(subject=[{"name": "a", "digest": {"md5": "00" * 16}}])),
        _pae(_encode(_statement(subject=[{"name": "a", "digest": {"md5": "00" * 16}}]))),
        INVALID,
        "BAD_STATEMENT",
    ),
    "subject digest in upper case": (
        PAYLOAD_TYPE,
        _encode(_statement(subject=[{"name": "a", "digest": {"sha256": "AB" * 32}}])),
        _pae(_encode(_statement(subject=[{"name": "a", "digest": {"sha256": "AB" * 32}}]))),
        INVALID,
        "BAD_STATEMENT",
    ),
    "duplicate JSON key": (PAYLOAD_TYPE, _DUPLICATE, _pae(_DUPLICATE), INVALID, "BAD_STATEMENT"),
    **{
        f"hidden text: {name}": (PAYLOAD_TYPE, p, _pae(p), INVALID, "BAD_STATEMENT")
        for name, p in (
            (name, _encode(_statement(**changes))) for name, changes in _HIDDEN_STATEMENTS.items()
        )
    },
    "nested too deeply": (PAYLOAD_TYPE, _DEEP, _pae(_DEEP), INVALID, "BAD_STATEMENT"),
    **{
        f"number: {name}": (PAYLOAD_TYPE, p, _pae(p), INVALID, "BAD_STATEMENT")
        for name, p in ((name, _number(raw)) for name, raw in _UNSHOWN_NUMBERS.items())
    },
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
