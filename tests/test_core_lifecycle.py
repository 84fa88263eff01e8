"""The signing core through fakes: expiry, signing failures and recovery, idempotency, lookups.

Requests expire past their TTL, fail (or wait for recover()) when the token
fails or crashes, are created once per idempotency key, are cancelled only by
their requester and read only by those allowed; waiters and event subscribers
hear every transition (tests/core_world.py).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest

from signer.core.events import Event, Kind
from signer.core.policy import KeyPolicy
from signer.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from signer.model import Request, State
from tests.core_world import MIN, snapshot
from tests.core_world import world as world  # a fixture
from tests.fakes import SimulatedCrash, World, sha256_digest

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
    before = snapshot(world)
    with pytest.raises(AlreadyExistsError):
        world.create(idempotency_key="build-42", **change)
    assert snapshot(world) == before


def test_idempotency_key_is_per_requester(world: World) -> None:
    """Two requesters using the same idempotency key get two requests."""
    a = world.create("ci", idempotency_key="k")
    b = world.create("carol", idempotency_key="k")
    assert a.id != b.id


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
