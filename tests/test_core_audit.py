"""The signing core through fakes: every state change and its audit entry are one transaction.

If the audit insert fails (a trigger plays the full disk, tests/core_world.py),
the state change is rolled back and nothing is signed; the audit log itself is
append-only.
"""

from __future__ import annotations

import contextlib
import sqlite3

import psycopg
import pytest

from signer.errors import (
    StoreError,
)
from signer.model import State
from tests.core_world import MIN, add_audit_trigger, drop_audit_trigger, snapshot
from tests.core_world import world as world  # a fixture
from tests.fakes import World, sha256_digest


def test_audit_failure_on_create_changes_nothing(world: World) -> None:
    """If the audit insert fails, create raises StoreError and no request exists."""
    world.create()
    add_audit_trigger(world)
    before = snapshot(world)
    with pytest.raises(StoreError):
        world.create(digests=[sha256_digest(b"other")])
    assert snapshot(world) == before


def test_audit_failure_on_approve_changes_nothing(world: World) -> None:
    """If the approval's audit entry cannot be written, the approval is not recorded."""
    r = world.create()
    add_audit_trigger(world)
    before = snapshot(world)
    with pytest.raises(StoreError):
        world.approve("alice", r)
    assert snapshot(world) == before
    drop_audit_trigger(world)
    assert len(world.approve("alice", r).approvals) == 1


@pytest.mark.parametrize("event", ["request.quorum", "request.denied", "request.cancelled"])
def test_audit_failure_on_state_change_changes_nothing(world: World, event: str) -> None:
    """A failing quorum/denial/cancel audit entry rolls back the whole state change."""
    r = world.create()
    world.approve("alice", r)
    add_audit_trigger(world, f"NEW.event = '{event}'")
    before = snapshot(world)
    with pytest.raises(StoreError):
        if event == "request.cancelled":
            world.core.cancel("ci", r.id, "oops")
        elif event == "request.denied":
            world.deny("bob", r)
        else:
            world.approve("bob", r)
    assert snapshot(world) == before
    assert world.token.calls == []


def test_audit_failure_on_signed_releases_no_signature(world: World) -> None:
    """If request.signed cannot be logged, no signature is stored; recover() finishes later."""
    r = world.create()
    world.approve("alice", r)
    add_audit_trigger(world, "NEW.event = 'request.signed'")
    # The approval is durable; the call may report the outage or leave it to recovery.
    with contextlib.suppress(StoreError):
        world.approve("bob", r)
    stuck = world.get(r.id)
    assert stuck.state is State.APPROVED and stuck.signatures == ()
    assert "request.signed" not in world.events(r.id)
    drop_audit_trigger(world)
    assert world.core.recover() == 1
    assert world.get(r.id).state is State.SIGNED


def test_audit_failure_on_expiry_keeps_pending(world: World) -> None:
    """If request.expired cannot be logged, expire_due raises and the request stays PENDING."""
    r = world.create(ttl=MIN)
    world.clock.advance(2 * MIN)
    add_audit_trigger(world, "NEW.event = 'request.expired'")
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
