"""The store port: what the signing core needs from a database.

Invariant 3 lives here: a state change and its audit entry are written in one
transaction (`Store.transaction()`), so either both are durable or neither is.
Database errors are translated to `StoreError` (UNAVAILABLE) at this port.

Reads that return many rows take a byte budget as well as a count, so that no
caller can make the server hold more than about one page plus one row in
memory; a row is always returned even when it alone is over the budget. An
audit entry is at most `MAX_AUDIT_ENTRY_BYTES`: an append past it is refused.

A transaction may register follow-ups (`Tx.after_commit`): each runs in a
transaction of its own once the first has committed, before any other
transaction of the store (in any process sharing the database) can start, so
no one reads the first one's writes without the follow-up's. The audit
checkpoint uses this: its signature leaves the process only once the entries
it covers are durable (`signer.audit.checkpoint`).
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from signer.audit.entry import AuditEntry
from signer.model import Approval, Request, State

__all__ = [
    "MAX_AUDIT_ENTRY_BYTES",
    "PAGE_BYTES",
    "AuditFilter",
    "AuditHead",
    "FrozenKey",
    "OutboxItem",
    "Store",
    "Tx",
]

# The largest entry the limits allow (request.created of 10,000 digests with
# 512-character names in 4-byte UTF-8, full context and payload) is about 23 MB.
MAX_AUDIT_ENTRY_BYTES = 32 * 1024 * 1024
PAGE_BYTES = 1024 * 1024  # the byte budget of one page of a listing


@dataclass(frozen=True)
class FrozenKey:
    """A key an officer froze: since the `key.frozen` entry at `since_index`."""

    key_name: str
    since_index: int
    officer: str
    reason: str
    frozen_at: dt.datetime


@dataclass(frozen=True)
class AuditHead:
    """What an audit entry is about, read without the entry itself."""

    index: int
    event: str
    key_name: str


@dataclass(frozen=True)
class OutboxItem:
    """One notification of one sink still to be delivered: the audit entry at `index`."""

    sink: str
    index: int
    attempts: int  # deliveries tried and failed so far
    created: dt.datetime  # when it was put in the outbox


@dataclass(frozen=True)
class AuditFilter:
    event: str = ""
    actor: str = ""
    request_id: str = ""
    key_name: str = ""
    requester: str = ""  # events of requests made by this requester
    start: dt.datetime | None = None
    end: dt.datetime | None = None


class Tx(abc.ABC):
    """One transaction. Everything written through it commits or rolls back together.

    It is also the Merkle tree's node source (`perfect`), so tree reads see the
    transaction's own appends.
    """

    appended: int  # entries appended through this transaction
    committed: bool  # set by the store once this transaction has committed
    follow_ups: list[Callable[[Tx], None]]

    def __init__(self) -> None:
        self.appended = 0
        self.committed = False
        self.follow_ups = []

    def after_commit(self, then: Callable[[Tx], None]) -> None:
        """Run `then(tx2)` in a second transaction right after this one commits, with no
        other transaction in between; if this one does not commit, `then` never runs.

        An error from `then` rolls back only its own transaction and is raised from
        the store's `transaction()` context, with `committed` already set.
        """
        self.follow_ups.append(then)

    @abc.abstractmethod
    def savepoint(self) -> None:
        """Mark where one member of a group commit starts (`signer.store.group`)."""

    @abc.abstractmethod
    def release_savepoint(self) -> None:
        """Keep what the member wrote since `savepoint`."""

    @abc.abstractmethod
    def rollback_savepoint(self) -> None:
        """Undo what the member wrote since `savepoint`."""

    @abc.abstractmethod
    def get_request(self, request_id: str) -> Request | None: ...

    @abc.abstractmethod
    def pending_expiry(self, request_id: str) -> dt.datetime | None:
        """When a PENDING request expires (None if it is not PENDING or not there)."""

    @abc.abstractmethod
    def find_idempotent(self, requester: str, key: str) -> tuple[Request, str] | None:
        """The request made by `requester` with idempotency key `key`, and its params hash."""

    @abc.abstractmethod
    def insert_request(self, request: Request, params_hash: str) -> None: ...

    @abc.abstractmethod
    def set_state(
        self, request_id: str, state: State, when: dt.datetime, message: str = ""
    ) -> None: ...

    @abc.abstractmethod
    def set_message(self, request_id: str, state: State, message: str) -> None:
        """Say why a request in `state` waits (no change of state: no audit entry)."""

    @abc.abstractmethod
    def insert_approval(self, approval: Approval) -> None: ...

    @abc.abstractmethod
    def insert_signatures(self, request_id: str, signatures: list[bytes]) -> None: ...

    @abc.abstractmethod
    def list_requests(
        self,
        states: frozenset[State],
        key_names: frozenset[str] | None,
        after: int,
        limit: int,
        max_bytes: int | None = None,
        requester: str | None = None,
    ) -> list[tuple[int, Request]]:
        """Requests in `states` (and keys, and of `requester`), by creation order, after
        position `after`; with `max_bytes`, they stop before that many bytes of stored
        digests (one at least)."""

    @abc.abstractmethod
    def count_by_state(self) -> dict[str, int]:
        """How many requests are in each state (states with none are absent)."""

    @abc.abstractmethod
    def count_pending(self, requester: str) -> int: ...

    @abc.abstractmethod
    def freeze_key(self, freeze: FrozenKey) -> FrozenKey:
        """Record `freeze` unless the key is frozen already; the freeze in force."""

    @abc.abstractmethod
    def frozen_key(self, key_name: str) -> FrozenKey | None:
        """The freeze holding on `key_name`, if one does."""

    @abc.abstractmethod
    def lift_freeze(self, key_name: str, since_index: int) -> bool:
        """Lift the freeze of `key_name` recorded at audit index `since_index`, if it is
        the one in force; whether it was."""

    @abc.abstractmethod
    def frozen_keys(self) -> list[FrozenKey]:
        """Every freeze in force, by key name."""

    @abc.abstractmethod
    def pending_due(self, now: dt.datetime) -> list[str]:
        """Ids of PENDING requests whose expiry time has passed."""

    @abc.abstractmethod
    def ids_in_state(self, state: State) -> list[str]: ...

    @abc.abstractmethod
    def append_audit(
        self,
        when: dt.datetime,
        event: str,
        actor: str,
        request_id: str,
        key_name: str,
        details: dict[str, Any],
    ) -> AuditEntry: ...

    @abc.abstractmethod
    def list_audit(
        self, f: AuditFilter, after: int, limit: int, max_bytes: int | None = None
    ) -> list[AuditEntry]:
        """Entries matching `f` with index > `after`, oldest first; with `max_bytes`, they
        stop before that many bytes of entries (one at least)."""

    @abc.abstractmethod
    def perfect(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree of 2**level leaves starting at index * 2**level."""

    @abc.abstractmethod
    def tree_size(self) -> int: ...

    @abc.abstractmethod
    def put_checkpoint(self, size: int, note: str) -> None: ...

    @abc.abstractmethod
    def checkpoint(self, size: int | None = None) -> tuple[int, str] | None:
        """The checkpoint for `size` (default: the latest) as (size, signed note)."""

    @abc.abstractmethod
    def entries(self, start: int, end: int, max_bytes: int | None = None) -> list[bytes]:
        """Canonical bytes of entries [start, end); with `max_bytes`, they stop before that
        many bytes (one at least)."""

    @abc.abstractmethod
    def signed_entry(self, request_id: str) -> int | None:
        """Index of the request.signed entry of a request."""

    @abc.abstractmethod
    def signatures_since(self, key_name: str, since: dt.datetime, *, inclusive: bool) -> int:
        """Signatures `key_name` made after `since` (at or after, with `inclusive`)."""

    @abc.abstractmethod
    def mark_seen(self, key_name: str, kind: str, value: str, index: int) -> bool:
        """Record that `kind` `value` was seen on `key_name` (first at audit entry `index`);
        whether it was the first time."""

    @abc.abstractmethod
    def signed_with(self, key_name: str, kind: str, value: str) -> bool:
        """Whether a signature of `key_name` was recorded for a request with `kind` `value`
        (its requester, repository or workflow: `signer.core.unusual`)."""

    @abc.abstractmethod
    def mark_signed(self, key_name: str, values: Mapping[str, str]) -> None:
        """Record that `key_name` signed for a request with these `values` (kind: value)."""

    @abc.abstractmethod
    def created_since(self, key_name: str, since: dt.datetime, upto_request: str) -> int:
        """Requests for `key_name` created at or after `since`, up to and including
        `upto_request` in creation order (none made after it)."""

    @abc.abstractmethod
    def audit_heads(self, after: int, limit: int) -> list[AuditHead]:
        """Index, event and key of the entries after `after`, oldest first."""

    # -- the notification outbox (`signer.notify`) ----------------------------------------

    @abc.abstractmethod
    def outbox_cursor(self, sink: str) -> int | None:
        """The last audit index `sink`'s notifications were taken from (None: never)."""

    @abc.abstractmethod
    def set_outbox_cursor(self, sink: str, after: int) -> None: ...

    @abc.abstractmethod
    def enqueue(self, sink: str, indexes: list[int], now: dt.datetime) -> None:
        """Put the entries at `indexes` in `sink`'s outbox, due now (each at most once)."""

    @abc.abstractmethod
    def claim(
        self, owner: str, now: dt.datetime, lease_until: dt.datetime, limit: int, sink: str
    ) -> list[OutboxItem]:
        """Take up to `limit` of `sink`'s due items no one holds, for `owner` until
        `lease_until`, oldest first."""

    @abc.abstractmethod
    def purge_given_up(self, before: dt.datetime) -> None:
        """Forget the items given up before `before`."""

    @abc.abstractmethod
    def delivered(self, item: OutboxItem, owner: str) -> bool:
        """Remove a delivered item if `owner` still holds it; whether it did."""

    @abc.abstractmethod
    def retry_later(
        self, item: OutboxItem, owner: str, due: dt.datetime, error: str, dead: bool
    ) -> None:
        """Record a failed delivery: tried again at `due`, or never (`dead`: kept, given up)."""

    @abc.abstractmethod
    def outbox_counts(self) -> dict[str, tuple[int, int]]:
        """Per sink: (items waiting, items given up)."""


class Store(abc.ABC):
    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction: committed durably on normal exit, rolled back on error."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def subscribe(self, changed: Callable[[str], None]) -> None:  # noqa: B027 (optional)
        """Call `changed(request_id)` for changes committed by other processes.

        One process owns a SQLite file, so its own notifier already hears every change;
        a shared database (PostgreSQL) overrides this.
        """

    def audit_entries(self) -> Iterator[AuditEntry]:
        """Every audit entry, oldest first (for tools and tests)."""
        after = -1
        while True:
            with self.transaction() as tx:
                page = tx.list_audit(AuditFilter(), after, 1000, PAGE_BYTES)
            if not page:
                return
            yield from page
            after = page[-1].index
