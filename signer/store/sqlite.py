"""SQLite store: one file, WAL, synchronous=FULL (docs/architecture.md §7).

Writes go through `BEGIN IMMEDIATE ... COMMIT` on one connection guarded by a
lock, so a transaction sees and changes a consistent state and concurrent
approvals of one request are serialized. The audit table is append-only:
triggers abort any UPDATE or DELETE, and any INSERT (including INSERT OR
REPLACE) that is not at the next index. Every `sqlite3.Error` becomes a
`StoreError` here, which the service reports as UNAVAILABLE (fail closed).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from signer.errors import StoreError
from signer.store.base import Store, Tx
from signer.store.schema import Dialect, frozen_keys, outbox, pending, tables
from signer.store.sql import SqlTx

__all__ = ["SqliteStore"]

SCHEMA_VERSION = 4
# v2: the OIDC caller (issuer, claims, barred approvers) and a DSSE payload per request.
_SCHEMA_V2 = """
ALTER TABLE requests ADD COLUMN caller TEXT;
ALTER TABLE requests ADD COLUMN payload_type TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN payload BLOB NOT NULL DEFAULT x''
"""
_DIALECT = Dialect(
    seq="INTEGER PRIMARY KEY AUTOINCREMENT",
    big="INTEGER",
    blob="BLOB",
    empty="x''",
    time="TEXT",
    node_options=" WITHOUT ROWID",
)
_TRIGGERS = """\
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
_SCHEMA = tables(_DIALECT, with_v2_columns=False) + _TRIGGERS
_MIGRATIONS = (
    (1, _SCHEMA),
    (2, _SCHEMA_V2),
    (3, frozen_keys(_DIALECT)),
    (4, outbox(_DIALECT)),
)


def schema_of(path: Path) -> tuple[int | None, int]:
    """The schema version of the database at `path` (None: no file; 0: no schema yet),
    read without writing anything, and this server's."""
    current = max(target for target, _ in _MIGRATIONS)
    if not path.exists():
        return None, current
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open database {path}: {e}") from None
    try:
        row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError:
        return 0, current
    except sqlite3.Error as e:
        raise StoreError(f"cannot read database {path}: {e}") from None
    finally:
        db.close()
    return int(row[0] or 0), current


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
                for target, script in pending(row[0] or 0, _MIGRATIONS, str(self.path)):
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
            tx = _SqliteTx(self._db)
            with self._one(tx):
                yield tx
            tx.committed = True
            # Follow-ups run under the same lock: nothing else of this store runs between.
            for then in tx.follow_ups:
                with self._one(_SqliteTx(self._db)) as follow_up:
                    then(follow_up)

    @contextmanager
    def _one(self, tx: _SqliteTx) -> Iterator[_SqliteTx]:
        """BEGIN IMMEDIATE ... COMMIT around the body; roll back if it raises."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise StoreError(f"the database cannot be written: {e}") from e
        try:
            yield tx
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


class _SqliteTx(SqlTx):
    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__()
        self._db = db

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, args).fetchall()

    def _run(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._db.execute(sql, args)

    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)
