"""`--format dsse`: an in-toto Statement over the artifacts, signed as a DSSE envelope.

One request is made once for the module as a pipeline makes it (`signer sign
--format dsse --no-wait` as ci on two files, approvals by alice and bob, `signer
status ID --format dsse --out E`). The envelope's payload is a Statement v1 with
both files as sha256 subjects; its bundle verifies for each file with `signer
verify --bundle`; securesystemslib, knowing only the release public key, verifies
the envelope; officers see the subjects and the payload check. Bad payloads:
tests/test_dsse_payloads.py.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from securesystemslib import exceptions as sslib_exceptions
from securesystemslib.dsse import Envelope as SslibEnvelope
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # no __all__

from signer.errors import VerificationError
from signer.formats.bundle import Bundle, Trust, verify_bundle
from signer.formats.intoto import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    pae_digest,
)
from signer.v1 import types_pb2
from testbed.commands import APPROVER, SIGNER, run
from testbed.process import Running
from tests.bundle_env import verify_cli

SHA256 = types_pb2.HASH_ALGORITHM_SHA256


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
        p = verify_cli(dsse.bundle_path, f, dsse.trust_path, "--json")
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
    p = verify_cli(dsse.bundle_path, stranger, dsse.trust_path)
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
