"""Two real signed requests and their evidence bundles, and the helpers that tamper with them.

`signed` (a session fixture, re-exported by tests/conftest.py) makes one bundle
the way a pipeline makes it (`signer sign --no-wait --format bundle` as ci,
approvals by alice and bob, `signer status ID --format bundle --out B`), plus a
second one for another artifact to splice pieces from. A test edits a copy
(`edited`) and checks it through the CLI (`verify_cli`, exit 1 "bundle
INVALID": `cli_refused`, `cli_rejects`) or in process (`rejects`: `verify_bundle` raising
VerificationError naming the check); `trust_file` writes a trust file like
trust/release.toml with settings changed.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from signer.dsse import Statement
from signer.errors import VerificationError
from signer.formats.bundle import Bundle, Trust, verify_bundle
from signer.model import Digest
from signer.v1 import types_pb2
from testbed.clients import sha256_digest
from testbed.commands import SIGNER, run
from testbed.process import Running
from tests.harness import refused

__all__ = [
    "OFFICERS",
    "Signed",
    "approval_of",
    "approver_of",
    "cli_refused",
    "cli_rejects",
    "edited",
    "flip_bit",
    "rejects",
    "signed",
    "statement_for",
    "trust_file",
    "verify_cli",
    "write_doc",
]

OFFICERS = ("alice", "bob", "carol")


@dataclasses.dataclass(frozen=True)
class Signed:
    """The session's two real signed requests and their bundles."""

    r: Running
    dir: Path
    artifact: Path
    bundle_path: Path
    doc: dict[str, Any]
    request: types_pb2.SigningRequest
    other: Path  # a second artifact, signed by a second request
    other_doc: dict[str, Any]
    other_request: types_pb2.SigningRequest
    trust_path: Path

    @property
    def trust(self) -> Trust:
        return Trust.load(self.trust_path)


def _signer(r: Running, *args: str, who: str = "ci") -> subprocess.CompletedProcess[str]:
    return run([*SIGNER, *args, "--profile", str(r.env.profile_path(who))])


@pytest.fixture(scope="session")
def signed(shared: Running, tmp_path_factory: pytest.TempPathFactory) -> Signed:
    root = tmp_path_factory.mktemp("bundle")
    c = shared.clients
    artifact = root / "app.tar"
    artifact.write_bytes(os.urandom(4096))
    request_id = _signer(
        shared,
        "sign",
        "--key-name",
        "release",
        "--file",
        str(artifact),
        "--no-wait",
        "--format",
        "bundle",
    ).stdout.strip()
    request = c.get(request_id)
    c.approve("alice", request)
    assert c.approve("bob", request).state == types_pb2.REQUEST_STATE_SIGNED
    bundle_path = root / "app.tar.bundle.json"
    _signer(shared, "status", request_id, "--format", "bundle", "--out", str(bundle_path))

    other = root / "other.tar"
    other.write_bytes(os.urandom(4096))
    other_request = c.create(digests=[sha256_digest(other.read_bytes(), other.name)])
    c.approve("alice", other_request)
    assert c.approve("bob", other_request).state == types_pb2.REQUEST_STATE_SIGNED
    other_path = root / "other.tar.bundle.json"
    _signer(shared, "status", other_request.id, "--format", "bundle", "--out", str(other_path))
    return Signed(
        r=shared,
        dir=root,
        artifact=artifact,
        bundle_path=bundle_path,
        doc=json.loads(bundle_path.read_text()),
        request=c.get(request_id),
        other=other,
        other_doc=json.loads(other_path.read_text()),
        other_request=c.get(other_request.id),
        trust_path=shared.env.root / "trust" / "release.toml",
    )


def verify_cli(
    bundle: Path, file: Path, trust: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["verify", "--bundle", str(bundle), "--file", str(file), "--trust", str(trust)]
    return run([*SIGNER, *args, *extra], check=False)


def cli_refused(p: subprocess.CompletedProcess[str], *phrases: str, code: int = 1) -> str:
    """The command exited `code` with one clear message holding every phrase, no traceback,
    and printed nothing on stdout."""
    message = refused(p, *phrases, code=code)
    assert p.stdout == "", p.stdout
    return message


def cli_rejects(s: Signed, name: str, doc: Any, *phrases: str) -> None:
    """`signer verify --bundle` of `doc`, written as NAME, exits 1: "bundle INVALID" and
    every phrase."""
    path = write_doc(s, name, doc)
    cli_refused(verify_cli(path, s.artifact, s.trust_path), "bundle INVALID", *phrases)


def write_doc(s: Signed, name: str, doc: Any) -> Path:
    path = s.dir / name
    path.write_text(json.dumps(doc, indent=2) if not isinstance(doc, str) else doc)
    return path


def edited(s: Signed, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(s.doc)
    edit(doc)
    return doc


def rejects(
    s: Signed,
    doc: dict[str, Any],
    match: str,
    *,
    trust: Trust | None = None,
    artifact: Path | None = None,
) -> None:
    """verify_bundle refuses `doc` (for the artifact, under the trust) matching `match`."""
    with pytest.raises(VerificationError, match=match):
        verify_bundle(Bundle.from_json(doc), trust or s.trust, artifact or s.artifact)


def approver_of(envelope: str) -> str:
    payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    return str(payload["approver"])


def approval_of(doc: dict[str, Any], officer: str) -> str:
    found = [a for a in doc["approvals"] if approver_of(a) == officer]
    assert len(found) == 1, [approver_of(a) for a in doc["approvals"]]
    return str(found[0])


def flip_bit(b64: str, at: int = -1) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def statement_for(request: types_pb2.SigningRequest, officer: str, **overrides: Any) -> Statement:
    fields: dict[str, Any] = {
        "request_id": request.id,
        "key_name": request.key_name,
        "key_id": request.key_id,
        "digests": tuple(
            Digest("sha256", d.value, d.artifact_name)
            for d in request.digests
            if d.algorithm == types_pb2.HASH_ALGORITHM_SHA256
        ),
        "decision": "approve",
        "approver": officer,
        "issued_at": dt.datetime.now(dt.UTC),
    }
    fields.update(overrides)
    return Statement(**fields)


def trust_file(s: Signed, name: str, **overrides: Any) -> Path:
    """A trust file like trust/release.toml (absolute paths); a None override drops a setting."""
    root = s.r.env.root
    doc: dict[str, Any] = {
        "public_key": str(root / "trust" / "release.pem"),
        "threshold": 2,
        "audit_verifier": str(s.r.env.profile("ci").audit_verifier),
        "approvers": {o: str(root / "approvers" / f"{o}.key.pub") for o in OFFICERS},
    }
    doc.update(overrides)
    path = s.dir / name
    path.write_text(tomli_w.dumps({k: v for k, v in doc.items() if v is not None}))
    return path
