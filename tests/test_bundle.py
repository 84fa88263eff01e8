"""Evidence bundles: one real signed bundle verifies offline; every tampered copy is refused.

One bundle is made once for the module the way a pipeline makes it (`signer sign
--no-wait --format bundle` as ci, approvals by alice and bob, `signer status ID
--format bundle --out B`), plus a second one for another artifact to splice pieces
from. `signer verify --bundle` accepts the real one against `trust/release.toml`;
each tampered copy (signature, quorum, approvals, digests, checkpoint, inclusion
proof, audit entry, artifact, pinned key, pinned threshold, format) fails: through
the CLI (exit 1, "bundle INVALID") or in-process (`verify_bundle` raising
VerificationError naming the check). Bad trust files are configuration errors
(exit 2).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.audit.note import Verifier, sign_note
from signer.dsse import Statement, sign_statement
from signer.errors import ConfigError, VerificationError
from signer.formats.bundle import MEDIA_TYPE, Bundle, Trust, verify_bundle
from signer.model import Digest
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, sha256_digest
from testbed.commands import SIGNER, run
from testbed.process import Running

OFFICERS = ("alice", "bob", "carol")


@dataclasses.dataclass(frozen=True)
class Signed:
    """The module's two real signed requests and their bundles."""

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


@pytest.fixture(scope="module")
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


# -- helpers ------------------------------------------------------------------------------


def _verify_cli(
    bundle: Path, file: Path, trust: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["verify", "--bundle", str(bundle), "--file", str(file), "--trust", str(trust)]
    return run([*SIGNER, *args, *extra], check=False)


def _refused(p: subprocess.CompletedProcess[str], *phrases: str, code: int = 1) -> str:
    """The command exited `code` with one clear message holding every phrase, no traceback."""
    message = " ".join(p.stderr.split())
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stdout == "", p.stdout
    for phrase in phrases:
        assert phrase in message, message
    return message


def _write(s: Signed, name: str, doc: Any) -> Path:
    path = s.dir / name
    path.write_text(json.dumps(doc, indent=2) if not isinstance(doc, str) else doc)
    return path


def _edited(s: Signed, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(s.doc)
    edit(doc)
    return doc


def _rejects(
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


def _approver_of(envelope: str) -> str:
    payload = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
    return str(payload["approver"])


def _approval(doc: dict[str, Any], officer: str) -> str:
    found = [a for a in doc["approvals"] if _approver_of(a) == officer]
    assert len(found) == 1, [_approver_of(a) for a in doc["approvals"]]
    return str(found[0])


def _flip(b64: str, at: int = -1) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[at] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _statement(request: types_pb2.SigningRequest, officer: str, **overrides: Any) -> Statement:
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


def _trust_file(s: Signed, name: str, **overrides: Any) -> Path:
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


# -- the real bundle ----------------------------------------------------------------------


def test_real_bundle_verifies_with_cli(signed: Signed) -> None:
    """The bundle from `signer status --format bundle` verifies against the pinned trust."""
    ok = _verify_cli(signed.bundle_path, signed.artifact, signed.trust_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("bundle OK: app.tar signed by key release")
    assert "alice, bob (2 of the required 2)" in ok.stdout

    as_json = _verify_cli(signed.bundle_path, signed.artifact, signed.trust_path, "--json")
    assert as_json.returncode == 0, as_json.stderr
    out = json.loads(as_json.stdout)
    audit = signed.doc["audit"]
    assert out == {
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
    assert sorted(_approver_of(a) for a in doc["approvals"]) == ["alice", "bob"]
    assert "dsse" not in doc
    verified = verify_bundle(Bundle.from_json(doc), signed.trust, signed.artifact)
    assert verified.approvers == ("alice", "bob")
    assert verified.statement is None
    # A round trip through the dataclass changes nothing.
    assert Bundle.from_json(doc).to_json() == doc


def test_trust_file_baseline_verifies(signed: Signed) -> None:
    """The trust files the tamper cases edit verify the real bundle when left unedited."""
    trust = Trust.load(_trust_file(signed, "baseline.toml"))
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
        d["signatures"][0] = _flip(d["signatures"][0])

    path = _write(signed, "flipped-signature.json", _edited(signed, edit))
    _refused(
        _verify_cli(path, signed.artifact, signed.trust_path),
        "bundle INVALID",
        "the signature over app.tar does not verify with the pinned key",
    )


def test_signature_from_other_request(signed: Signed) -> None:
    """Another real signature (over another digest) in place of this one does not verify."""

    def edit(d: dict[str, Any]) -> None:
        d["signatures"] = signed.other_doc["signatures"]

    _rejects(signed, _edited(signed, edit), "signature over app.tar does not verify")


def test_no_signature(signed: Signed) -> None:
    """A bundle with no signature is refused: one signature per digest is required."""

    def edit(d: dict[str, Any]) -> None:
        d["signatures"] = []

    _rejects(signed, _edited(signed, edit), "one signature per digest")


# -- the quorum -----------------------------------------------------------------------------


def test_one_approval_removed_cli(signed: Signed) -> None:
    """With bob's approval gone only one officer approved: below the pinned threshold 2."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice")]

    path = _write(signed, "one-approval.json", _edited(signed, edit))
    _refused(
        _verify_cli(path, signed.artifact, signed.trust_path),
        "bundle INVALID",
        "1 distinct officers approved; the pinned threshold is 2",
    )


def test_no_approvals(signed: Signed) -> None:
    """A bundle with no approvals is refused: 0 distinct officers approved."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = []

    _rejects(signed, _edited(signed, edit), "0 distinct officers approved")


def test_bundle_threshold_field_is_not_trusted(signed: Signed) -> None:
    """Lowering the bundle's own threshold to 1 does not lower the pinned one."""

    def edit(d: dict[str, Any]) -> None:
        d["threshold"] = 1
        d["approvals"] = [_approval(d, "bob")]

    _rejects(
        signed, _edited(signed, edit), "1 distinct officers approved; the pinned threshold is 2"
    )


def test_duplicate_approval_same_officer(signed: Signed) -> None:
    """Alice's envelope twice (bob's removed) is one officer, not two."""

    def edit(d: dict[str, Any]) -> None:
        alice = _approval(d, "alice")
        d["approvals"] = [alice, alice]

    _rejects(signed, _edited(signed, edit), "approval 1: alice is counted twice")


def test_second_approval_by_same_officer_freshly_signed(signed: Signed) -> None:
    """A second, distinct, valid envelope by alice still counts alice once."""
    again = sign_statement(
        _statement(signed.request, "alice", issued_at=dt.datetime.now(dt.UTC)),
        signed.r.env.approval_key("alice"),
    ).decode()
    assert again != _approval(signed.doc, "alice")

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice"), again]

    _rejects(signed, _edited(signed, edit), "alice is counted twice")


def test_approval_for_another_request(signed: Signed) -> None:
    """Bob's real approval of the second request does not count for this one."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice"), _approval(signed.other_doc, "bob")]

    _rejects(
        signed,
        _edited(signed, edit),
        r"approval 1 \(bob\) is not for this signature: request_id, digests differ",
    )


def test_approval_by_unpinned_officer_dave(signed: Signed) -> None:
    """Dave has a real approval key in the environment, but the trust does not pin it."""
    dave = signed.r.clients.envelope("dave", signed.request).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice"), dave]

    _rejects(signed, _edited(signed, edit), "approval 1 is not signed by any pinned officer's key")


def test_approval_claiming_bob_signed_by_fresh_key(signed: Signed) -> None:
    """A statement naming bob, signed with a key that is not bob's, is refused."""
    forged = sign_statement(_statement(signed.request, "bob"), Ed25519Signer.generate()).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice"), forged]

    _rejects(signed, _edited(signed, edit), "approval 1 is not signed by any pinned officer's key")


def test_approval_claiming_another_officer(signed: Signed) -> None:
    """Carol's key signing a statement that says approver=bob: the claim must match the key."""
    lying = sign_statement(
        _statement(signed.request, "bob"), signed.r.env.approval_key("carol")
    ).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice"), lying]

    _rejects(signed, _edited(signed, edit), r"approval 1 \(carol\) .* approver differ")


def test_approval_signature_tampered(signed: Signed) -> None:
    """Bob's approval with a flipped signature bit is signed by no pinned key."""

    def edit(d: dict[str, Any]) -> None:
        env = json.loads(_approval(d, "bob"))
        env["signatures"][0]["sig"] = _flip(env["signatures"][0]["sig"])
        d["approvals"] = [_approval(d, "alice"), json.dumps(env)]

    _rejects(signed, _edited(signed, edit), "approval 1 is not signed by any pinned officer's key")


def test_denial_is_not_an_approval(signed: Signed) -> None:
    """Bob's genuinely signed denial of this request does not count as approval."""
    deny = sign_statement(
        _statement(signed.request, "bob", decision="deny", reason="no"),
        signed.r.env.approval_key("bob"),
    ).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice"), deny]

    _rejects(signed, _edited(signed, edit), r"approval 1 \(bob\) .* decision differ")


def test_malformed_approval(signed: Signed) -> None:
    """An approval that is not a JSON envelope is refused as malformed."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [_approval(d, "alice"), "{not json"]

    _rejects(signed, _edited(signed, edit), "approval 1 is malformed")


# -- the digests ---------------------------------------------------------------------------


def test_approval_for_another_digest(signed: Signed) -> None:
    """Alice's genuine signature over this request but another artifact's digest."""
    other = Digest("sha256", hashlib.sha256(signed.other.read_bytes()).digest(), "app.tar")
    wrong = sign_statement(
        _statement(signed.request, "alice", digests=(other,)), signed.r.env.approval_key("alice")
    ).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [wrong, _approval(d, "bob")]

    _rejects(
        signed, _edited(signed, edit), r"approval 0 \(alice\) is not for this signature: digests"
    )


def test_bundle_digests_changed_to_other_artifact(signed: Signed) -> None:
    """The digest list now names the other artifact: this signature is not over it."""

    def edit(d: dict[str, Any]) -> None:
        d["digests"] = signed.other_doc["digests"]

    doc = _edited(signed, edit)
    _rejects(signed, doc, "the signature over other.tar does not verify", artifact=signed.other)
    _rejects(signed, doc, "the signature over other.tar does not verify")


def test_digests_and_signatures_spliced_from_other_request(signed: Signed) -> None:
    """The other request's real digest and signature, with this request's approvals."""

    def edit(d: dict[str, Any]) -> None:
        d["digests"] = signed.other_doc["digests"]
        d["signatures"] = signed.other_doc["signatures"]

    _rejects(
        signed,
        _edited(signed, edit),
        r"approval 0 \(\w+\) is not for this signature: digests differ",
        artifact=signed.other,
    )


def test_artifact_renamed_in_digests(signed: Signed) -> None:
    """Same digest value, another artifact name: the approvals bound the name too."""

    def edit(d: dict[str, Any]) -> None:
        d["digests"][0]["artifact"] = "evil.tar"

    _rejects(signed, _edited(signed, edit), "digests differ")


# -- the artifact -----------------------------------------------------------------------------


def test_different_file_cli(signed: Signed) -> None:
    """The bundle checked against another file: exit 1, that digest is not signed."""
    _refused(
        _verify_cli(signed.bundle_path, signed.other, signed.trust_path),
        "bundle INVALID",
        "other.tar's digest is not one the bundle signs",
    )


def test_artifact_modified(signed: Signed) -> None:
    """One byte of the artifact changed: its digest is not one the bundle signs."""
    changed = signed.dir / "app-changed.tar"
    data = bytearray(signed.artifact.read_bytes())
    data[100] ^= 0xFF
    changed.write_bytes(bytes(data))
    _rejects(
        signed, signed.doc, "app-changed.tar's digest is not one the bundle signs", artifact=changed
    )


# -- the audit proof ----------------------------------------------------------------------------


def _checkpoint_text(note: str) -> str:
    return note[: note.rfind("\n\n") + 1]


def test_checkpoint_resigned_by_another_key(signed: Signed) -> None:
    """The same checkpoint text signed by a fresh key under the log's name is not trusted."""
    fresh = ed25519.Ed25519PrivateKey.generate()
    name = signed.trust.audit_verifier.name

    def edit(d: dict[str, Any]) -> None:
        note = d["audit"]["checkpoint"]
        d["audit"]["checkpoint"] = sign_note(
            _checkpoint_text(note), name, fresh.public_key(), fresh.sign
        )

    _rejects(signed, _edited(signed, edit), "checkpoint: note has no signature by a known key")


def test_checkpoint_forged_signature_under_real_key_id(signed: Signed) -> None:
    """A signature line naming the real audit key but made by another key is invalid."""
    fresh = ed25519.Ed25519PrivateKey.generate()
    verifier = signed.trust.audit_verifier

    def edit(d: dict[str, Any]) -> None:
        text = _checkpoint_text(d["audit"]["checkpoint"])
        sig = base64.b64encode(verifier.key_id + fresh.sign(text.encode())).decode()
        d["audit"]["checkpoint"] = f"{text}\n\u2014 {verifier.name} {sig}\n"

    _rejects(signed, _edited(signed, edit), "checkpoint: invalid signature for key")


def test_checkpoint_for_another_tree(signed: Signed) -> None:
    """A checkpoint with another root, signed by a fresh key: refused before the proof."""
    fresh = ed25519.Ed25519PrivateKey.generate()
    name = signed.trust.audit_verifier.name

    def edit(d: dict[str, Any]) -> None:
        size = d["audit"]["tree_size"]
        root = base64.b64encode(os.urandom(32)).decode()
        d["audit"]["checkpoint"] = sign_note(
            f"{name}\n{size}\n{root}\n", name, fresh.public_key(), fresh.sign
        )

    _rejects(signed, _edited(signed, edit), "no signature by a known key")


def test_trust_pins_another_audit_key(signed: Signed) -> None:
    """The real checkpoint does not verify under a trust whose audit verifier is another key."""
    name = signed.trust.audit_verifier.name
    other = Verifier.for_key(name, ed25519.Ed25519PrivateKey.generate().public_key())
    trust = dataclasses.replace(signed.trust, audit_verifier=other)
    _rejects(signed, signed.doc, "checkpoint: note has no signature by a known key", trust=trust)


def test_trust_file_pins_another_audit_key_cli(signed: Signed) -> None:
    """A trust file pinning another audit key refuses the real checkpoint (exit 1)."""
    name = signed.trust.audit_verifier.name
    other = Verifier.for_key(name, ed25519.Ed25519PrivateKey.generate().public_key())
    trust = _trust_file(signed, "other-audit.toml", audit_verifier=str(other))
    _refused(
        _verify_cli(signed.bundle_path, signed.artifact, trust),
        "bundle INVALID",
        "no signature by a known key",
    )


def test_inclusion_proof_hash_flipped(signed: Signed) -> None:
    """One bit of a proof hash flipped: the inclusion proof misses the root."""
    assert signed.doc["audit"]["inclusion_proof"], "a one-entry log has no proof to tamper"

    def edit(d: dict[str, Any]) -> None:
        proof = d["audit"]["inclusion_proof"]
        proof[len(proof) // 2] = _flip(proof[len(proof) // 2], at=0)

    _rejects(signed, _edited(signed, edit), "inclusion proof for leaf .* does not lead to the root")


def test_inclusion_proof_wrong_index(signed: Signed) -> None:
    """The entry's index lowered by one: the inclusion proof fails."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["index"] -= 1

    _rejects(signed, _edited(signed, edit), "inclusion proof")


def test_inclusion_proof_index_out_of_tree(signed: Signed) -> None:
    """An index equal to the tree size is refused: it is not in the tree."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["index"] = d["audit"]["tree_size"]

    _rejects(signed, _edited(signed, edit), "is not in a tree of size")


def test_inclusion_proof_hash_removed(signed: Signed) -> None:
    """An inclusion proof missing its last hash fails."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["inclusion_proof"].pop()

    _rejects(signed, _edited(signed, edit), "inclusion proof")


def test_proof_tree_size_differs_from_checkpoint(signed: Signed) -> None:
    """A proof for one more entry than the checkpoint's tree is refused."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["tree_size"] += 1

    _rejects(signed, _edited(signed, edit), r"the checkpoint is for \d+ entries, the proof for")


def test_audit_proof_of_another_request(signed: Signed) -> None:
    """The other request's complete, valid audit proof: its entry names another request."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"] = signed.other_doc["audit"]

    _rejects(
        signed,
        _edited(signed, edit),
        "the audit entry does not match the signed request: request id, signatures differ",
    )


def test_audit_entry_swapped_alone(signed: Signed) -> None:
    """Another request's entry under this proof: not the leaf the proof leads from."""

    def edit(d: dict[str, Any]) -> None:
        d["audit"]["entry"] = signed.other_doc["audit"]["entry"]

    _rejects(signed, _edited(signed, edit), "inclusion proof")


def test_audit_entry_edited(signed: Signed) -> None:
    """The entry edited to name the other request's signature breaks the inclusion proof."""

    def edit(d: dict[str, Any]) -> None:
        entry = json.loads(base64.b64decode(d["audit"]["entry"]))
        entry["request_id"] = signed.other_request.id
        d["audit"]["entry"] = base64.b64encode(json.dumps(entry).encode()).decode()

    _rejects(signed, _edited(signed, edit), "inclusion proof")


# -- the pinned key and threshold -----------------------------------------------------------------


def _public_pem(s: Signed, key_name: str) -> Path:
    key = (
        s.r.clients.signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name=key_name), timeout=RPC_TIMEOUT)
        .key
    )
    path = s.dir / f"{key_name}.pem"
    path.write_text(key.public_key_pem)
    return path


def test_trust_pins_another_signing_key_cli(signed: Signed) -> None:
    """A consumer pinning k-ecdsa-p384's public key refuses a bundle for release."""
    trust = _trust_file(signed, "p384.toml", public_key=str(_public_pem(signed, "k-ecdsa-p384")))
    _refused(
        _verify_cli(signed.bundle_path, signed.artifact, trust),
        "bundle INVALID",
        f"the bundle is for key {signed.request.key_id[:16]}..., the pinned key is",
    )


def test_bundle_relabelled_as_the_pinned_key(signed: Signed) -> None:
    """Relabelling the bundle as k-ecdsa-p384's does not make release's signature verify."""
    pem = _public_pem(signed, "k-ecdsa-p384")
    trust = Trust.load(_trust_file(signed, "p384-inproc.toml", public_key=str(pem)))
    key = (
        signed.r.clients.signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name="k-ecdsa-p384"), timeout=RPC_TIMEOUT)
        .key
    )
    assert key.key_id != signed.request.key_id

    def edit(d: dict[str, Any]) -> None:
        d["key"].update(
            name=key.name,
            key_id=key.key_id,
            algorithm="ecdsa-p384",
            public_key_pem=key.public_key_pem,
        )

    _rejects(signed, _edited(signed, edit), "does not verify with the pinned key", trust=trust)


def test_threshold_pinned_higher_cli(signed: Signed) -> None:
    """A trust file pinning threshold 3 refuses a bundle of two approvals (exit 1)."""
    trust = _trust_file(signed, "threshold3.toml", threshold=3)
    _refused(
        _verify_cli(signed.bundle_path, signed.artifact, trust),
        "bundle INVALID",
        "2 distinct officers approved; the pinned threshold is 3",
    )


def test_trust_without_bob(signed: Signed) -> None:
    """A consumer who pins only alice and carol does not count bob's approval."""
    approvers = {
        o: str(signed.r.env.root / "approvers" / f"{o}.key.pub") for o in ("alice", "carol")
    }
    trust = Trust.load(_trust_file(signed, "no-bob.toml", approvers=approvers))
    _rejects(signed, signed.doc, "not signed by any pinned officer's key", trust=trust)


# -- malformed bundles -------------------------------------------------------------------------


def test_not_json_cli(signed: Signed) -> None:
    """A truncated bundle file makes `signer verify` exit 1: it is not JSON."""
    path = _write(signed, "not-json.json", signed.bundle_path.read_text()[:-20])
    _refused(_verify_cli(path, signed.artifact, signed.trust_path), "bundle INVALID", "is not JSON")


def test_wrong_media_type_cli(signed: Signed) -> None:
    """A bundle of another mediaType is refused by `signer verify`: not a bundle."""

    def edit(d: dict[str, Any]) -> None:
        d["mediaType"] = "application/vnd.signer.bundle.v2+json"

    path = _write(signed, "media-type.json", _edited(signed, edit))
    _refused(
        _verify_cli(path, signed.artifact, signed.trust_path),
        "bundle INVALID",
        f"not a bundle: mediaType is not {MEDIA_TYPE}",
    )


@pytest.mark.parametrize(
    ("what", "edit", "match"),
    [
        ("no mediaType", lambda d: d.pop("mediaType"), "not a bundle"),
        ("a JSON list", None, "not a bundle"),
        ("no key", lambda d: d.pop("key"), "malformed bundle"),
        ("no audit", lambda d: d.pop("audit"), "malformed bundle"),
        ("signature not base64", lambda d: d.update(signatures=["*!*"]), "malformed bundle"),
        ("digest not hex", lambda d: d["digests"][0].update(digest="zz"), "malformed bundle"),
        ("digests not a list", lambda d: d.update(digests=7), "malformed bundle"),
        ("threshold not a number", lambda d: d.update(threshold="two"), "malformed bundle"),
        ("dsse not an object", lambda d: d.update(dsse="x"), "malformed bundle"),
        ("audit entry not base64", lambda d: d["audit"].update(entry="*"), "malformed audit"),
        ("audit index not a number", lambda d: d["audit"].update(index="x"), "malformed audit"),
        ("digest not an object", lambda d: d.update(digests=["x"]), "malformed bundle"),
        ("digest algorithm a list", lambda d: d["digests"][0].update(algorithm=[1]), "malformed"),
        ("digest algorithm md5", lambda d: d["digests"][0].update(algorithm="md5"), "not one of"),
        ("digest too short", lambda d: d["digests"][0].update(digest="ab" * 20), "32 bytes"),
        ("artifact not a string", lambda d: d["digests"][0].update(artifact=7), "artifact"),
    ],
)
def test_malformed_bundle(
    signed: Signed, what: str, edit: Callable[[dict[str, Any]], Any] | None, match: str
) -> None:
    """A bundle missing a part, with a field of the wrong type or form, or a JSON list,
    is refused, saying what is wrong."""
    doc: Any = [signed.doc] if edit is None else _edited(signed, edit)
    with pytest.raises(VerificationError, match=match):
        verify_bundle(Bundle.from_json(doc), signed.trust, signed.artifact)


def test_deeply_nested_bundle_cli(signed: Signed) -> None:
    """A bundle nested 100,000 deep is refused as too nested, with no traceback."""
    path = _write(signed, "deep.json", "[" * 100_000 + "]" * 100_000)
    _refused(_verify_cli(path, signed.artifact, signed.trust_path), "bundle INVALID", "nested")


def test_unknown_algorithm(signed: Signed) -> None:
    """A bundle naming a signing algorithm the verifier does not know is refused."""

    def edit(d: dict[str, Any]) -> None:
        d["key"]["algorithm"] = "ed25519"

    _rejects(signed, _edited(signed, edit), "unknown signing algorithm 'ed25519'")


# -- trust-file errors (exit 2) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"approvers": None}, "[approvers] must name NAME = PEM-PATH entries"),
        ({"threshold": 4}, "threshold 4 is more than the 3 approvers listed"),
    ],
    ids=["missing approvers", "threshold over approvers"],
)
def test_trust_file_errors_cli(signed: Signed, overrides: dict[str, Any], phrase: str) -> None:
    """A trust file with no approvers, or a threshold above their number, exits 2."""
    trust = _trust_file(signed, f"bad-{'-'.join(overrides)}.toml", **overrides)
    _refused(_verify_cli(signed.bundle_path, signed.artifact, trust), phrase, code=2)


RELEASE_PEM = "<release.pem>"  # replaced by the absolute path of the release public key


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"threshold": 0}, "threshold must be a positive integer"),
        ({"threshold": True}, "threshold must be a positive integer"),
        ({"audit_verifier": "nope"}, "audit_verifier: verifier key 'nope' is not name+keyid+key"),
        ({"public_key": "/nonexistent.pem"}, "public_key: cannot load /nonexistent.pem"),
        ({"extra": 1}, "unknown setting 'extra'"),
        ({"approvers": {"alice": RELEASE_PEM}}, "approvers.alice is not an Ed25519 key"),
    ],
    ids=["zero", "bool", "verifier", "no public key", "unknown", "approver not ed25519"],
)
def test_trust_file_errors(signed: Signed, overrides: dict[str, Any], phrase: str) -> None:
    """Each bad trust setting (threshold, verifier, key, unknown) is a ConfigError."""
    pem = str(signed.r.env.root / "trust" / "release.pem")
    if overrides.get("approvers") == {"alice": RELEASE_PEM}:
        overrides = {"approvers": {"alice": pem}}
    path = _trust_file(signed, "bad-inproc.toml", **overrides)
    with pytest.raises(ConfigError, match=re.escape(phrase)):
        Trust.load(path)
