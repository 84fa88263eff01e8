"""The audit key signs only trees that extend the tree head kept beside it (invariant 4).

In process, over a real store on both backends, with the head in memory where
the server keeps it in the token (`MemoryHeads`): a database owner who
truncates or rewrites the stored log (triggers dropped, as in tests/tamper.py) gets
every later checkpoint refused with a named reason and nothing written; a
checkpoint's note reaches the database only after the commit of the entries it
covers, so a commit that fails leaves no note behind and needs no slack; a
failed release leaves the entries durable for the next checkpoint; one head
update per commit; the head starts from the verified stored checkpoint; a
reset is recorded in the log it accepts. The token-backed store of the head
is checked on a real SoftHSM token in a subprocess.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from signer.audit import merkle
from signer.audit.head import MISMATCH, ROLLBACK, MemoryHeads, TreeHead
from signer.errors import AuditHeadError, ConflictError, StoreError
from signer.store.postgres import _LOCK
from signer.store.sql import SqlTx
from testbed.commands import run
from testbed.env import Db, Env
from tests.fakes import START, World, make_world
from tests.tamper import edit_actor, rewrite_log
from tests.test_group_commit import _append, _group_of


class Refusals:
    """The checkpointer's observer: the reasons it was told of."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def audit_head_refused(self, reason: str) -> None:
        self.reasons.append(reason)


@pytest.fixture
def world(tmp_path: Path, new_db: Callable[[], Db]) -> Iterator[World]:
    w = make_world(tmp_path, db=new_db())
    assert w.checkpointer is not None
    w.checkpointer.observer = Refusals()
    yield w
    w.close()


def _heads(w: World) -> MemoryHeads:
    assert w.checkpointer is not None and isinstance(w.checkpointer.heads, MemoryHeads)
    return w.checkpointer.heads


def _refusals(w: World) -> list[str]:
    assert w.checkpointer is not None and isinstance(w.checkpointer.observer, Refusals)
    return w.checkpointer.observer.reasons


def _tree(w: World) -> TreeHead:
    with w.store.transaction() as tx:
        size = tx.tree_size()
        return TreeHead(size, merkle.root(tx, size))


def _counts(w: World) -> tuple[int, int]:
    """(entries, checkpoints) in the database."""
    return (
        int(w.db.rows("SELECT count(*) FROM audit_log")[0][0]),
        int(w.db.rows("SELECT count(*) FROM checkpoints")[0][0]),
    )


def _record(w: World, n: int, actor: str = "t") -> None:
    for i in range(n):
        w.core.record("test.event", f"{actor}{i}", {"n": i})


def _tampered(w: World, edit: Callable[[Any], Any], *, rebuild: bool = False) -> None:
    """The database owner rewrites the stored log (see tests/tamper.py rewrite_log)."""
    rewrite_log(Env(Path("."), 0, w.db), edit, rebuild=rebuild)


# -- the head follows the log, one update per commit ------------------------------------


def test_each_commit_moves_the_head_once_to_the_tree_it_checkpoints(world: World) -> None:
    """Three members of one group commit: one head write; then one per later commit."""
    writes = _heads(world).writes
    commits = world.core.group.commits
    results = _group_of(world, [_append("a"), _append("b"), _append("c")])
    assert set(results) == {0, 1, 2}  # the joiners run in the order they queued
    assert world.core.group.commits - commits == 1
    assert _heads(world).writes - writes == 1
    _record(world, 2)
    assert world.core.group.commits - commits == 3
    assert _heads(world).writes - writes == 3
    assert _heads(world).head == _tree(world) and _tree(world).size == 5
    assert _refusals(world) == []


# -- a database owner without the token -------------------------------------------------


def test_a_truncated_log_is_refused_as_a_rollback_and_nothing_is_written(world: World) -> None:
    """The last entries deleted: every appending call fails AUDIT_ROLLBACK, writing nothing."""
    _record(world, 6)
    head = _heads(world).head
    _tampered(world, lambda rows: rows[:-2])
    before = _counts(world)
    with pytest.raises(AuditHeadError, match="rolled back or truncated") as e:
        world.core.record("test.event", "after", {})
    assert e.value.reason == ROLLBACK
    with pytest.raises(AuditHeadError):
        world.create()
    assert _counts(world) == before and world.requests() == []
    assert _heads(world).head == head
    assert _refusals(world) == [ROLLBACK, ROLLBACK]


def test_a_truncated_log_with_its_later_notes_copied_back_is_still_refused(
    world: World,
) -> None:
    """Truncated, with the real later notes put back: the next append still fails."""
    _record(world, 6)
    notes = world.db.rows("SELECT size, note FROM checkpoints ORDER BY size")
    _tampered(world, lambda rows: rows[:-2])
    kept = {int(size) for (size,) in world.db.rows("SELECT size FROM checkpoints")}
    for size, note in notes:
        if int(size) not in kept:
            world.db.rows("INSERT INTO checkpoints (size, note) VALUES (?, ?)", size, note)
    with pytest.raises(AuditHeadError) as e:
        world.core.record("test.event", "after", {})
    assert e.value.reason == ROLLBACK
    assert _refusals(world) == [ROLLBACK]


def test_rewritten_history_is_refused_as_a_mismatch(world: World) -> None:
    """An entry edited and the tree rebuilt to match: AUDIT_HEAD_MISMATCH, nothing written."""
    _record(world, 6)
    _tampered(world, edit_actor(2), rebuild=True)
    before = _counts(world)
    with pytest.raises(AuditHeadError, match="entries before 6 were changed") as e:
        world.core.record("test.event", "after", {})
    assert e.value.reason == MISMATCH
    assert _counts(world) == before
    assert _refusals(world) == [MISMATCH]


def test_every_member_of_a_refused_group_hears_the_reason(world: World) -> None:
    """A group whose tree the audit key refuses: each member fails with AUDIT_ROLLBACK."""
    _record(world, 6)
    _tampered(world, lambda rows: rows[:-4])  # 2 left: with the group's 3, still short of 6
    results = _group_of(world, [_append("a"), _append("b"), _append("c")])
    assert all(isinstance(r, StoreError) and r.reason == ROLLBACK for r in results), results
    assert "rolled back or truncated" in str(results[1])
    assert _refusals(world) == [ROLLBACK]


def test_the_same_size_with_another_root_is_an_edit_or_fork(world: World) -> None:
    """A stored log of the head's size but other entries: the status names a fork or edit."""
    _record(world, 4)
    _tampered(world, edit_actor(3), rebuild=True)
    assert world.checkpointer is not None
    with world.store.transaction() as tx:
        status = world.checkpointer.status(tx)
    assert status.problem is not None and status.problem.reason == MISMATCH
    assert "edited or forked" in str(status.problem)
    assert status.head == _heads(world).head and status.tree.size == 4


# -- the order of the steps: no note before the commit, no slack after a crash -----------


def _fail_commit(w: World) -> None:
    """Make the COMMIT (not the insert) of a transaction appending a 'doomed' entry fail."""
    if w.db.backend == "sqlite":
        w.db.rows("CREATE TABLE doom_parent (id INTEGER PRIMARY KEY)")
        w.db.rows(
            "CREATE TABLE doom_child (p INTEGER REFERENCES doom_parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        w.db.rows(
            "CREATE TRIGGER doom AFTER INSERT ON audit_log WHEN NEW.actor = 'doomed' "
            "BEGIN INSERT INTO doom_child VALUES (42); END"
        )
        return
    w.db.rows(
        "CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'commit refused'; END $$"
    )
    w.db.rows(
        "CREATE CONSTRAINT TRIGGER doom AFTER INSERT ON audit_log DEFERRABLE INITIALLY "
        "DEFERRED FOR EACH ROW WHEN (NEW.actor = 'doomed') EXECUTE FUNCTION doom()"
    )


def test_a_failed_commit_hands_no_note_to_the_database_and_needs_no_slack(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT fails after the note was signed: the note never reached the database,
    the head did not move, and the next call checkpoints as if nothing had happened."""
    _record(world, 3)
    head, writes = _heads(world).head, _heads(world).writes
    stored: list[int] = []
    real = SqlTx.put_checkpoint

    def put_checkpoint(tx: SqlTx, size: int, note: str) -> None:
        stored.append(size)
        real(tx, size, note)

    monkeypatch.setattr(SqlTx, "put_checkpoint", put_checkpoint)
    _fail_commit(world)
    with pytest.raises(StoreError):
        world.core.record("test.event", "doomed", {})
    assert stored == []  # signed in memory only: a hostile database saw no note for size 4
    assert _counts(world) == (3, 3)
    if world.db.backend == "postgresql":  # and the failed commit left no lock held
        assert world.db.rows("SELECT pg_try_advisory_xact_lock(?)", _LOCK) == [(True,)]
    assert (_heads(world).head, _heads(world).writes) == (head, writes)

    world.core.record("test.event", "next", {})
    assert stored == [4] and _counts(world) == (4, 4)
    assert _heads(world).head == _tree(world)
    assert _refusals(world) == []


def test_a_failed_release_leaves_the_entries_for_the_next_checkpoint(world: World) -> None:
    """The checkpoint cannot be stored after the commit: the callers hear so, the entries
    stay durable, and the next checkpoint covers them without any refusal."""
    _record(world, 2)
    if world.db.backend == "sqlite":
        world.db.rows(
            "CREATE TRIGGER no_cp BEFORE INSERT ON checkpoints "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    else:
        world.db.rows(
            "CREATE FUNCTION no_cp() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'disk full'; END $$"
        )
        world.db.rows(
            "CREATE TRIGGER no_cp BEFORE INSERT ON checkpoints FOR EACH ROW "
            "EXECUTE FUNCTION no_cp()"
        )
    results = _group_of(world, [_append("a"), _append("b")])
    assert isinstance(results[0], StoreError) and "disk full" in str(results[0])
    assert isinstance(results[1], StoreError)
    assert "the change was recorded, but the checkpoint covering it was not" in str(results[1])
    assert _counts(world) == (4, 2)  # durable, not yet covered
    assert _heads(world).head == _tree(world)  # the head moved before the note was stored
    on = "" if world.db.backend == "sqlite" else " ON checkpoints"
    world.db.rows(f"DROP TRIGGER no_cp{on}")

    world.core.record("test.event", "next", {})
    assert _counts(world) == (5, 3)
    assert _heads(world).head == _tree(world)
    assert _refusals(world) == []


def test_the_release_refuses_a_tree_changed_since_its_commit(world: World) -> None:
    """Step 3 checks the stored tree again: a root that no longer matches releases nothing."""
    _record(world, 3)
    assert world.checkpointer is not None
    head = _heads(world).head
    with world.store.transaction() as tx:
        with pytest.raises(AuditHeadError, match="changed between the commit") as e:
            world.checkpointer.release(tx, TreeHead(3, b"\x07" * 32), "a note")
        assert e.value.reason == MISMATCH
    assert _heads(world).head == head and _counts(world) == (3, 3)


# -- first start, status and reset -------------------------------------------------------


def test_a_token_without_a_head_starts_from_the_verified_stored_checkpoint(world: World) -> None:
    """No head yet: it is taken from the latest stored checkpoint, then moved on."""
    _record(world, 3)
    assert world.checkpointer is not None
    fresh = MemoryHeads()
    world.checkpointer.heads = fresh
    stored = _tree(world)
    world.core.record("test.event", "after", {})
    assert fresh.writes == 2  # initialised at size 3, then moved to 4
    assert fresh.head == _tree(world) and fresh.head.size == stored.size + 1


def test_a_token_without_a_head_refuses_a_stored_log_its_checkpoint_does_not_match(
    world: World,
) -> None:
    """No head, and the stored tree was rebuilt under the latest checkpoint: refused."""
    _record(world, 3)
    _tampered(world, edit_actor(1), rebuild=True)
    assert world.checkpointer is not None
    world.checkpointer.heads = MemoryHeads()
    with pytest.raises(AuditHeadError, match="does not match the stored tree") as e:
        world.core.record("test.event", "after", {})
    assert e.value.reason == MISMATCH
    assert _counts(world) == (3, 3)


def test_a_reset_is_recorded_in_the_log_it_accepts(world: World) -> None:
    """After a rollback, a reset appends audit.head_reset, moves the head, checkpoints it."""
    _record(world, 5)
    old = _heads(world).head
    assert old is not None and world.checkpointer is not None
    _tampered(world, lambda rows: rows[:-2])
    accepted = _tree(world)
    with world.store.transaction() as tx:
        new = world.checkpointer.reset(tx, "admin", "restored the 02:00 backup", START)
    assert new == _tree(world) == _heads(world).head and new.size == 4
    last = world.audit()[-1]
    assert (last.event, last.actor, last.index) == ("audit.head_reset", "admin", 3)
    assert last.details == {
        "reason": "restored the 02:00 backup",
        "problem": ROLLBACK,
        "previous_head": old.as_dict(),
        "accepted_tree": accepted.as_dict(),
    }
    assert accepted.size == 3
    assert int(world.db.rows("SELECT max(size) FROM checkpoints")[0][0]) == 4
    world.core.record("test.event", "after", {})  # the audit key signs again
    with world.store.transaction() as tx, pytest.raises(ConflictError, match="nothing to reset"):
        world.checkpointer.reset(tx, "admin", "again", START)


# -- the head in a real token ------------------------------------------------------------

_TOKEN_HEADS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from signer.server.admin import open_token
    from signer.audit.head import TokenHeads, TreeHead
    from signer.server.config import load_config

    config = load_config(Path(sys.argv[1]))
    token = open_token(config)
    key_id = token.key(config.audit_key).key_id
    heads = TokenHeads(token, config.audit_key, key_id)
    out = {"initial": heads.read().as_dict()}
    for size in (10, 11, 12):
        heads.write(TreeHead(size, bytes([size]) * 32))
    out["latest"] = heads.read().as_dict()
    out["labels"] = sorted(token.data_labels(heads.application, config.audit_key).values())
    try:
        TokenHeads(token, config.audit_key, "0" * 64).read()
    except Exception as e:
        out["other_key"] = str(e)
    print(json.dumps(out))
    """
)


@pytest.mark.sqlite_only  # the store plays no part
def test_the_token_keeps_the_head_in_two_private_objects_beside_the_audit_key(
    fresh_env: Env,
) -> None:
    """`signer init` leaves a head; writes alternate between two labelled objects."""
    p = run([sys.executable, "-c", _TOKEN_HEADS, str(fresh_env.config)], timeout=120)
    out = json.loads(p.stdout.splitlines()[-1])
    [(entries,)] = fresh_env.store.rows("SELECT count(*) FROM audit_log")
    assert out["initial"]["size"] == entries
    assert out["latest"] == TreeHead(12, bytes([12]) * 32).as_dict()
    labels = out["labels"]
    assert len(labels) == 2
    assert all(label.startswith("audit tree head: seq=") for label in labels)
    assert any("size=11 " in label for label in labels)  # the previous head is kept
    assert any("size=12 " in label for label in labels)
    assert "belongs to audit key id" in out["other_key"]
