"""The semantics `signer audit verify` checks: every `request.signed` backed by a valid quorum.

Small synthetic logs (tests/synthetic_log.py), correctly signed with an in-memory
audit key, each wrong in one way: a signature under the policy in force without
m valid, distinct, bound approvals is named, with the entry at fault.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.encoding import canonical_json
from signer.model import Digest, Manifest
from testbed.commands import SIGNER, run
from tests.harness import refused
from tests.synthetic_log import OFFICERS, Synth, valid_quorum
from tests.tamper import audit_verify


def _one_approval(s: Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    return s.signed(["alice"])


def _requester_approves(s: Synth) -> int:
    s.started(s.policy())
    s.created(requester="carol")
    s.decided("alice")
    bad = s.decided("carol")
    s.signed(["alice", "carol"])
    return bad


def _other_digests(s: Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    bad = s.decided("bob", digests=(Digest("sha256", bytes(32), "app.tar"),))
    s.signed(["alice", "bob"])
    return bad


def _wrong_manifest(s: Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice", manifest=Manifest.of(s.digests))
    other = (Digest("sha256", bytes(32), "app.tar"),)
    bad = s.decided("bob", manifest=Manifest.of(other))
    s.signed(["alice", "bob"])
    return bad


def _forged_envelope(s: Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    bad = s.decided("bob", signer="carol")
    s.signed(["alice", "bob"])
    return bad


def _non_member(s: Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.decided("dave")  # has a registered key, but is not an approver of the key
    return s.signed(["alice"])


def _one_key_two_names(s: Synth) -> int:
    s.started(s.policy(bob="alice"))
    s.created()
    s.decided("alice")
    s.decided("bob", signer="alice")  # verifies: bob is registered with alice's key
    return s.signed(["alice", "bob"])


def _signed_after_denial(s: Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.decided("carol", "deny")
    return s.signed(["alice", "bob"])


def _policy_hash_mismatch(s: Synth) -> int:
    loose = s.policy(approvers=("alice", "bob", "carol", "dave"))
    bad = s.started(s.policy(), policy_hash=hashlib.sha256(canonical_json(loose)).hexdigest())
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.signed(["alice", "bob"])
    return bad


_NO_QUORUM: list[tuple[Callable[[Synth], int], str, str]] = [
    (
        _one_approval,
        "request.signed",
        "signed with 1 valid distinct approvals; the policy needs 2",
    ),
    (
        _requester_approves,
        "request.approved",
        "carol decided on a request they made or whose pipeline they started",
    ),
    (_other_digests, "request.approved", "the approve by bob is not bound to this request"),
    (_wrong_manifest, "request.approved", "the approve by bob is not bound to this request"),
    (_forged_envelope, "request.approved", "approval envelope by bob does not verify"),
    (
        _non_member,
        "request.signed",
        "signed with 1 valid distinct approvals; the policy needs 2",
    ),
    (
        _one_key_two_names,
        "request.signed",
        "signed with 1 valid distinct approvals; the policy needs 2",
    ),
    (_signed_after_denial, "request.signed", "request signed after a denial"),
    (
        _policy_hash_mismatch,
        "server.started",
        "the recorded policy does not match its policy_hash",
    ),
]


@pytest.mark.parametrize(
    ("build", "event", "phrase"),
    [pytest.param(*case, id=case[0].__name__.strip("_")) for case in _NO_QUORUM],
)
def test_signature_without_valid_quorum_is_named(
    tmp_path: Path, build: Callable[[Synth], int], event: str, phrase: str
) -> None:
    """A correctly signed log whose signature lacks a valid quorum fails, naming the entry."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    bad = build(s)
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    refused(
        audit_verify(tmp_path / "log", verifier),
        f"verification FAILED: entry {bad} ({event}): {phrase}",
    )


def test_synthetic_valid_log_passes(tmp_path: Path) -> None:
    """The same synthetic log with a valid 2-of-3 quorum verifies, counting what it checked."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    valid_quorum(s)
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    out = run([*SIGNER, "audit", "verify", str(tmp_path / "log"), "--verifier", verifier, "--json"])
    assert json.loads(out.stdout) == {
        "entries": 6,
        "checkpoints": 1,
        "tree_size": 6,
        "signed": 1,
        "approvals": 2,
        "policies": 1,
        "policy_versions": 0,
        "policies_before_chain": 1,
    }


def test_synthetic_manifest_approvals_pass(tmp_path: Path) -> None:
    """Approvals binding the manifest of a batch (instead of listing it) verify offline."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    s.digests = tuple(
        Digest("sha256", hashlib.sha256(b"%d" % i).digest(), f"pkg-{i}.tar") for i in range(40)
    )
    s.started(s.policy())
    s.created()
    s.decided("alice", manifest=Manifest.of(s.digests))
    s.decided("bob", manifest=Manifest.of(s.digests))
    s.add("request.quorum", "bob", {"approvers": ["alice", "bob"], "threshold": 2})
    s.signed(["alice", "bob"])
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    out = run([*SIGNER, "audit", "verify", str(tmp_path / "log"), "--verifier", verifier, "--json"])
    assert json.loads(out.stdout)["approvals"] == 2
