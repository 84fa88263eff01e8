"""SQLite store: one file, WAL, synchronous=FULL (DESIGN §7).

Writes go through `BEGIN IMMEDIATE ... COMMIT` on one connection guarded by a
lock, so a transaction sees and changes a consistent state and concurrent
approvals of one request are serialized. The audit table is append-only:
triggers abort any UPDATE or DELETE, and any INSERT (including INSERT OR
REPLACE) that is not at the next index. Every `sqlite3.Error` becomes a
`StoreError` here, which the service reports as UNAVAILABLE (fail closed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.encoding import canonical_json, format_time, parse_time
from signer.errors import StoreError
from signer.model import Approval, Digest, Request, State, TokenCaller
from signer.store.base import AuditFilter, Store, Tx

__all__ = ["SqliteStore"]

SCHEMA_VERSION = 2
# v2: the OIDC caller (issuer, claims, barred approvers) and a DSSE payload per request.
_SCHEMA_V2 = """
ALTER TABLE requests ADD COLUMN caller TEXT;
ALTER TABLE requests ADD COLUMN payload_type TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN payload BLOB NOT NULL DEFAULT x''
"""
_SCHEMA = """
CREATE TABLE requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    requester TEXT NOT NULL,
    digests TEXT NOT NULL,
    context TEXT NOT NULL,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    expires TEXT NOT NULL,
    updated TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT,
    params_hash TEXT NOT NULL,
    UNIQUE (requester, idempotency_key)
);
CREATE INDEX requests_state ON requests (state, expires);
CREATE INDEX requests_requester ON requests (requester, state);
CREATE TABLE approvals (
    request_id TEXT NOT NULL REFERENCES requests (id),
    approver TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    envelope BLOB NOT NULL,
    created TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE signatures (
    request_id TEXT NOT NULL REFERENCES requests (id),
    idx INTEGER NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE audit_log (
    idx INTEGER PRIMARY KEY,
    entry BLOB NOT NULL,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    request_id TEXT NOT NULL,
    key_name TEXT NOT NULL
);
CREATE INDEX audit_request ON audit_log (request_id);
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
CREATE TRIGGER audit_nodes_no_update BEFORE UPDATE ON audit_nodes
BEGIN SELECT RAISE(ABORT, 'the audit tree is append-only'); END;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints are never changed'); END;
CREATE TRIGGER audit_log_append_only BEFORE INSERT ON audit_log
WHEN NEW.idx IS NOT COALESCE((SELECT max(idx) FROM audit_log), -1) + 1
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries are added at the end'); END;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


class SqliteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open database {path}: {e}") from e

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER)")
                row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
                version = row[0] or 0
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"database {self.path} has schema {version}, newer than this "
                        f"server's {SCHEMA_VERSION}; upgrade the server"
                    )
                for target, script in ((1, _SCHEMA), (2, _SCHEMA_V2)):
                    if version < target:
                        for stmt in script.split(";\n"):
                            if stmt.strip():
                                self._db.execute(stmt)
                        self._db.execute("INSERT INTO schema_version VALUES (?)", (target,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"the database cannot be written: {e}") from e
            try:
                yield _SqliteTx(self._db)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise StoreError(f"the database (audit log) could not be written: {e}") from e
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # No transaction left to roll back when SQLite already did.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SqliteTx(Tx):
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.appended = 0

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
        ) = row
        approvals = tuple(
            Approval(rid, a, d, bytes(env), parse_time(c), reason)
            for a, d, env, c, reason in self._db.execute(
                "SELECT approver, decision, envelope, created, reason FROM approvals "
                "WHERE request_id = ? ORDER BY created, approver",
                (rid,),
            )
        )
        signatures = tuple(
            bytes(s)
            for (s,) in self._db.execute(
                "SELECT signature FROM signatures WHERE request_id = ? ORDER BY idx", (rid,)
            )
        )
        return Request(
            id=rid,
            key_name=key_name,
            key_id=key_id,
            algorithm=algorithm,
            requester=requester,
            digests=tuple(Digest.from_dict(d) for d in json.loads(digests)),
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
        )

    _COLUMNS = (
        "id, key_name, key_id, algorithm, requester, digests, context, state, created, "
        "expires, updated, status_message, idempotency_key, caller, payload_type, payload"
    )

    def get_request(self, request_id: str) -> Request | None:
        row = self._db.execute(
            f"SELECT {self._COLUMNS} FROM requests WHERE id = ?",  # noqa: S608
            (request_id,),
        ).fetchone()
        return self._request(row) if row else None

    def find_idempotent(self, requester: str, key: str) -> tuple[Request, str] | None:
        row = self._db.execute(
            f"SELECT {self._COLUMNS}, params_hash FROM requests "  # noqa: S608
            "WHERE requester = ? AND idempotency_key = ?",
            (requester, key),
        ).fetchone()
        return (self._request(row[:-1]), row[-1]) if row else None

    def insert_request(self, request: Request, params_hash: str) -> None:
        r = request
        self._db.execute(
            f"INSERT INTO requests ({self._COLUMNS}, params_hash) "  # noqa: S608
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                params_hash,
            ),
        )

    def set_state(
        self, request_id: str, state: State, when: dt.datetime, message: str = ""
    ) -> None:
        self._db.execute(
            "UPDATE requests SET state = ?, updated = ?, status_message = ? WHERE id = ?",
            (state.value, format_time(when), message, request_id),
        )

    def insert_approval(self, approval: Approval) -> None:
        a = approval
        self._db.execute(
            "INSERT INTO approvals VALUES (?,?,?,?,?,?)",
            (a.request_id, a.approver, a.decision, a.envelope, format_time(a.created), a.reason),
        )

    def insert_signatures(self, request_id: str, signatures: list[bytes]) -> None:
        self._db.executemany(
            "INSERT INTO signatures VALUES (?,?,?)",
            [(request_id, i, s) for i, s in enumerate(signatures)],
        )

    def list_requests(
        self, states: frozenset[State], key_names: frozenset[str] | None, after: int, limit: int
    ) -> list[tuple[int, Request]]:
        sql = f"SELECT seq, {self._COLUMNS} FROM requests WHERE seq > ?"  # noqa: S608
        args: list[Any] = [after]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += [s.value for s in sorted(states)]
        if key_names is not None:
            sql += f" AND key_name IN ({','.join('?' * len(key_names))})"
            args += sorted(key_names)
        sql += " ORDER BY seq LIMIT ?"
        rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [(row[0], self._request(row[1:])) for row in rows]

    def count_pending(self, requester: str) -> int:
        (n,) = self._db.execute(
            "SELECT count(*) FROM requests WHERE requester = ? AND state = 'PENDING'",
            (requester,),
        ).fetchone()
        return int(n)

    def pending_due(self, now: dt.datetime) -> list[str]:
        return [
            r
            for (r,) in self._db.execute(
                "SELECT id FROM requests WHERE state = 'PENDING' AND expires <= ?",
                (format_time(now),),
            )
        ]

    def ids_in_state(self, state: State) -> list[str]:
        return [
            r
            for (r,) in self._db.execute(
                "SELECT id FROM requests WHERE state = ? ORDER BY seq", (state.value,)
            )
        ]

    # -- the Merkle tree over the log (DESIGN §6) -------------------------------

    def perfect(self, level: int, index: int) -> bytes:
        row = self._db.execute(
            "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)
        ).fetchone()
        if row is None:
            raise StoreError(
                f"audit tree node ({level}, {index}) is missing; the database is damaged"
            )
        return bytes(row[0])

    def tree_size(self) -> int:
        (last,) = self._db.execute("SELECT max(idx) FROM audit_log").fetchone()
        return 0 if last is None else int(last) + 1

    def put_checkpoint(self, size: int, note: str) -> None:
        self._db.execute("INSERT INTO checkpoints VALUES (?, ?)", (size, note))

    def checkpoint(self, size: int | None = None) -> tuple[int, str] | None:
        if size is None:
            row = self._db.execute(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT size, note FROM checkpoints WHERE size = ?", (size,)
            ).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def entries(self, start: int, end: int) -> list[bytes]:
        return [
            bytes(e)
            for (e,) in self._db.execute(
                "SELECT entry FROM audit_log WHERE idx >= ? AND idx < ? ORDER BY idx",
                (start, end),
            )
        ]

    def signed_entry(self, request_id: str) -> int | None:
        row = self._db.execute(
            "SELECT idx FROM audit_log WHERE request_id = ? AND event = 'request.signed'",
            (request_id,),
        ).fetchone()
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
        self._db.execute(
            "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?)",
            (entry.index, raw, format_time(when), event, actor, request_id, key_name),
        )
        self._db.executemany(
            "INSERT INTO audit_nodes VALUES (?,?,?)",
            merkle.new_nodes(self, size, merkle.leaf_hash(raw)),
        )
        self.appended += 1
        return entry

    def list_audit(self, f: AuditFilter, after: int, limit: int) -> list[AuditEntry]:
        sql = "SELECT entry FROM audit_log WHERE idx > ?"
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
        sql += " ORDER BY idx LIMIT ?"
        return [AuditEntry.from_bytes(bytes(e)) for (e,) in self._db.execute(sql, (*args, limit))]
