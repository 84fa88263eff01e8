"""`audit verify` replays each request as the core ran it: an approval counts only from an
approver of the key under the policy then in force, an approval only under the approver
key in force at signing, and nothing is decided or signed after a request ended."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.audit.note import Verifier
from signer.audit.offline import verify_dir
from signer.errors import VerificationError
from tests.synthetic_log import OFFICERS, Synth, valid_quorum


@pytest.fixture
def s() -> Synth:
    """A synthetic log of the release key (2 of alice, bob, carol), officers' keys fresh."""
    return Synth({o: Ed25519Signer.generate() for o in OFFICERS})


def _verify(s: Synth, where: Path) -> None:
    verifier = s.write(where, ed25519.Ed25519PrivateKey.generate())
    verify_dir(where, Verifier.parse(verifier))


def _refused(s: Synth, where: Path, index: int, phrase: str) -> None:
    with pytest.raises(VerificationError) as e:
        _verify(s, where)
    assert str(e.value).startswith(f"entry {index} "), str(e.value)
    assert phrase in str(e.value), str(e.value)


def test_the_synthetic_quorum_verifies(s: Synth, tmp_path: Path) -> None:
    """The baseline the refusals below edit: two approvals, then the signature."""
    valid_quorum(s)
    _verify(s, tmp_path / "log")


def test_an_approval_under_a_key_rotated_before_signing_does_not_count(
    s: Synth, tmp_path: Path
) -> None:
    """alice approves with her key; a restart gives her another key; at signing her approval
    no longer verifies (the core would not count it), so one valid approval is too few."""
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.started(s.policy(alice="dave"))  # alice's key is now dave's
    s.decided("bob")
    signed = s.signed(["alice", "bob"])
    _refused(s, tmp_path / "log", signed, "the policy needs 2")


def test_an_approval_by_someone_not_yet_an_approver_never_counts(s: Synth, tmp_path: Path) -> None:
    """carol approves while only alice and bob approve the key (the core would refuse her);
    a later policy that adds her does not make that approval count at signing."""
    s.started(s.policy(approvers=("alice", "bob")))
    s.created()
    s.decided("carol")
    s.started(s.policy())
    s.decided("alice")
    signed = s.signed(["alice", "carol"])
    _refused(s, tmp_path / "log", signed, "the policy needs 2")


@pytest.mark.parametrize("ended", ["request.cancelled", "request.expired", "request.failed"])
def test_nothing_is_approved_or_signed_after_a_request_ended(
    s: Synth, tmp_path: Path, ended: str
) -> None:
    """A request cancelled, expired or failed takes no approval and no signature after."""
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.add(ended, "signer", {"reason": "x"})
    late = s.decided("bob")
    s.signed(["alice", "bob"])
    _refused(s, tmp_path / "log", late, "after the request ended")


@pytest.mark.parametrize("ended", ["request.cancelled", "request.expired", "request.failed"])
def test_a_signature_after_a_request_ended_is_refused(s: Synth, tmp_path: Path, ended: str) -> None:
    """Two approvals, then the request ends, then a signature: the signature is refused."""
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.add(ended, "signer", {"reason": "x"})
    signed = s.signed(["alice", "bob"])
    _refused(s, tmp_path / "log", signed, f"request signed after {ended}")


def _pinned_policy(s: Synth, key_id: str, **extra: object) -> dict[str, object]:
    policy = s.policy()
    policy["keys"]["release"]["key_id"] = key_id
    return {**policy, **extra}


def _signed_under(s: Synth, policy: dict[str, object]) -> int:
    s.started(policy)
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.add("request.quorum", "bob", {"approvers": ["alice", "bob"], "threshold": 2})
    return s.signed(["alice", "bob"])


def test_a_signature_by_a_key_the_policy_does_not_pin_is_refused(s: Synth, tmp_path: Path) -> None:
    """The policy in force pins another key id for `release` than the one that signed."""
    index = _signed_under(s, _pinned_policy(s, "cd" * 32))
    _refused(s, tmp_path / "log", index, "not the key cdcdcdcdcdcdcdcd... the policy in force")


def test_a_signature_by_the_pinned_key_verifies(s: Synth, tmp_path: Path) -> None:
    """The same log with the signing key pinned verifies (the baseline of the refusals)."""
    _signed_under(s, _pinned_policy(s, "ab" * 32))
    _verify(s, tmp_path / "log")


def test_a_signature_by_a_key_the_policy_in_force_revokes_is_refused(
    s: Synth, tmp_path: Path
) -> None:
    """A request signed by a key id the policy in force revokes is refused."""
    revoked = [{"key_id": "ab" * 32, "at": "2026-01-01T00:00:00Z", "reason": "stolen"}]
    index = _signed_under(s, {**s.policy(), "revoked": revoked})
    _refused(s, tmp_path / "log", index, "which the policy in force revokes")
