"""The core's side of online policy decisions (docs/architecture.md §11), on both stores with a fake
token and clock: an approval grown too old counts for nothing but never blocks the
others (its officer approves again); decision rows whoever owns the database adds
count for nothing; no request is made under a version already replaced; the requests a
version ends are told to their waiters."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

import pytest

from signer.core import policy_log
from signer.core.events import Event, Kind
from signer.errors import ConflictError
from signer.policy_chain import Version, sign_approval
from signer.policy_denial import PolicyDenial, sign_denial
from signer.store.base import AuditFilter
from tests.fakes import World

OFFICERS = ("alice", "bob", "carol")


class _Head:
    """The token's record, in memory."""

    def __init__(self, version: Version) -> None:
        self.recorded = (version.number, version.sha256)

    def require(self, chain: list[Version]) -> None:
        pass

    def record(self, version: Version) -> None:
        self.recorded = (version.number, version.sha256)

    def lift(self, key_name: str, index: int) -> None:
        pass


def _version_1(world: World) -> tuple[Version, _Head]:
    keys = {n: k.public_key().policy_value() for n, k in world.officers.items()}
    document = {
        "keys": {"release": world.policies["release"].as_dict()},
        "identities": {"ci": ["requester"], **{o: ["approver"] for o in world.officers}},
        "approver_keys": keys,
        "access": {},
        "audit_key": "audit",
        "policy": {"officers": list(OFFICERS), "threshold": 2},
    }
    now = world.clock()
    v1 = Version(1, document, "", ())
    approvals = [sign_approval(v1, n, world.officers[n], now) for n in ("alice", "bob")]
    with world.core._tx() as tx:
        policy_log.adopt(tx, None, document, approvals, "admin", now)
    head = _Head(v1)
    world.core.policy_head = head
    return v1, head


def _propose(world: World, v1: Version, **rule: Any) -> tuple[int, Version]:
    document = copy.deepcopy(dict(v1.document))
    document["keys"]["release"].update(rule)
    v2 = Version(2, document, v1.sha256, ())
    with world.core._tx() as tx:
        entry = tx.append_audit(
            world.clock(),
            policy_log.PROPOSED,
            "admin",
            "",
            "",
            {"version": 2, "sha256": v2.sha256, "previous_sha256": v1.sha256, "document": document},
        )
    return entry.index, v2


def _versions(world: World) -> list[int]:
    with world.core._tx() as tx:
        return [v.number for v, _, _ in policy_log.walk(tx)]


def _approve(world: World, officer: str, index: int, version: Version, **kw: Any) -> bool:
    when = kw.get("at", world.clock())
    envelope = sign_approval(version, officer, world.officers[officer], when)
    return world.core.approve_policy(officer, index, envelope).adopted


def test_an_old_approval_counts_for_nothing_and_blocks_nothing(world: World) -> None:
    """carol's approval, issued a minute short of 30 days ago, is taken, then grows too
    old: alice's approval then adopts nothing (one approval counts), and carol's fresh
    approval replaces hers and adopts the version."""
    v1, _ = _version_1(world)
    index, v2 = _propose(world, v1, max_ttl_seconds=7200)
    old = world.clock() - dt.timedelta(days=30) + dt.timedelta(minutes=1)
    assert not _approve(world, "carol", index, v2, at=old)
    world.clock.advance(dt.timedelta(minutes=5))
    assert not _approve(world, "alice", index, v2)
    assert _versions(world) == [1]
    assert _approve(world, "carol", index, v2)
    assert _versions(world) == [1, 2]


def test_decision_rows_added_in_the_database_count_for_nothing(world: World) -> None:
    """Rows that say bob and carol denied (with no valid envelope) and that bob approved
    (with alice's signature) neither reject the proposal nor count: it stays open with
    no decision, and alice's and bob's own approvals adopt it."""
    v1, _ = _version_1(world)
    index, v2 = _propose(world, v1, threshold=3)
    now = world.clock()
    forged = sign_approval(v2, "bob", world.officers["alice"], now)
    junk = base64.b64encode(b"{}").decode()
    with world.core._tx() as tx:
        for officer in ("bob", "carol"):
            details = {"proposal": index, "reason": "no", "envelope": junk, "rejected": True}
            tx.append_audit(now, "policy.denied", officer, "", "", details)
        details = {"proposal": index, "envelope": base64.b64encode(forged).decode()}
        tx.append_audit(now, "policy.approved", "bob", "", "", details)
    (listed,) = world.core.policy_proposals()
    assert listed.index == index and not listed.approvals and not listed.denials
    assert not _approve(world, "alice", index, v2)
    assert _approve(world, "bob", index, v2)


def test_a_denial_signed_by_its_officer_counts_once(world: World) -> None:
    """bob's signed denial is recorded once (sent twice), carol's rejects the proposal
    (one officer left of a threshold of two); an approval after it is refused."""
    v1, _ = _version_1(world)
    index, v2 = _propose(world, v1, threshold=3)

    def deny(officer: str) -> bool:
        statement = PolicyDenial(2, v2.sha256, v1.sha256, officer, "no", world.clock())
        envelope = sign_denial(statement, world.officers[officer])
        return world.core.deny_policy(officer, index, envelope).rejected

    assert not deny("bob") and not deny("bob")
    assert deny("carol")
    with pytest.raises(ConflictError, match="was rejected by bob, carol"):
        _approve(world, "alice", index, v2)
    with world.core._tx() as tx:
        denied = tx.list_audit(AuditFilter(event="policy.denied"), -1, 10)
    assert [e.actor for e in denied] == ["bob", "carol"]


def test_no_request_is_made_under_a_version_already_replaced(world: World) -> None:
    """Version 2 adopted (the token records it) while this core still enforces version 1,
    as a replica does for up to a second: a new request is refused POLICY_SUPERSEDED and
    nothing is written, however stale the cached read."""
    v1, head = _version_1(world)
    loaded = head.recorded
    world.core.superseded_now = lambda: None if head.recorded == loaded else "superseded"
    index, v2 = _propose(world, v1, requesters=["carol"])
    _approve(world, "alice", index, v2)
    assert _approve(world, "bob", index, v2)
    before = len(world.audit())
    with pytest.raises(ConflictError) as refused:
        world.create()
    assert refused.value.reason == "POLICY_SUPERSEDED"
    assert len(world.audit()) == before and not world.requests()


def test_the_requests_a_version_ends_are_told(world: World) -> None:
    """A pending request on the key whose rule version 2 changes is cancelled in the
    adoption's transaction, and its change is told (waiters wake at once)."""
    v1, _ = _version_1(world)
    told: list[Event] = []
    world.core.events.subscribe(told.append)
    waiting = world.create()
    index, v2 = _propose(world, v1, max_ttl_seconds=7200)
    _approve(world, "alice", index, v2)
    assert _approve(world, "bob", index, v2)
    assert world.get(waiting.id).state.value == "CANCELLED"
    assert [(e.kind, e.request_id) for e in told if e.request_id][-1] == (
        Kind.CANCELLED,
        waiting.id,
    )


def test_an_officer_who_approved_cannot_deny(world: World) -> None:
    """carol's approval, grown too old, still stands as her decision: her denial is
    refused (the offline verifier refuses one officer's two decisions too)."""
    v1, _ = _version_1(world)
    index, v2 = _propose(world, v1, threshold=3)
    old = world.clock() - dt.timedelta(days=30) + dt.timedelta(minutes=1)
    assert not _approve(world, "carol", index, v2, at=old)
    world.clock.advance(dt.timedelta(minutes=5))
    statement = PolicyDenial(2, v2.sha256, v1.sha256, "carol", "no", world.clock())
    with pytest.raises(ConflictError) as refused:
        world.core.deny_policy("carol", index, sign_denial(statement, world.officers["carol"]))
    assert refused.value.reason == "POLICY_APPROVED"
