"""The store's queries, written once in the SQL both SQLite and PostgreSQL speak.

Timestamps are stored as RFC 3339 text (the audit entries' own form), digests,
context and the OIDC caller as canonical JSON, envelopes and signatures as
bytes. A backend supplies a connection through `_rows`, `_run` and `_run_many`;
`?` marks a parameter and the PostgreSQL backend rewrites it to `%s`.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.bounds import fitting
from signer.encoding import canonical_json, format_time, parse_time
from signer.errors import StoreError, TooLargeError
from signer.model import Approval, Digest, Request, State, TokenCaller
from signer.store.base import MAX_AUDIT_ENTRY_BYTES, AuditFilter, FrozenKey, Tx
from signer.store.sql_outbox import OutboxQueries

__all__ = ["SqlTx"]

# Parsed digests of the requests read last, so that a batch is parsed once and not on
# every read (each quorum check reads it again); bounded by count and by stored size.
_PARSED: OrderedDict[str, tuple[Digest, ...]] = OrderedDict()
_PARSED_LOCK = threading.Lock()
_PARSED_MAX = 32
_PARSED_MAX_CHARS = 64 * 1024 * 1024


def _digests(stored: str) -> tuple[Digest, ...]:
    """A request's digests from their stored JSON, parsed once while recently read."""
    with _PARSED_LOCK:
        found = _PARSED.get(stored)
        if found is not None:
            _PARSED.move_to_end(stored)
            return found
    parsed = tuple(Digest.from_dict(d) for d in json.loads(stored))
    if len(stored) <= _PARSED_MAX_CHARS // 2:
        with _PARSED_LOCK:
            _PARSED[stored] = parsed
            total = sum(map(len, _PARSED))
            while len(_PARSED) > _PARSED_MAX or total > _PARSED_MAX_CHARS:
                total -= len(_PARSED.popitem(last=False)[0])
    return parsed


class SqlTx(OutboxQueries, Tx):
    """The store's queries in SQL both SQLite and PostgreSQL run; `?` marks a parameter.

    A backend gives `_rows` and `_run` (and `_run_many`) over its own connection.
    """

    appended: int

    @abc.abstractmethod
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _run(self, sql: str, args: Sequence[Any] = ()) -> None: ...

    @abc.abstractmethod
    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    def _scalar(self, sql: str, args: Sequence[Any] = ()) -> Any:
        row = self._one(sql, args)
        return None if row is None else row[0]

    def _request(self, row: tuple[Any, ...]) -> Request:
        (
            rid,
            key_name,
            key_id,
            algorithm,
            requester,
            digests,
            context,
            state,
            created,
            expires,
            updated,
            message,
            idem,
            caller,
            payload_type,
            payload,
            unusual,
        ) = row
        approvals = tuple(
            Approval(rid, a, d, bytes(env), parse_time(c), reason)
            for a, d, env, c, reason in self._rows(
                "SELECT approver, decision, envelope, created, reason FROM approvals "
                "WHERE request_id = ? ORDER BY created, approver",
                (rid,),
            )
        )
        signatures = tuple(
            bytes(s)
            for (s,) in self._rows(
                "SELECT signature FROM signatures WHERE request_id = ? ORDER BY idx", (rid,)
            )
        )
        return Request(
            id=rid,
            key_name=key_name,
            key_id=key_id,
            algorithm=algorithm,
            requester=requester,
            digests=_digests(digests),
            context=json.loads(context),
            state=State(state),
            created=parse_time(created),
            expires=parse_time(expires),
            updated=parse_time(updated),
            status_message=message,
            idempotency_key=idem or "",
            approvals=approvals,
            signatures=signatures,
            caller=TokenCaller.from_dict(json.loads(caller)) if caller else None,
            payload_type=payload_type,
            payload=bytes(payload),
            unusual=tuple(json.loads(unusual)) if unusual else (),
        )

    _COLUMNS = (
        "id, key_name, key_id, algorithm, requester, digests, context, state, created, "
        "expires, updated, status_message, idempotency_key, caller, payload_type, payload, "
        "unusual"
    )

    def savepoint(self) -> None:
        self._run("SAVEPOINT member")

    def release_savepoint(self) -> None:
        self._run("RELEASE SAVEPOINT member")

    def rollback_savepoint(self) -> None:
        self._run("ROLLBACK TO SAVEPOINT member")
        self._run("RELEASE SAVEPOINT member")

    def get_request(self, request_id: str) -> Request | None:
        row = self._one(
            f"SELECT {self._COLUMNS} FROM requests WHERE id = ?",  # noqa: S608
            (request_id,),
        )
        return self._request(row) if row else None

    def pending_expiry(self, request_id: str) -> dt.datetime | None:
        found = self._scalar(
            "SELECT expires FROM requests WHERE id = ? AND state = 'PENDING'", (request_id,)
        )
        return parse_time(found) if found is not None else None

    def find_idempotent(self, requester: str, key: str) -> tuple[Request, str] | None:
        row = self._one(
            f"SELECT {self._COLUMNS}, params_hash FROM requests "  # noqa: S608
            "WHERE requester = ? AND idempotency_key = ?",
            (requester, key),
        )
        return (self._request(row[:-1]), row[-1]) if row else None

    def insert_request(self, request: Request, params_hash: str) -> None:
        r = request
        self._run(
            f"INSERT INTO requests ({self._COLUMNS}, params_hash) "  # noqa: S608
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                r.id,
                r.key_name,
                r.key_id,
                r.algorithm,
                r.requester,
                canonical_json([d.as_dict() for d in r.digests]).decode(),
                canonical_json(r.context).decode(),
                r.state.value,
                format_time(r.created),
                format_time(r.expires),
                format_time(r.updated),
                r.status_message,
                r.idempotency_key or None,
                canonical_json(r.caller.as_dict()).decode() if r.caller else None,
                r.payload_type,
                r.payload,
                canonical_json(list(r.unusual)).decode() if r.unusual else "",
                params_hash,
            ),
        )

    def set_state(
        self, request_id: str, state: State, when: dt.datetime, message: str = ""
    ) -> None:
        self._run(
            "UPDATE requests SET state = ?, updated = ?, status_message = ? WHERE id = ?",
            (state.value, format_time(when), message, request_id),
        )

    def set_message(self, request_id: str, state: State, message: str) -> None:
        self._run(
            "UPDATE requests SET status_message = ? WHERE id = ? AND state = ?",
            (message, request_id, state.value),
        )

    def insert_approval(self, approval: Approval) -> None:
        a = approval
        self._run(
            "INSERT INTO approvals VALUES (?,?,?,?,?,?)",
            (a.request_id, a.approver, a.decision, a.envelope, format_time(a.created), a.reason),
        )

    def insert_signatures(self, request_id: str, signatures: list[bytes]) -> None:
        self._run_many(
            "INSERT INTO signatures VALUES (?,?,?)",
            [(request_id, i, s) for i, s in enumerate(signatures)],
        )

    def list_requests(
        self,
        states: frozenset[State],
        key_names: frozenset[str] | None,
        after: int,
        limit: int,
        max_bytes: int | None = None,
        requester: str | None = None,
    ) -> list[tuple[int, Request]]:
        sql = "SELECT seq FROM requests WHERE seq > ?"
        args: list[Any] = [after]
        if requester is not None:
            sql += " AND requester = ?"
            args.append(requester)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += [s.value for s in sorted(states)]
        if key_names is not None:
            sql += f" AND key_name IN ({','.join('?' * len(key_names))})"
            args += sorted(key_names)
        sql += " ORDER BY seq LIMIT ?"
        found: list[tuple[int, Request]] = []
        stored = 0  # characters of digests read: one large batch at a time, never fifty
        for (seq,) in self._rows(sql, (*args, limit)):
            row = self._one(
                f"SELECT {self._COLUMNS} FROM requests WHERE seq = ?",  # noqa: S608
                (seq,),
            )
            assert row is not None  # the same transaction: the row is still there
            stored += len(row[5])
            if found and max_bytes is not None and stored > max_bytes:
                break
            found.append((int(seq), self._request(row)))
        return found

    def count_by_state(self) -> dict[str, int]:
        rows = self._rows("SELECT state, count(*) FROM requests GROUP BY state")
        return {str(state): int(n) for state, n in rows}

    def count_pending(self, requester: str) -> int:
        n = self._scalar(
            "SELECT count(*) FROM requests WHERE requester = ? AND state = 'PENDING'",
            (requester,),
        )
        return int(n)

    def freeze_key(self, freeze: FrozenKey) -> FrozenKey:
        held = self.frozen_key(freeze.key_name)
        if held is not None:
            return held
        self._run(
            "INSERT INTO frozen_keys (key_name, since_index, officer, reason, frozen_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                freeze.key_name,
                freeze.since_index,
                freeze.officer,
                freeze.reason,
                format_time(freeze.frozen_at),
            ),
        )
        return freeze

    def frozen_key(self, key_name: str) -> FrozenKey | None:
        row = self._one(
            "SELECT key_name, since_index, officer, reason, frozen_at FROM frozen_keys "
            "WHERE key_name = ?",
            (key_name,),
        )
        return (
            None
            if row is None
            else FrozenKey(row[0], int(row[1]), row[2], row[3], parse_time(row[4]))
        )

    def lift_freeze(self, key_name: str, since_index: int) -> bool:
        held = self.frozen_key(key_name)
        if held is None or held.since_index != since_index:
            return False
        self._run("DELETE FROM frozen_keys WHERE key_name = ?", (key_name,))
        return True

    def frozen_keys(self) -> list[FrozenKey]:
        return [
            FrozenKey(k, int(i), o, r, parse_time(t))
            for k, i, o, r, t in self._rows(
                "SELECT key_name, since_index, officer, reason, frozen_at FROM frozen_keys "
                "ORDER BY key_name"
            )
        ]

    def pending_due(self, now: dt.datetime) -> list[str]:
        return [
            r
            for (r,) in self._rows(
                "SELECT id FROM requests WHERE state = 'PENDING' AND expires <= ?",
                (format_time(now),),
            )
        ]

    def signatures_since(self, key_name: str, since: dt.datetime, *, inclusive: bool) -> int:
        # A SIGNED request's `updated` is when it was signed (its request.signed entry's time).
        sql = (
            "SELECT count(*) FROM signatures s JOIN requests r ON r.id = s.request_id "
            "WHERE r.key_name = ? AND r.state = 'SIGNED' AND r.updated "
        )
        n = self._scalar(sql + (">= ?" if inclusive else "> ?"), (key_name, format_time(since)))
        return int(n or 0)

    def ids_in_state(self, state: State) -> list[str]:
        return [
            r
            for (r,) in self._rows(
                "SELECT id FROM requests WHERE state = ? ORDER BY seq", (state.value,)
            )
        ]

    # -- the Merkle tree over the log (docs/architecture.md §6) -----------------

    def perfect(self, level: int, index: int) -> bytes:
        row = self._one("SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index))
        if row is None:
            raise StoreError(
                f"audit tree node ({level}, {index}) is missing; the database is damaged"
            )
        return bytes(row[0])

    def tree_size(self) -> int:
        last = self._scalar("SELECT max(idx) FROM audit_log")
        return 0 if last is None else int(last) + 1

    def put_checkpoint(self, size: int, note: str) -> None:
        self._run("INSERT INTO checkpoints VALUES (?, ?)", (size, note))

    def checkpoint(self, size: int | None = None) -> tuple[int, str] | None:
        if size is None:
            row = self._one("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1")
        else:
            row = self._one("SELECT size, note FROM checkpoints WHERE size = ?", (size,))
        return (int(row[0]), str(row[1])) if row else None

    def entries(self, start: int, end: int, max_bytes: int | None = None) -> list[bytes]:
        if max_bytes is not None:  # sizes first (read without the entries), then the page
            sizes = self._rows(
                "SELECT length(entry) FROM audit_log WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            )
            end = start + fitting([int(n) for (n,) in sizes], max_bytes)
        return [
            bytes(e)
            for (e,) in self._rows(
                "SELECT entry FROM audit_log WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            )
        ]

    def signed_entry(self, request_id: str) -> int | None:
        row = self._one(
            "SELECT idx FROM audit_log WHERE request_id = ? AND event = 'request.signed'",
            (request_id,),
        )
        return int(row[0]) if row else None

    def append_audit(
        self,
        when: dt.datetime,
        event: str,
        actor: str,
        request_id: str,
        key_name: str,
        details: dict[str, Any],
    ) -> AuditEntry:
        size = self.tree_size()
        entry = AuditEntry(size, when, event, actor, request_id, details)
        raw = entry.to_bytes()
        if len(raw) > MAX_AUDIT_ENTRY_BYTES:
            raise TooLargeError(
                f"the {event} audit entry would be {len(raw)} bytes; the limit is "
                f"{MAX_AUDIT_ENTRY_BYTES}",
                reason="AUDIT_ENTRY_TOO_LARGE",
            )
        self._run(
            "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?)",
            (entry.index, raw, format_time(when), event, actor, request_id, key_name),
        )
        self._run_many(
            "INSERT INTO audit_nodes VALUES (?,?,?)",
            merkle.new_nodes(self, size, merkle.leaf_hash(raw)),
        )
        self.appended += 1
        return entry

    def list_audit(
        self, f: AuditFilter, after: int, limit: int, max_bytes: int | None = None
    ) -> list[AuditEntry]:
        sql = " FROM audit_log WHERE idx > ?"
        args: list[Any] = [after]
        for column, value in (
            ("event", f.event),
            ("actor", f.actor),
            ("request_id", f.request_id),
            ("key_name", f.key_name),
        ):
            if value:
                sql += f" AND {column} = ?"
                args.append(value)
        if f.requester:
            sql += " AND request_id IN (SELECT id FROM requests WHERE requester = ?)"
            args.append(f.requester)
        if f.start is not None:
            sql += " AND time >= ?"
            args.append(format_time(f.start))
        if f.end is not None:
            sql += " AND time < ?"
            args.append(format_time(f.end))
        if max_bytes is not None:  # sizes first (read without the entries), then the page
            sizes = self._rows(f"SELECT length(entry){sql} ORDER BY idx LIMIT ?", (*args, limit))
            limit = fitting([int(n) for (n,) in sizes], max_bytes)
        rows = self._rows(f"SELECT entry{sql} ORDER BY idx LIMIT ?", (*args, limit))
        return [AuditEntry.from_bytes(bytes(e)) for (e,) in rows]
