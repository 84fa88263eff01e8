"""The signing core through fakes: quorum rules, binding, expiry, failures, bad input.

A real SqliteStore in a temp dir, a fake in-memory token and a fake clock
(tests/fakes.py); no gRPC, no PKCS#11. Every refusal is checked to change
nothing (invariant 8) and every state change to have its audit entry (3).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import ALGORITHMS
from signer.approval.keys import spki_key_id
from signer.core.events import Event, Kind
from signer.core.intake import Limits
from signer.core.machine import Core
from signer.core.policy import KeyPolicy
from signer.dsse import PAYLOAD_TYPE, Statement, pae
from signer.errors import (
    AlreadyExistsError,
    ConflictError,
    EnvelopeError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SignerError,
    StoreError,
    TooLargeError,
)
from signer.model import Digest, KeySpec, Request, State
from signer.verify import verify_digest
from testbed.env import Db
from tests.fakes import SimulatedCrash, World, make_world, sha256_digest

MIN = dt.timedelta(minutes=1)


@pytest.fixture
def world(tmp_path: Path, new_db: Callable[[], Db]) -> Iterator[World]:
    w = make_world(tmp_path, db=new_db(), limits=Limits(max_digests=3, max_context_entries=4))
    yield w
    w.close()


def _snapshot(w: World) -> tuple[list[Request], list[bytes]]:
    """Everything the store holds, to compare before and after a refused call."""
    return w.requests(), [e.to_bytes() for e in w.audit()]


def _add_audit_trigger(w: World, when: str = "true") -> None:
    """Make every audit insert matching `when` fail, as a full disk would."""
    if w.db.backend == "sqlite":
        w.db.rows(
            "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log "
            f"WHEN {when} BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        return
    w.db.rows(
        "CREATE FUNCTION audit_fails() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'disk full'; END $$"
    )
    w.db.rows(
        "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log FOR EACH ROW "
        f"WHEN ({when}) EXECUTE FUNCTION audit_fails()"
    )


def _drop_audit_trigger(w: World) -> None:
    w.db.rows("DROP TRIGGER audit_fails" + ("" if w.db.backend == "sqlite" else " ON audit_log"))


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
    before = _snapshot(world)
    with pytest.raises(ConflictError) as e:
        world.core.decide("alice", r.id, again, "approve")
    assert e.value.reason == "ALREADY_DECIDED"
    assert _snapshot(world) == before
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
    before = _snapshot(world)
    with pytest.raises(PermissionDeniedError) as e:
        world.approve("carol", r)
    assert e.value.reason == "REQUESTER_CANNOT_APPROVE"
    assert _snapshot(world) == before
    world.approve("alice", r)
    signed = world.approve("bob", r)
    assert signed.state is State.SIGNED
    assert world.audit()[-1].details["approvers"] == ["alice", "bob"]


@pytest.mark.parametrize("officer", ["dave", "mallory"])
def test_non_member_cannot_approve(world: World, officer: str) -> None:
    """dave (a key, no policy) and mallory (no key) are refused NOT_AN_APPROVER."""
    r = world.create()
    env = world.envelope(officer, r, signer="dave")
    before = _snapshot(world)
    with pytest.raises(PermissionDeniedError) as e:
        world.core.decide(officer, r.id, env, "approve")
    assert e.value.reason == "NOT_AN_APPROVER"
    assert _snapshot(world) == before
    with pytest.raises(PermissionDeniedError):
        world.core.get_for_approver(officer, r.id)


def test_envelope_signed_by_another_officers_key(world: World) -> None:
    """alice's statement signed with bob's key does not verify as alice's."""
    r = world.create()
    before = _snapshot(world)
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("alice", r.id, world.envelope("alice", r, signer="bob"), "approve")
    assert e.value.reason == "BAD_APPROVAL_SIGNATURE"
    assert _snapshot(world) == before


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
    before = _snapshot(world)
    with pytest.raises(EnvelopeError) as e:
        world.core.decide("alice", r.id, env, "approve")
    assert e.value.reason == "STATEMENT_MISMATCH"
    assert _snapshot(world) == before


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
    before = _snapshot(world)
    with pytest.raises(ConflictError) as e:
        world.approve("carol", r)
    assert e.value.reason == "REQUEST_DENIED"
    assert _snapshot(world) == before
    assert world.token.calls == [] and world.get(r.id).signatures == ()


def test_denial_reason_too_long_is_refused(world: World) -> None:
    """A denial whose signed reason is over the limit is refused and changes nothing."""
    r = world.create()
    before = _snapshot(world)
    with pytest.raises(InvalidArgumentError):
        world.deny("bob", r, reason="x" * 1025)
    assert _snapshot(world) == before


# -- expiry and ttl --------------------------------------------------------------------


def test_expire_due_moves_pending_to_expired(world: World) -> None:
    """Past its TTL a request is EXPIRED by expire_due, with a request.expired entry."""
    r = world.create(ttl=10 * MIN)
    world.clock.advance(9 * MIN)
    assert world.core.expire_due() == 0
    world.clock.advance(MIN)
    assert world.core.expire_due() == 1
    assert world.get(r.id).state is State.EXPIRED
    entry = world.audit()[-1]
    assert (entry.event, entry.request_id, entry.actor) == ("request.expired", r.id, "signer")
    assert world.core.expire_due() == 0


def test_approve_after_expiry_is_refused(world: World) -> None:
    """An approval after the TTL is REQUEST_EXPIRED, even before expire_due ran."""
    r = world.create(ttl=10 * MIN)
    world.approve("alice", r)
    world.clock.advance(11 * MIN)
    with pytest.raises(ConflictError) as e:
        world.approve("bob", r)
    assert e.value.reason == "REQUEST_EXPIRED"
    assert world.get(r.id).state is State.EXPIRED
    assert world.events(r.id)[-1] == "request.expired"
    assert world.token.calls == []


def test_expiry_does_not_touch_approved_or_other_requests(world: World) -> None:
    """expire_due only expires PENDING requests past their own TTL."""
    short, long_, signed = world.create(ttl=5 * MIN), world.create(), world.create(ttl=5 * MIN)
    world.approve("alice", signed)
    world.approve("bob", signed)
    world.clock.advance(6 * MIN)
    assert world.core.expire_due() == 1
    assert [world.get(x.id).state for x in (short, long_, signed)] == [
        State.EXPIRED,
        State.PENDING,
        State.SIGNED,
    ]


@pytest.mark.parametrize(
    ("ttl", "lifetime"),
    [
        (None, dt.timedelta(hours=1)),
        (dt.timedelta(0), dt.timedelta(hours=1)),
        (dt.timedelta(seconds=1), dt.timedelta(seconds=1)),
        (10 * MIN, 10 * MIN),
        (dt.timedelta(hours=5), dt.timedelta(hours=1)),
        (dt.timedelta(days=365), dt.timedelta(hours=1)),
    ],
)
def test_ttl_capped_by_policy(
    world: World, ttl: dt.timedelta | None, lifetime: dt.timedelta
) -> None:
    """The TTL defaults to and is capped by the policy's max_ttl."""
    r = world.create(ttl=ttl)
    assert r.expires - r.created == lifetime
    assert world.get(r.id).expires == r.expires


# -- signing failures and recovery -----------------------------------------------------


def test_token_failure_fails_the_request(world: World) -> None:
    """A token error at signing makes the request FAILED with an audit entry and no signature."""
    r = world.create()
    world.approve("alice", r)
    world.token.fail = True
    failed = world.approve("bob", r)
    assert failed.state is State.FAILED and failed.signatures == ()
    assert "token" in failed.status_message
    assert world.events(r.id)[-2:] == ["request.quorum", "request.failed"]
    assert "unplugged" in world.audit()[-1].details["error"]
    world.token.fail = False
    assert world.core.recover() == 0
    assert world.get(r.id).state is State.FAILED


def _approved_then_crashed(world: World) -> Request:
    """A request left APPROVED by a crash between its quorum and its signature."""
    r = world.create()
    world.approve("alice", r)
    world.token.crash = True
    with pytest.raises(SimulatedCrash):
        world.approve("bob", r)
    world.token.crash = False
    return r


def test_recover_signs_approved_requests(world: World) -> None:
    """A request left APPROVED by a crash during signing is signed, once, by recover()."""
    r = _approved_then_crashed(world)
    assert world.get(r.id).state is State.APPROVED
    core = world.restart()
    assert world.get(r.id).state is State.APPROVED
    assert core.recover() == 1
    signed = world.get(r.id)
    assert signed.state is State.SIGNED and len(signed.signatures) == 1
    assert world.events(r.id).count("request.signed") == 1
    assert core.recover() == 0


def test_recover_honours_min_age(world: World) -> None:
    """recover(min_age) leaves requests approved more recently than min_age alone."""
    r = _approved_then_crashed(world)
    assert world.core.recover(min_age=5 * MIN) == 0
    world.clock.advance(5 * MIN)
    assert world.core.recover(min_age=5 * MIN) == 1
    assert world.get(r.id).state is State.SIGNED


def test_recover_refuses_when_policy_changed(world: World) -> None:
    """An APPROVED request whose approvers left the policy fails instead of signing."""
    r = _approved_then_crashed(world)
    old = world.policies["release"]
    world.policies["release"] = KeyPolicy(
        old.name, old.algorithm, ("carol", "dave", "bob"), 2, old.requesters, old.max_ttl
    )
    world.restart().recover()
    failed = world.get(r.id)
    assert failed.state is State.FAILED and failed.signatures == ()
    assert world.events(r.id)[-1] == "request.failed"


# -- idempotency -----------------------------------------------------------------------


def test_idempotent_create_returns_the_same_request(world: World) -> None:
    """A retried create with the same key and parameters returns the first request."""
    first = world.create(idempotency_key="build-42")
    world.clock.advance(MIN)
    again = world.create(idempotency_key="build-42")
    assert again.id == first.id and again.created == first.created
    assert len(world.requests()) == 1
    assert [e.event for e in world.audit()] == ["request.created"]


def test_idempotent_create_after_signing_returns_signed(world: World) -> None:
    """A retry after the request was signed returns it, signed; nothing is signed twice."""
    first = world.create(idempotency_key="build-42")
    world.approve("alice", first)
    world.approve("bob", first)
    again = world.create(idempotency_key="build-42")
    assert again.id == first.id and again.state is State.SIGNED
    assert len(world.token.calls) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"digests": [sha256_digest(b"build 2")]},
        {"context": {"repository": "org/other"}},
        {"digests": [sha256_digest(b"build 1", "renamed.bin")]},
    ],
    ids=["digest", "context", "artifact"],
)
def test_idempotency_key_reused_with_other_params(world: World, change: dict[str, Any]) -> None:
    """The same idempotency key with other parameters is AlreadyExistsError and changes nothing."""
    world.create(idempotency_key="build-42")
    before = _snapshot(world)
    with pytest.raises(AlreadyExistsError):
        world.create(idempotency_key="build-42", **change)
    assert _snapshot(world) == before


def test_idempotency_key_is_per_requester(world: World) -> None:
    """Two requesters using the same idempotency key get two requests."""
    a = world.create("ci", idempotency_key="k")
    b = world.create("carol", idempotency_key="k")
    assert a.id != b.id


# -- audit in the same transaction -----------------------------------------------------


def test_audit_failure_on_create_changes_nothing(world: World) -> None:
    """If the audit insert fails, create raises StoreError and no request exists."""
    world.create()
    _add_audit_trigger(world)
    before = _snapshot(world)
    with pytest.raises(StoreError):
        world.create(digests=[sha256_digest(b"other")])
    assert _snapshot(world) == before


def test_audit_failure_on_approve_changes_nothing(world: World) -> None:
    """If the approval's audit entry cannot be written, the approval is not recorded."""
    r = world.create()
    _add_audit_trigger(world)
    before = _snapshot(world)
    with pytest.raises(StoreError):
        world.approve("alice", r)
    assert _snapshot(world) == before
    _drop_audit_trigger(world)
    assert len(world.approve("alice", r).approvals) == 1


@pytest.mark.parametrize("event", ["request.quorum", "request.denied", "request.cancelled"])
def test_audit_failure_on_state_change_changes_nothing(world: World, event: str) -> None:
    """A failing quorum/denial/cancel audit entry rolls back the whole state change."""
    r = world.create()
    world.approve("alice", r)
    _add_audit_trigger(world, f"NEW.event = '{event}'")
    before = _snapshot(world)
    with pytest.raises(StoreError):
        if event == "request.cancelled":
            world.core.cancel("ci", r.id, "oops")
        elif event == "request.denied":
            world.deny("bob", r)
        else:
            world.approve("bob", r)
    assert _snapshot(world) == before
    assert world.token.calls == []


def test_audit_failure_on_signed_releases_no_signature(world: World) -> None:
    """If request.signed cannot be logged, no signature is stored; recover() finishes later."""
    r = world.create()
    world.approve("alice", r)
    _add_audit_trigger(world, "NEW.event = 'request.signed'")
    # The approval is durable; the call may report the outage or leave it to recovery.
    with contextlib.suppress(StoreError):
        world.approve("bob", r)
    stuck = world.get(r.id)
    assert stuck.state is State.APPROVED and stuck.signatures == ()
    assert "request.signed" not in world.events(r.id)
    _drop_audit_trigger(world)
    assert world.core.recover() == 1
    assert world.get(r.id).state is State.SIGNED


def test_audit_failure_on_expiry_keeps_pending(world: World) -> None:
    """If request.expired cannot be logged, expire_due raises and the request stays PENDING."""
    r = world.create(ttl=MIN)
    world.clock.advance(2 * MIN)
    _add_audit_trigger(world, "NEW.event = 'request.expired'")
    with pytest.raises(StoreError):
        world.core.expire_due()
    assert world.get(r.id).state is State.PENDING


def test_audit_log_is_append_only(world: World) -> None:
    """The store's triggers refuse updates and deletes of audit entries."""
    world.create()
    before = world.audit()
    for sql in ("DELETE FROM audit_log", "UPDATE audit_log SET actor = 'x'"):
        with pytest.raises((sqlite3.IntegrityError, psycopg.errors.RaiseException)):
            world.db.rows(sql)
    assert world.audit() == before


# -- cancel, lookups -------------------------------------------------------------------


def test_cancel_by_requester_only(world: World) -> None:
    """Only the requester cancels; a cancelled request cannot be approved."""
    r = world.create()
    with pytest.raises(PermissionDeniedError) as e:
        world.core.cancel("carol", r.id, "not mine")
    assert e.value.reason == "NOT_YOUR_REQUEST"
    cancelled = world.core.cancel("ci", r.id, "wrong build")
    assert cancelled.state is State.CANCELLED
    assert world.audit()[-1].details == {"reason": "wrong build"}
    with pytest.raises(ConflictError) as e2:
        world.approve("alice", r)
    assert e2.value.reason == "REQUEST_CANCELLED"
    with pytest.raises(ConflictError):
        world.core.cancel("ci", r.id, "again")


def test_signed_request_cannot_be_approved_again(world: World) -> None:
    """carol's approval after the quorum signed is REQUEST_SIGNED; one signature set."""
    r = world.create()
    world.approve("alice", r)
    world.approve("bob", r)
    with pytest.raises(ConflictError) as e:
        world.approve("carol", r)
    assert e.value.reason == "REQUEST_SIGNED"
    assert len(world.token.calls) == 1


@pytest.mark.parametrize(
    "rid", ["", "nope", "00000000-0000-4000-8000-000000000000", "' OR 1=1", "{id}\n", " {id}"]
)
def test_unknown_request_is_not_found(world: World, rid: str) -> None:
    """Lookups, decisions and cancels of an unknown id are NotFoundError."""
    r = world.create()
    rid = rid.format(id=r.id)
    env = world.envelope("alice", r)
    calls: list[Callable[[], object]] = [
        lambda: world.core.get_for_requester("ci", rid),
        lambda: world.core.get_for_approver("alice", rid),
        lambda: world.core.decide("alice", rid, env, "approve"),
        lambda: world.core.cancel("ci", rid, ""),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()


def test_requester_sees_only_own_requests(world: World) -> None:
    """get_for_requester refuses another requester's request."""
    r = world.create("ci")
    assert world.core.get_for_requester("ci", r.id).id == r.id
    with pytest.raises(PermissionDeniedError):
        world.core.get_for_requester("carol", r.id)


# -- bad input -------------------------------------------------------------------------

_D = sha256_digest(b"x")
_BAD_INPUT: list[tuple[str, dict[str, Any], type[SignerError], str]] = [
    (
        "short-sha256",
        {"digests": [Digest("sha256", b"\0" * 31, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "long-sha256",
        {"digests": [Digest("sha256", b"\0" * 33, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "sha384-32",
        {"digests": [Digest("sha384", b"\0" * 32, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "sha512-48",
        {"digests": [Digest("sha512", b"\0" * 48, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "empty-digest",
        {"digests": [Digest("sha256", b"", "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "second-bad",
        {"digests": [_D, Digest("sha256", b"\0", "b")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    ("md5", {"digests": [Digest("md5", b"\0" * 16, "a")]}, InvalidArgumentError, "UNKNOWN_HASH"),
    (
        "upper",
        {"digests": [Digest("SHA256", b"\0" * 32, "a")]},
        InvalidArgumentError,
        "UNKNOWN_HASH",
    ),
    ("sha1", {"digests": [Digest("sha1", b"\0" * 20, "a")]}, InvalidArgumentError, "UNKNOWN_HASH"),
    ("no-digests", {"digests": []}, InvalidArgumentError, "NO_DIGESTS"),
    ("too-many", {"digests": [_D] * 4}, TooLargeError, "TOO_MANY_DIGESTS"),
    (
        "artifact-empty",
        {"digests": [Digest("sha256", b"\0" * 32, "")]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    (
        "artifact-newline",
        {"digests": [Digest("sha256", b"\0" * 32, "a\nb")]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    (
        "artifact-long",
        {"digests": [Digest("sha256", b"\0" * 32, "a" * 513)]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    (
        "artifact-trailing-newline",
        {"digests": [Digest("sha256", b"\0" * 32, "app.tar\n")]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    ("context-key-newline", {"context": {"ref\n": "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    ("idem-newline", {"idempotency_key": "build-1\n"}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("context-key-space", {"context": {"a b": "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    ("context-key-empty", {"context": {"": "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    ("context-key-long", {"context": {"k" * 65: "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    (
        "context-value-control",
        {"context": {"ref": "main\x1b[31m"}},
        InvalidArgumentError,
        "BAD_CONTEXT",
    ),
    ("context-value-long", {"context": {"ref": "x" * 1025}}, InvalidArgumentError, "BAD_CONTEXT"),
    (
        "context-too-many",
        {"context": {f"k{i}": "v" for i in range(5)}},
        TooLargeError,
        "CONTEXT_TOO_LARGE",
    ),
    ("idem-space", {"idempotency_key": "a b"}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("idem-long", {"idempotency_key": "k" * 129}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("idem-unicode", {"idempotency_key": "ключ"}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("ttl-tiny", {"ttl": dt.timedelta(milliseconds=500)}, InvalidArgumentError, "BAD_TTL"),
    ("ttl-negative", {"ttl": -MIN}, InvalidArgumentError, "BAD_TTL"),
    ("unknown-key", {"key": "staging"}, NotFoundError, "UNKNOWN_KEY"),
    ("not-a-requester", {"who": "alice"}, PermissionDeniedError, "NOT_A_REQUESTER"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "reason"), [c[1:] for c in _BAD_INPUT], ids=[c[0] for c in _BAD_INPUT]
)
def test_bad_create_input_changes_nothing(
    world: World, kwargs: dict[str, Any], error: type[SignerError], reason: str
) -> None:
    """Each bad create input gets its error and reason, and nothing is written."""
    world.create(idempotency_key="a-b")
    before = _snapshot(world)
    with pytest.raises(error) as e:
        world.create(**kwargs)
    assert type(e.value) is error and e.value.reason == reason
    assert str(e.value)
    assert _snapshot(world) == before


def test_limits_allow_exactly_the_maximum(world: World) -> None:
    """max_digests and max_context_entries are inclusive limits."""
    r = world.create(
        digests=[sha256_digest(bytes([i])) for i in range(3)],
        context={f"k{i}": "v" * 1024 for i in range(4)},
        idempotency_key="k" * 128,
    )
    assert len(r.digests) == 3


def test_ed25519_key_cannot_sign_digests(world: World) -> None:
    """A request naming an Ed25519 key is refused KEY_CANNOT_SIGN_DIGESTS."""
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    spec = KeySpec("notes", ALGORITHMS["ed25519"], spki_key_id(pub), "")
    policy = KeyPolicy("notes", ALGORITHMS["ed25519"], ("alice", "bob"), 1, ("ci",), MIN * 60)
    core = Core(
        world.store,
        world.token,
        {**world.keys, "notes": spec},
        {**world.policies, "notes": policy},
        world.core.approver_keys,
        clock=world.clock,
    )
    with pytest.raises(InvalidArgumentError) as e:
        core.create("ci", "notes", [_D], {}, None)
    assert e.value.reason == "KEY_CANNOT_SIGN_DIGESTS"
    assert world.requests() == []


@pytest.mark.parametrize(
    "envelope",
    [b"", b"{", b"[]", b'{"payload":"","payloadType":"x","signatures":[]}', b"\xff" * 10],
    ids=["empty", "truncated", "list", "no-sigs", "binary"],
)
def test_malformed_envelope_changes_nothing(world: World, envelope: bytes) -> None:
    """A malformed envelope is an EnvelopeError and records nothing."""
    r = world.create()
    before = _snapshot(world)
    with pytest.raises(EnvelopeError):
        world.core.decide("alice", r.id, envelope, "approve")
    assert _snapshot(world) == before


def test_record_rejection_keeps_only_valid_request_ids(world: World) -> None:
    """A rejection's request id is logged only when it is a well-formed id."""
    r = world.create()
    world.core.record_rejection("x", "/m", NotFoundError("gone"), r.id)
    world.core.record_rejection("x", "/m", NotFoundError("gone"), "junk\n")
    world.core.record_rejection("x", "/m", NotFoundError("gone"), r.id + "\n")
    last = world.audit()[-3:]
    assert [e.request_id for e in last] == [r.id, "", ""]
    assert last[0].details == {"method": "/m", "reason": "NOT_FOUND", "message": "gone"}


@pytest.mark.parametrize("form", ["utf-16", "nested", "int-reason", "float-digest"])
def test_odd_but_signed_envelopes_are_envelope_errors(world: World, form: str) -> None:
    """A validly signed but odd envelope (UTF-16, deep nesting, wrong types) is an EnvelopeError."""
    r = world.create()
    key = world.officers["bob"]
    if form == "utf-16":
        env = world.envelope("bob", r, decision="deny", reason="no").decode().encode("utf-16")
    elif form == "nested":
        env = b"[" * 100_000 + b"]" * 100_000
    else:
        d = Statement.for_request(r, "deny", "bob", world.clock(), "no").as_dict()
        if form == "int-reason":
            d["reason"] = 5
        else:
            d["digests"][0]["artifact"] = 1.5
        payload = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        sig = key.sign(pae(PAYLOAD_TYPE, payload))
        env = json.dumps(
            {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(sig).decode()}],
            }
        ).encode()
    before = _snapshot(world)
    with pytest.raises(EnvelopeError):
        world.core.decide("bob", r.id, env, "deny")
    assert _snapshot(world) == before


def test_a_waiter_sees_a_change_it_was_never_told_of(world: World) -> None:
    """A decision made elsewhere whose notification was lost (another replica, its
    database listener reconnecting) still reaches a waiter, within seconds."""

    r = world.create()
    world.approve("alice", r)
    got: list[Request] = []
    parked = threading.Event()
    notifier = world.core.notifier
    wait_for = notifier.wait_for

    def parking(request_id: str, since: int, timeout: float) -> tuple[int, bool]:
        parked.set()
        return wait_for(request_id, since, timeout)

    notifier.wait_for = parking  # type: ignore[method-assign]
    waiter = threading.Thread(
        target=lambda: got.append(world.core.wait("ci", r.id, dt.timedelta(minutes=10)))
    )
    waiter.start()
    assert parked.wait(60), "the waiter never waited"  # it read the request PENDING
    elsewhere = world._core()  # same store, a notifier of its own: the waiter hears nothing
    elsewhere.decide("bob", r.id, world.envelope("bob", r), "approve")
    waiter.join(timeout=30)
    assert not waiter.is_alive() and got[0].state is State.SIGNED


def test_each_transition_is_one_event_on_the_hook_after_its_audit_entry(world: World) -> None:
    """Subscribers hear one typed event per transition, in the audit log's order and after
    the entry is written; one that raises is skipped and blocks neither the others nor
    the transition."""
    heard: list[tuple[str, str, bool, int]] = []

    def broken(event: Event) -> None:
        raise RuntimeError("a subscriber that fails")

    def recorder(event: Event) -> None:
        written = sum(e.event == event.kind for e in world.audit())
        heard.append((event.kind, event.request_id, event.terminal, written))

    world.core.events.subscribe(broken)
    world.core.events.subscribe(recorder)
    signed = world.create()
    world.approve("alice", signed)
    assert world.approve("bob", signed).state is State.SIGNED
    denied = world.create()
    world.deny("alice", denied)
    kinds = [(k, rid, terminal) for k, rid, terminal, _ in heard]
    assert kinds == [
        (Kind.CREATED, signed.id, False),
        (Kind.APPROVED, signed.id, False),
        (Kind.APPROVED, signed.id, False),
        (Kind.QUORUM, signed.id, False),
        (Kind.SIGNED, signed.id, True),
        (Kind.CREATED, denied.id, False),
        (Kind.DENIED, denied.id, True),
    ]
    assert all(written >= 1 for *_, written in heard)  # its entry was there already
    assert [e.event for e in world.audit() if e.request_id == signed.id] == [
        k for k, rid, _ in kinds if rid == signed.id
    ]
