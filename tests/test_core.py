"""The signing core through fakes: quorum rules, binding and denial.

A real store of the test's backend, a fake in-memory token and a fake clock
(tests/fakes.py, tests/core_world.py); no gRPC, no PKCS#11. A quorum counts
distinct officers of the key's policy, each approval must bind the stored
request field by field, and one denial ends a request. Every refusal is
checked to change nothing (invariant 8) and every state change to have its
audit entry (3).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signer.errors import (
    ConflictError,
    EnvelopeError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from signer.model import Digest, State
from signer.verify import verify_digest
from testbed.env import Db
from tests.core_world import MIN, snapshot
from tests.core_world import world as world  # a fixture
from tests.fakes import World, make_world, sha256_digest

# -- the happy path --------------------------------------------------------------------


def test_two_distinct_approvals_sign_and_verify(world: World) -> None:
    """Two officers' approvals sign every digest; signatures verify with the public key."""
    digests = [
        sha256_digest(b"a", "a.tar"),
        Digest("sha384", hashlib.sha384(b"b").digest(), "b.tar"),
        Digest("sha512", hashlib.sha512(b"c").digest(), "c.tar"),
    ]
    r = world.create(digests=digests)
    assert r.state is State.PENDING and r.key_id == world.keys["release"].key_id
    assert world.approve("alice", r).state is State.PENDING
    assert world.token.calls == []
    signed = world.approve("bob", r)
    assert signed.state is State.SIGNED and len(signed.signatures) == 3
    for d, sig in zip(digests, signed.signatures, strict=True):
        verify_digest(world.token.public_key("release"), d.algorithm, d.value, sig)
    assert world.events(r.id) == [
        "request.created",
        "request.approved",
        "request.approved",
        "request.quorum",
        "request.signed",
    ]
    signed_entry = world.audit()[-1].details
    assert signed_entry["approvers"] == ["alice", "bob"]
    assert signed_entry["signature_sha256"] == [
        hashlib.sha256(s).hexdigest() for s in signed.signatures
    ]


def test_threshold_one_signs_on_first_approval(tmp_path: Path, new_db: Callable[[], Db]) -> None:
    """With a 1-of-3 policy the first valid approval signs."""
    w = make_world(tmp_path, db=new_db(), threshold=1)
    try:
        assert w.approve("carol", w.create()).state is State.SIGNED
    finally:
        w.close()


# -- quorum counts people --------------------------------------------------------------


@pytest.mark.parametrize("later", [dt.timedelta(0), MIN], ids=["same-envelope", "new-envelope"])
def test_same_approver_twice_is_already_decided(world: World, later: dt.timedelta) -> None:
    """A second approval by the same officer is refused and the quorum is not reached."""
    r = world.create()
    env = world.envelope("alice", r)
    world.core.decide("alice", r.id, env, "approve")
    world.clock.advance(later)
    again = env if not later else world.envelope("alice", r)
    before = snapshot(world)
    with pytest.raises(ConflictError) as e:
        world.core.decide("alice", r.id, again, "approve")
    assert e.value.reason == "ALREADY_DECIDED"
    assert snapshot(world) == before
    assert world.get(r.id).state is State.PENDING and world.token.calls == []


def test_deny_after_own_approval_is_already_decided(world: World) -> None:
    """An officer who approved cannot then deny (one decision per officer)."""
    r = world.create()
    world.approve("alice", r)
    with pytest.raises(ConflictError) as e:
        world.deny("alice", r)
    assert e.value.reason == "ALREADY_DECIDED"
    assert world.get(r.id).state is State.PENDING


def test_requester_cannot_approve(world: World) -> None:
    """carol made the request, so her approval is refused; alice and bob still sign."""
    r = world.create("carol")
    before = snapshot(world)
    with pytest.raises(PermissionDeniedError) as e:
        world.approve("carol", r)
    assert e.value.reason == "REQUESTER_CANNOT_APPROVE"
    assert snapshot(world) == before
    world.approve("alice", r)
    signed = world.approve("bob", r)
    assert signed.state is State.SIGNED
    assert world.audit()[-1].details["approvers"] == ["alice", "bob"]


@pytest.mark.parametrize("officer", ["dave", "mallory"])
def test_non_member_cannot_approve(world: World, officer: str) -> None:
    """dave (a key, no policy) and mallory (no key) are refused NOT_AN_APPROVER."""
    r = world.create()
    env = world.envelope(officer, r, signer="dave")
    before = snapshot(world)
    with pytest.raises(PermissionDeniedError) as e:
        world.core.decide(officer, r.id, env, "approve")
    assert e.value.reason == "NOT_AN_APPROVER"
    assert snapshot(world) == before
    with pytest.raises(PermissionDeniedError):
        world.core.get_for_approver(officer, r.id)


def test_envelope_signed_by_another_officers_key(world: World) -> None:
    """alice's statement signed with bob's key does not verify as alice's."""
    r = world.create()
    before = snapshot(world)
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("alice", r.id, world.envelope("alice", r, signer="bob"), "approve")
    assert e.value.reason == "BAD_APPROVAL_SIGNATURE"
    assert snapshot(world) == before


def test_bob_cannot_submit_alices_envelope(world: World) -> None:
    """A valid envelope by alice, submitted by bob, is checked against bob's key and refused."""
    r = world.create()
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("bob", r.id, world.envelope("alice", r), "approve")
    assert e.value.reason == "BAD_APPROVAL_SIGNATURE"


# -- binding ---------------------------------------------------------------------------

_OTHER = sha256_digest(b"something else")


@pytest.mark.parametrize(
    "overrides",
    [
        {"request_id": "00000000-0000-4000-8000-000000000000"},
        {"key_name": "staging"},
        {"key_id": "00" * 32},
        {"digests": (_OTHER,)},
        {"digests": ()},
        {"digests": (Digest("sha256", hashlib.sha256(b"build 1").digest(), "other.tar"),)},
        {"approver": "bob"},
        {"decision": "deny", "reason": "no"},
    ],
    ids=lambda o: "-".join(o),
)
def test_statement_field_mismatch(world: World, overrides: dict[str, Any]) -> None:
    """A statement that differs from the stored request in any field is refused."""
    r = world.create()
    env = world.envelope("alice", r, **overrides)
    before = snapshot(world)
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("alice", r.id, env, "approve")
    assert e.value.reason == "STATEMENT_MISMATCH"
    assert snapshot(world) == before


def test_approval_for_another_request_is_refused(world: World) -> None:
    """An approval of request A, replayed against request B with the same digest, is refused."""
    a, b = world.create(), world.create()
    assert a.digests == b.digests
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("alice", b.id, world.envelope("alice", a), "approve")
    assert e.value.reason == "STATEMENT_MISMATCH"


def test_deny_statement_used_as_approval_and_back(world: World) -> None:
    """The decision signed must be the decision asked for, both ways."""
    r = world.create()
    with pytest.raises(EnvelopeError):
        world.core.decide("alice", r.id, world.envelope("alice", r), "deny")
    deny_env = world.envelope("alice", r, decision="deny", reason="no")
    with pytest.raises(EnvelopeError):
        world.core.decide("alice", r.id, deny_env, "approve")
    assert world.get(r.id).approvals == ()


@pytest.mark.parametrize(
    ("offset", "ok"),
    [
        (dt.timedelta(minutes=10), False),
        (dt.timedelta(minutes=5, seconds=1), False),
        (dt.timedelta(minutes=4), True),
        (-dt.timedelta(minutes=4), True),
        (-dt.timedelta(minutes=5, seconds=1), False),
        (-dt.timedelta(days=1), False),
    ],
)
def test_issued_at_window(world: World, offset: dt.timedelta, ok: bool) -> None:
    """issued_at may be at most 5 minutes in the future and not before the request (skew 5m)."""
    r = world.create()
    env = world.envelope("alice", r, issued_at=world.clock() + offset)
    if ok:
        assert len(world.core.decide("alice", r.id, env, "approve").approvals) == 1
        return
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("alice", r.id, env, "approve")
    assert e.value.reason == "STATEMENT_MISMATCH"


# -- denial ----------------------------------------------------------------------------


def test_one_denial_ends_the_request(world: World) -> None:
    """alice approves, bob denies: DENIED, nothing signed, carol's approval is refused."""
    r = world.create()
    world.approve("alice", r)
    denied = world.deny("bob", r, reason="not from main")
    assert denied.state is State.DENIED and "not from main" in denied.status_message
    entry = world.audit()[-1]
    assert entry.event == "request.denied" and entry.details["reason"] == "not from main"
    before = snapshot(world)
    with pytest.raises(ConflictError) as e:
        world.approve("carol", r)
    assert e.value.reason == "REQUEST_DENIED"
    assert snapshot(world) == before
    assert world.token.calls == [] and world.get(r.id).signatures == ()


def test_denial_reason_too_long_is_refused(world: World) -> None:
    """A denial whose signed reason is over the limit is refused and changes nothing."""
    r = world.create()
    before = snapshot(world)
    with pytest.raises(InvalidArgumentError):
        world.deny("bob", r, reason="x" * 1025)
    assert snapshot(world) == before
