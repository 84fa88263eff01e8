"""Schema migrations, applied at start on both backends.

A SQLite file made by the first schema is upgraded in place and its requests read
back; a database from a newer server is refused with a message that says to
upgrade; reopening an up-to-date database changes nothing; replicas starting at
the same moment on one empty PostgreSQL database migrate it exactly once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from signer.errors import StoreError
from signer.model import State
from signer.store import sqlite as sqlite_store
from signer.store.base import Store
from testbed.env import Db
from testbed.pg import PgServer

_V1_REQUEST = (
    "INSERT INTO requests (id, key_name, key_id, algorithm, requester, digests, context, "
    "state, created, expires, updated, params_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_RID = "0b5b7a8e-1f2c-4d3e-8a9b-0c1d2e3f4a5b"


def _versions(db: Db) -> list[int]:
    return [int(v) for (v,) in db.rows("SELECT version FROM schema_version ORDER BY version")]


@pytest.mark.sqlite_only  # the SQLite file's own upgrade path
def test_a_first_schema_sqlite_file_is_upgraded_and_its_requests_read(tmp_path: Path) -> None:
    """A v1 file gains the v2 columns at start; a request it held reads back unchanged."""
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER)")
        for stmt in sqlite_store._SCHEMA.split(";\n"):
            if stmt.strip():
                db.execute(stmt)
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute(
            _V1_REQUEST,
            (
                _RID,
                "release",
                "ab" * 32,
                "ecdsa-p256",
                "ci",
                '[{"algorithm":"sha256","artifact":"app.tar","digest":"' + "00" * 32 + '"}]',
                '{"commit":"abc"}',
                "PENDING",
                "2026-01-02T03:04:05.000000Z",
                "2026-01-02T04:04:05.000000Z",
                "2026-01-02T03:04:05.000000Z",
                "p" * 64,
            ),
        )
    store = sqlite_store.SqliteStore(path)
    try:
        with store.transaction() as tx:
            r = tx.get_request(_RID)
    finally:
        store.close()
    assert _versions(Db(f"sqlite:///{path}")) == [1, 2, 3, 4]
    assert r is not None and r.state is State.PENDING
    assert (r.caller, r.payload_type, r.payload) == (None, "", b"")
    assert r.digests[0].artifact == "app.tar" and r.context == {"commit": "abc"}


def test_a_database_from_a_newer_server_is_refused(new_db: Callable[[], Db]) -> None:
    """A schema newer than this server's: StoreError saying to upgrade; nothing changes."""
    db = new_db()
    db.open().close()
    db.rows("INSERT INTO schema_version VALUES (99)")
    before = _versions(db)
    with pytest.raises(StoreError, match=r"newer than this server.s .*upgrade the server"):
        db.open()
    assert _versions(db) == before


def test_reopening_an_up_to_date_database_applies_nothing(new_db: Callable[[], Db]) -> None:
    """Every start runs the migrations; on a current database they are no-ops."""
    db = new_db()
    db.open().close()
    first = _versions(db)
    db.open().close()
    assert _versions(db) == first and first == sorted(set(first))


def test_replicas_starting_together_migrate_once(pg: PgServer) -> None:
    """Three stores opening one empty PostgreSQL database at once: one migration, all open."""
    replicas = 3
    db = Db(pg.database("migrate"), pg.password_file)
    opened: list[Store | BaseException] = []
    start = threading.Barrier(replicas)

    def open_one() -> None:
        start.wait(60)
        try:
            opened.append(db.open())
        except BaseException as e:
            opened.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stores = [s for s in opened if isinstance(s, Store)]
    assert len(stores) == replicas, opened
    for s in stores:
        s.close()
    versions = _versions(db)
    assert versions == sorted(set(versions)) and versions[-1] >= 1
