"""Group commit: concurrent transactions share one commit, one fsync, one checkpoint.

Callers that want a transaction while another one is open join it instead of
waiting for their own: the first (the leader) opens the store transaction, each
member runs its body in turn inside a SAVEPOINT, and when no one else is
waiting (or `max_members` have joined) the leader runs `before_commit` once
(the signed checkpoint over everything the group appended) and commits once.
Members arriving meanwhile form the next group, which starts as soon as this
one has committed.

Invariant 3 is kept for every member, not just the group:
- no member returns until the group's commit (its fsync included) is done, so
  a member's audit entry is durable and covered by a signed checkpoint before
  its call returns;
- if the commit, or the checkpoint, fails, every member fails and nothing of
  the group is written; a refusal of the audit key (the stored log does not
  extend the token's tree head) reaches every member with its reason;
- the checkpoint is released in a follow-up of the commit (`Tx.after_commit`,
  see `signer.audit.checkpoint`): one token head update per commit, and no
  member returns before it. Should that follow-up fail, the group's writes
  are durable but not yet covered: every member fails, told so, and the next
  checkpoint covers them;
- a member's refusal (a `SignerError` other than `StoreError`) rolls back its
  own savepoint only, and it is reported only once the group has committed,
  since it may rest on what earlier members wrote; any other exception in a
  body (a database error, a crash) rolls back the whole group.

A member whose group never opened its transaction (the database was down when
the leader asked) tries again on its own instead of inheriting that failure.

Turns are handed from one member to the next directly (an Event each), so a
member sleeps until its turn or its group's commit, never woken by others'.

A body must not open another transaction (it would wait for itself): that
raises RuntimeError at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from signer.errors import SignerError, StoreError
from signer.store.base import Store, Tx

__all__ = ["GroupCommit"]


@dataclass(eq=False)
class _Group:
    tx: Tx | None = None
    queue: deque[threading.Event] = field(default_factory=deque)  # joiners' turns, in order
    members: int = 1
    idle: threading.Event = field(default_factory=threading.Event)  # a joiner's turn ended
    done: bool = False
    settled: threading.Event = field(default_factory=threading.Event)  # set with `done`
    failure: BaseException | None = None  # why the group did not commit
    poison: BaseException | None = None  # the body exception that rolls back the group


class GroupCommit:
    """Runs store transactions, grouping concurrent ones into one commit."""

    def __init__(
        self,
        store: Store,
        before_commit: Callable[[Tx], None] | None = None,
        max_members: int = 64,
    ) -> None:
        self._store = store
        self._before_commit = before_commit
        self._max = max(1, max_members)
        self._mu = threading.Lock()
        self._open: _Group | None = None
        self._inside = threading.local()
        self.commits = 0  # groups committed (one fsync and at most one checkpoint each)

    def queued(self) -> int:
        """Members of the open group that have not had their turn yet."""
        with self._mu:
            return len(self._open.queue) if self._open is not None else 0

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        if getattr(self._inside, "active", False):
            raise RuntimeError("a transaction body opened another transaction")
        self._inside.active = True
        try:
            while True:
                with self._mu:
                    group = self._open
                    if group is None or group.members >= self._max:
                        group = self._open = _Group()
                        turn = None
                    else:
                        group.members += 1
                        turn = threading.Event()
                        group.queue.append(turn)
                if turn is None:
                    yield from self._lead(group)
                    return
                if (yield from self._join(group, turn)):
                    return
                # The group's transaction never opened (the database was down when its
                # leader asked): try again on our own rather than inherit that failure.
        finally:
            self._inside.active = False

    # -- the leader ---------------------------------------------------------------

    def _lead(self, group: _Group) -> Generator[Tx, None, None]:
        own: BaseException | None = None
        try:
            with self._store.transaction() as tx:
                group.tx = tx
                own = yield from self._body(group, tx)
                self._serve_joiners(group)
                if group.poison is not None:
                    raise group.poison  # the store rolls back (and translates DB errors)
                if tx.appended and self._before_commit is not None:
                    self._before_commit(tx)
        except BaseException as e:  # noqa: BLE001 (re-raised to every member below)
            group.failure = e
        finally:
            with self._mu:
                group.done = True
                if self._open is group:
                    self._open = None
                unserved = list(group.queue)  # only when the transaction never opened
                group.queue.clear()
                if group.failure is None:
                    self.commits += 1
            for turn in unserved:
                turn.set()
            group.settled.set()
        self._outcome(group, own, leader=True)

    def _serve_joiners(self, group: _Group) -> None:
        """Give each joiner its turn, in order, then close the group."""
        while True:
            with self._mu:
                if not group.queue:
                    if self._open is group:
                        self._open = None  # later arrivals lead the next group
                    return
                turn = group.queue.popleft()
                group.idle.clear()
            turn.set()
            group.idle.wait()

    # -- a member that joined -------------------------------------------------------

    def _join(self, group: _Group, turn: threading.Event) -> Generator[Tx, None, bool]:
        """Run as a member of `group`; False if its transaction never opened."""
        turn.wait()
        if group.done:  # woken without a turn: the leader could not open the transaction
            return False
        assert group.tx is not None
        own: BaseException | None = None
        try:
            if group.poison is None:
                own = yield from self._body(group, group.tx)
        finally:
            group.idle.set()  # the turn goes back to the leader, whatever happened
        group.settled.wait()
        self._outcome(group, own, leader=False)
        return True

    # -- shared -----------------------------------------------------------------------
    def _body(self, group: _Group, tx: Tx) -> Generator[Tx, None, BaseException | None]:
        """Run one member's body in a savepoint; return its exception, if any."""
        appended = tx.appended
        try:
            tx.savepoint()
        except BaseException as e:  # noqa: BLE001 (fails the whole group; the body never runs)
            group.poison = e
            return e
        try:
            yield tx
        except BaseException as e:  # noqa: BLE001 (re-raised once the group settles)
            if isinstance(e, SignerError) and not isinstance(e, StoreError):
                try:
                    tx.rollback_savepoint()
                    tx.appended = appended
                except BaseException as undo:  # noqa: BLE001 (fails the whole group)
                    group.poison = undo
                return e
            group.poison = e
            return e
        try:
            tx.release_savepoint()
        except BaseException as e:  # noqa: BLE001 (fails the whole group)
            group.poison = e
            return e
        return None

    @staticmethod
    def _outcome(group: _Group, own: BaseException | None, *, leader: bool) -> None:
        """Raise what this member's call ends with, once the group is settled."""
        failure = group.failure
        if failure is None:
            if own is not None:
                raise own
            return
        reason = failure.reason if isinstance(failure, SignerError) else None
        if group.tx is not None and group.tx.committed:  # only the checkpoint's release failed
            if own is not None:
                raise own
            if leader:
                raise failure
            raise StoreError(
                f"the change was recorded, but the checkpoint covering it was not: {failure}",
                reason=reason,
            ) from failure
        if own is not None and own is group.poison:
            raise failure  # the member whose body failed hears its own (translated) error
        if leader and group.poison is None:
            raise failure  # the commit or the checkpoint failed
        raise StoreError(
            f"the transaction was not committed: {failure}", reason=reason
        ) from failure
