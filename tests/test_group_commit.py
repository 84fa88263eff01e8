"""Group commit: concurrent transactions share one commit, one fsync and one checkpoint.

Invariant 3 holds for each member: its call returns only once its own entry is
durable (visible to another connection) and covered by a signed checkpoint; a
failed commit or checkpoint fails every member and writes nothing; a member's
refusal undoes only its own writes; a database error in one member undoes the
whole group. Runs on both backends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit.checkpoint import Checkpointer
from signer.errors import ConflictError, StoreError, TokenError
from signer.store.base import Tx
from testbed.commands import wait_until
from tests.core_world import add_audit_trigger, drop_audit_trigger
from tests.fakes import AUDIT_ORIGIN, START, World

MEMBERS = 16


def _checkpointer(w: World, sign: Callable[[bytes], bytes]) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    w.checkpointer = Checkpointer(AUDIT_ORIGIN, key.public_key(), lambda m: sign(m) or key.sign(m))
    w.core = w._core()


def _in_threads(n: int, fn: Callable[[int], object]) -> list[object]:
    results: list[object] = [None] * n

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return results


def _entry_rows(w: World) -> list[tuple[int, str]]:
    """(index, actor) of every entry, read through a connection of its own."""
    return [(int(i), str(a)) for i, a in w.db.rows("SELECT idx, actor FROM audit_log ORDER BY idx")]


def _checkpoint_sizes(w: World) -> list[int]:
    return [int(s) for (s,) in w.db.rows("SELECT size FROM checkpoints ORDER BY size")]


def test_concurrent_appends_share_one_commit_and_one_checkpoint(world: World) -> None:
    """16 appends arriving while a commit is under way make one group: one more commit."""
    first = threading.Event()

    def slow_first_signature(_: bytes) -> bytes:
        if not first.is_set():
            # Hold the first commit until the other 15 are behind it: the next group's
            # leader waiting for the store, 14 members queued to join it.
            first.set()
            wait_until(lambda: world.core.group.queued() == MEMBERS - 2, timeout=60, step=0.01)
        return b""

    _checkpointer(world, slow_first_signature)
    before = world.core.group.commits

    def append(i: int) -> tuple[int, bool, bool]:
        if i:
            assert first.wait(60), "the first commit never started"
        entry = world.core.record("test.event", f"t{i}", {"n": i})
        # Checked the moment the call returns, through another connection:
        durable = (entry.index, f"t{i}") in _entry_rows(world)
        covered = any(size > entry.index for size in _checkpoint_sizes(world))
        return entry.index, durable, covered

    results = _in_threads(MEMBERS, append)
    returned = [r for r in results if isinstance(r, tuple)]
    assert len(returned) == MEMBERS, results
    assert all(durable and covered for _, durable, covered in returned)
    assert sorted(index for index, _, _ in returned) == list(range(MEMBERS))
    assert world.core.group.commits - before == 2  # the first alone, then the other 15
    assert _checkpoint_sizes(world) == [1, MEMBERS]


def _group_of(world: World, bodies: list[Callable[[Tx], object]]) -> list[object]:
    """Run `bodies` as the members of one group: the first leads, holding its
    transaction open until all the others have queued to join it."""
    results: list[object] = [None] * len(bodies)
    started = threading.Event()

    def member(i: int) -> None:
        if i:
            assert started.wait(60), "the leader never opened its transaction"
        try:
            with world.core.group.transaction() as tx:
                if i == 0:
                    started.set()
                    wait_until(
                        lambda: world.core.group.queued() == len(bodies) - 1, timeout=60, step=0.01
                    )
                results[i] = bodies[i](tx)
        except BaseException as e:
            results[i] = e

    _in_threads(len(bodies), member)
    return results


def _append(actor: str) -> Callable[[Tx], object]:
    def body(tx: Tx) -> object:
        return tx.append_audit(START, "test.event", actor, "", "", {}).index

    return body


def _append_then_refuse(actor: str) -> Callable[[Tx], object]:
    def body(tx: Tx) -> object:
        tx.append_audit(START, "test.event", actor, "", "", {})
        raise ConflictError("refused after writing", reason="TEST")

    return body


def test_a_refused_member_undoes_only_its_own_writes(world: World) -> None:
    """A member's refusal rolls back its savepoint; the others' entries commit, once."""
    before = world.core.group.commits
    results = _group_of(world, [_append("a"), _append_then_refuse("b"), _append("c")])
    assert results[0] == 0 and results[2] == 1
    assert isinstance(results[1], ConflictError)
    assert world.core.group.commits - before == 1
    assert _entry_rows(world) == [(0, "a"), (1, "c")]
    assert _checkpoint_sizes(world) == [2]


def test_a_failed_checkpoint_fails_every_member_and_writes_nothing(world: World) -> None:
    """No member returns success when the group's checkpoint cannot be signed."""

    def broken(_: bytes) -> bytes:
        raise TokenError("the token is gone")

    _checkpointer(world, broken)
    results = _group_of(world, [_append("a"), _append("b"), _append("c")])
    assert isinstance(results[0], TokenError)
    assert all(isinstance(r, StoreError) for r in results[1:]), results
    assert "not committed" in str(results[1])
    assert _entry_rows(world) == [] and _checkpoint_sizes(world) == []


def test_a_database_error_in_one_member_rolls_back_the_whole_group(world: World) -> None:
    """An audit write that fails (disk full) fails the group: nothing of it is written."""
    add_audit_trigger(world, "NEW.actor = 'b'")
    results = _group_of(world, [_append("a"), _append("b"), _append("c")])
    assert isinstance(results[1], StoreError) and "disk full" in str(results[1])
    assert isinstance(results[0], StoreError) and isinstance(results[2], StoreError)
    assert _entry_rows(world) == [] and _checkpoint_sizes(world) == []
    drop_audit_trigger(world)
    assert world.core.record("test.event", "after", {}).index == 0  # and the store works on


def test_a_failed_begin_fails_the_members_waiting_for_it(world: World) -> None:
    """When the leader cannot open the transaction, nobody runs a body or succeeds."""
    world.store.close()
    with pytest.raises(StoreError):
        world.core.record("test.event", "a", {})
    world.restart()
    assert _entry_rows(world) == []


def test_a_transaction_inside_a_transaction_is_refused(world: World) -> None:
    """A body that opens another transaction would wait for itself: refused at once."""
    with (
        world.core.group.transaction(),
        pytest.raises(RuntimeError, match="opened another transaction"),
        world.core.group.transaction(),
    ):
        pass
    assert world.core.record("test.event", "a", {}).index == 0


def test_a_member_whose_savepoint_fails_fails_the_group_without_hanging(world: World) -> None:
    """A joiner that cannot even mark its savepoint hands the turn back; all fail."""
    with world.store.transaction() as tx:
        backend = type(tx)
    real = backend.savepoint
    calls = {"n": 0}

    def savepoint(tx: Tx) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first joiner's
            raise StoreError("the connection is gone")
        real(tx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend, "savepoint", savepoint)
        results = _group_of(world, [_append("a"), _append("b"), _append("c")])
    assert all(isinstance(r, StoreError) for r in results), results
    assert "the connection is gone" in str(results[1])
    assert _entry_rows(world) == []
