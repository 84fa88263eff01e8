"""Evidence bundles: a real bundle verifies offline; its signature, digests and artifact bind.

The real bundle (tests/bundle_env.py) verifies against `trust/release.toml`
through `signer verify --bundle` and in process; a flipped or swapped
signature, digests from another request or renamed, and another or modified
artifact are refused (exit 1, "bundle INVALID", or VerificationError naming the
check).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from signer.dsse import sign_statement
from signer.formats.bundle import MEDIA_TYPE, Bundle, Trust, verify_bundle
from signer.model import Digest
from tests.bundle_env import (
    OFFICERS,
    Signed,
    approval_of,
    approver_of,
    cli_refused,
    cli_rejects,
    edited,
    flip_bit,
    rejects,
    statement_for,
    trust_file,
    verify_cli,
)

# -- the real bundle ----------------------------------------------------------------------


def test_real_bundle_verifies_with_cli(signed: Signed) -> None:
    """The bundle from `signer status --format bundle` verifies against the pinned trust."""
    ok = verify_cli(signed.bundle_path, signed.artifact, signed.trust_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("bundle OK: app.tar signed by key release")
    assert "alice, bob (2 of the required 2)" in ok.stdout

    as_json = verify_cli(signed.bundle_path, signed.artifact, signed.trust_path, "--json")
    assert as_json.returncode == 0, as_json.stderr
    out = json.loads(as_json.stdout)
    audit = signed.doc["audit"]
    assert out == {
        "format": "bundle",
        "request_id": signed.request.id,
        "key_name": "release",
        "artifact": "app.tar",
        "approvers": ["alice", "bob"],
        "log_index": audit["index"],
        "tree_size": audit["tree_size"],
    }
    assert 0 <= out["log_index"] < out["tree_size"]


def test_real_bundle_contents(signed: Signed) -> None:
    """The bundle holds the request's key, digest, signature, approvals and audit proof."""
    doc, request = signed.doc, signed.request
    assert doc["mediaType"] == MEDIA_TYPE
    assert doc["request_id"] == request.id
    assert doc["key"]["name"] == "release"
    assert doc["key"]["key_id"] == request.key_id
    assert doc["key"]["algorithm"] == "ecdsa-p256"
    assert doc["key"]["public_key_pem"] == (signed.r.env.root / "trust" / "release.pem").read_text()
    assert doc["digests"] == [
        {
            "algorithm": "sha256",
            "digest": hashlib.sha256(signed.artifact.read_bytes()).hexdigest(),
            "artifact": "app.tar",
        }
    ]
    assert [base64.b64decode(x) for x in doc["signatures"]] == list(request.signatures)
    assert doc["threshold"] == 2
    assert sorted(approver_of(a) for a in doc["approvals"]) == ["alice", "bob"]
    assert "dsse" not in doc
    verified = verify_bundle(Bundle.from_json(doc), signed.trust, signed.artifact)
    assert verified.approvers == ("alice", "bob")
    assert verified.statement is None
    # A round trip through the dataclass changes nothing.
    assert Bundle.from_json(doc).to_json() == doc


def test_trust_file_baseline_verifies(signed: Signed) -> None:
    """The trust files the tamper cases edit verify the real bundle when left unedited."""
    trust = Trust.load(trust_file(signed, "baseline.toml"))
    assert trust.threshold == 2 and sorted(trust.approvers) == list(OFFICERS)
    result = verify_bundle(Bundle.from_json(signed.doc), trust, signed.artifact)
    assert result.approvers == ("alice", "bob")


def test_other_bundle_verifies_for_its_own_artifact(signed: Signed) -> None:
    """The second bundle (the splice source) is itself valid, for the other artifact."""
    result = verify_bundle(Bundle.from_json(signed.other_doc), signed.trust, signed.other)
    assert (result.request_id, result.artifact) == (signed.other_request.id, "other.tar")


# -- the signature --------------------------------------------------------------------------


def test_signature_changed_cli(signed: Signed) -> None:
    """One bit of the signature flipped: `signer verify` exits 1, it does not verify."""

    def edit(d: dict[str, Any]) -> None:
        d["signatures"][0] = flip_bit(d["signatures"][0])

    cli_rejects(
        signed,
        "flipped-signature.json",
        edited(signed, edit),
        "the signature over app.tar does not verify with the pinned key",
    )


def test_signature_from_other_request(signed: Signed) -> None:
    """Another real signature (over another digest) in place of this one does not verify."""

    def edit(d: dict[str, Any]) -> None:
        d["signatures"] = signed.other_doc["signatures"]

    rejects(signed, edited(signed, edit), "signature over app.tar does not verify")


def test_no_signature(signed: Signed) -> None:
    """A bundle with no signature is refused: one signature per digest is required."""

    def edit(d: dict[str, Any]) -> None:
        d["signatures"] = []

    rejects(signed, edited(signed, edit), "one signature per digest")


# -- the digests ---------------------------------------------------------------------------


def test_approval_for_another_digest(signed: Signed) -> None:
    """Alice's genuine signature over this request but another artifact's digest."""
    other = Digest("sha256", hashlib.sha256(signed.other.read_bytes()).digest(), "app.tar")
    wrong = sign_statement(
        statement_for(signed.request, "alice", digests=(other,)), signed.r.env.approval_key("alice")
    ).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [wrong, approval_of(d, "bob")]

    rejects(
        signed, edited(signed, edit), r"approval 0 \(alice\) is not for this signature: digests"
    )


def test_bundle_digests_changed_to_other_artifact(signed: Signed) -> None:
    """The digest list now names the other artifact: this signature is not over it."""

    def edit(d: dict[str, Any]) -> None:
        d["digests"] = signed.other_doc["digests"]

    doc = edited(signed, edit)
    rejects(signed, doc, "the signature over other.tar does not verify", artifact=signed.other)
    rejects(signed, doc, "the signature over other.tar does not verify")


def test_digests_and_signatures_spliced_from_other_request(signed: Signed) -> None:
    """The other request's real digest and signature, with this request's approvals."""

    def edit(d: dict[str, Any]) -> None:
        d["digests"] = signed.other_doc["digests"]
        d["signatures"] = signed.other_doc["signatures"]

    rejects(
        signed,
        edited(signed, edit),
        r"approval 0 \(\w+\) is not for this signature: digests differ",
        artifact=signed.other,
    )


def test_artifact_renamed_in_digests(signed: Signed) -> None:
    """Same digest value, another artifact name: the approvals bound the name too."""

    def edit(d: dict[str, Any]) -> None:
        d["digests"][0]["artifact"] = "evil.tar"

    rejects(signed, edited(signed, edit), "digests differ")


# -- the artifact -----------------------------------------------------------------------------


def test_different_file_cli(signed: Signed) -> None:
    """The bundle checked against another file: exit 1, that digest is not signed."""
    cli_refused(
        verify_cli(signed.bundle_path, signed.other, signed.trust_path),
        "bundle INVALID",
        "other.tar's digest is not one the bundle signs",
    )


def test_artifact_modified(signed: Signed) -> None:
    """One byte of the artifact changed: its digest is not one the bundle signs."""
    changed = signed.dir / "app-changed.tar"
    data = bytearray(signed.artifact.read_bytes())
    data[100] ^= 0xFF
    changed.write_bytes(bytes(data))
    rejects(
        signed, signed.doc, "app-changed.tar's digest is not one the bundle signs", artifact=changed
    )
