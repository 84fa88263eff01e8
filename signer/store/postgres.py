"""PostgreSQL store, for several server replicas on one database (docs/architecture.md §7).

Every transaction starts by taking one transaction-scoped advisory lock, so
write transactions from all replicas run one at a time, as SQLite's `BEGIN
IMMEDIATE` makes them in one process: two approvals of one request arriving on
two replicas are decided in order, and audit appends stay one linear log (the
database serializes them; no two checkpoints of one size can differ). A
transaction with follow-ups (`Tx.after_commit`: the audit checkpoint) takes the
same lock at session level before it commits and drops it once they have run,
so no replica reads its writes without theirs.

Times are RFC 3339 text in UTC, compared byte-wise (`COLLATE "C"`) whatever
the database's locale. A trigger on `requests` sends `NOTIFY signer_requests, '<id>'` with every
insert and state change; PostgreSQL delivers it only when the transaction
commits. `subscribe` runs a listener thread that hands each id to the server,
so a client waiting on one replica hears of a decision made on another.

Connections come from a psycopg pool that checks each one before use: while
the database is down, calls fail with `StoreError` (UNAVAILABLE) and nothing
is half-written; once it is back, new connections are made without a restart.
The audit tables refuse UPDATE, DELETE, TRUNCATE and out-of-order inserts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool
import structlog

from signer.errors import StoreError
from signer.store.base import Store, Tx
from signer.store.schema import Dialect, frozen_keys, outbox, pending, tables
from signer.store.sql import SqlTx

__all__ = ["PostgresStore", "redact"]

log = structlog.get_logger("signer.store")

# pg_advisory_xact_lock key: "signer" as an integer; one lock for every write.
_LOCK = int.from_bytes(b"signer", "big")
_CHANNEL = "signer_requests"
_DIALECT = Dialect(
    seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    big="BIGINT",
    blob="BYTEA",
    empty="''",
    time='TEXT COLLATE "C"',
)
_FUNCTIONS_AND_TRIGGERS = """\
CREATE FUNCTION signer_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$;
CREATE FUNCTION signer_audit_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.idx IS DISTINCT FROM (SELECT coalesce(max(idx), -1) + 1 FROM audit_log) THEN
        RAISE EXCEPTION 'the audit log is append-only: entries are added at the end';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_append_only BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION signer_audit_append();
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION signer_refuse('the audit log is append-only');
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION signer_refuse('the audit log is append-only');
CREATE TRIGGER audit_nodes_no_change BEFORE UPDATE OR DELETE ON audit_nodes
    FOR EACH ROW EXECUTE FUNCTION signer_refuse('the audit tree is append-only');
CREATE TRIGGER audit_nodes_no_truncate BEFORE TRUNCATE ON audit_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION signer_refuse('the audit tree is append-only');
CREATE TRIGGER checkpoints_no_change BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION signer_refuse('checkpoints are never changed');
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION signer_refuse('checkpoints are never changed');
CREATE FUNCTION signer_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('signer_requests', NEW.id); RETURN NULL; END $$;
CREATE TRIGGER requests_notify AFTER INSERT OR UPDATE ON requests
    FOR EACH ROW EXECUTE FUNCTION signer_notify();
"""
SCHEMA_VERSION = 3
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, tables(_DIALECT, with_v2_columns=True) + _FUNCTIONS_AND_TRIGGERS),
    (2, frozen_keys(_DIALECT)),  # v2: the keys an officer froze
    (3, outbox(_DIALECT)),  # v3: notifications still to deliver
)


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, db = info.get("host", ""), info.get("dbname", "")
    return f"postgresql://{info.get('user', '')}@{host}:{info.get('port', 5432)}/{db}"


def schema_of(url: str, password: str | None, timeout: float = 5.0) -> tuple[int, int]:
    """The database's schema version (0: none yet), read in a read-only session, and
    this server's."""
    current = max(target for target, _ in _MIGRATIONS)
    kwargs: dict[str, Any] = {"connect_timeout": max(1, round(timeout))}
    if password is not None:
        kwargs["password"] = password
    try:
        with psycopg.connect(url, **kwargs) as conn:
            conn.read_only = True
            row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0, current
            found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except psycopg.Error as e:
        raise StoreError(
            f"cannot open database {redact(url)}: {_why(e).removeprefix('connection failed: ')}"
        ) from None
    return int((found[0] if found else None) or 0), current


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        password: str | None = None,
        pool_size: int = 8,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self._where = redact(url)
        self._password = password
        self._timeout = connect_timeout
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        kwargs: dict[str, Any] = {"connect_timeout": max(1, round(connect_timeout))}
        if password is not None:
            kwargs["password"] = password
        self._kwargs = kwargs
        self._pool = psycopg_pool.ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=max(1, pool_size),
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=connect_timeout,
            reconnect_timeout=0,  # keep trying for as long as the server runs
            name="signer",
            open=False,
        )
        try:
            with _quiet_pool():  # the cause is said once, below, not per attempt
                self._pool.open(wait=True, timeout=connect_timeout)
            self._migrate()
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            raise StoreError(f"cannot open database {self._where}: {self._cause()}") from None
        except psycopg.Error as e:
            self._pool.close()
            raise StoreError(f"cannot open database {self._where}: {_why(e)}") from None
        except BaseException:
            self._pool.close()
            raise

    def _cause(self) -> str:
        """Why no connection could be made: one direct attempt's error, in its words."""
        try:
            psycopg.connect(self.url, **self._kwargs).close()
        except psycopg.Error as e:
            return _why(e).removeprefix("connection failed: ")
        return f"no connection within {self._timeout:g} s"

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            # Replicas starting together migrate one at a time.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            version = (row[0] if row else None) or 0
            for target, script in pending(version, _MIGRATIONS, self._where):
                conn.execute(script.encode())
                conn.execute("INSERT INTO schema_version VALUES (%s)", (target,))

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn:
                tx = _PostgresTx(conn)
                held = False  # the session lock, which a failed commit would not release
                try:
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
                        yield tx
                        if tx.follow_ups:  # a session lock outlives the commit, until they ran
                            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK,))
                            held = True
                except BaseException:
                    if held:
                        conn.close()  # ending the session is what releases it
                    raise
                tx.committed = True
                if tx.follow_ups:
                    self._follow_up(conn, tx)
        except psycopg_pool.PoolTimeout as e:
            raise StoreError(f"the database {self._where} is unreachable: {_why(e)}") from None
        except psycopg.Error as e:
            raise StoreError(f"the database (audit log) could not be written: {_why(e)}") from e

    @staticmethod
    def _follow_up(conn: psycopg.Connection[Any], tx: Tx) -> None:
        """Run `tx`'s follow-ups, each in its own transaction, then drop the session lock."""
        try:
            for then in tx.follow_ups:
                with conn.transaction():
                    then(_PostgresTx(conn))
        finally:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK,))
            except psycopg.Error:
                conn.close()  # a lock left held would stall every replica: end the session

    def subscribe(self, changed: Callable[[str], None]) -> None:
        """Call `changed(request_id)` for every request change committed by any replica."""
        if self._listener is not None:
            raise RuntimeError("already subscribed")
        self._listener = threading.Thread(
            target=self._listen, args=(changed,), name="store-listener", daemon=True
        )
        self._listener.start()

    def _listen(self, changed: Callable[[str], None]) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {_CHANNEL}")
                    backoff = 0.1
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            changed(n.payload)
            except psycopg.Error as e:
                if self._stop.is_set():
                    return
                log.warning("database listener lost its connection; reconnecting", error=_why(e))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        self._pool.close()


@contextmanager
def _quiet_pool() -> Iterator[None]:
    """The pool's own warnings held back (each failed attempt logs the driver's text)."""
    logger = logging.getLogger("psycopg.pool")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _why(e: BaseException) -> str:
    """The first line of a database error (never the connection string)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class _PostgresTx(SqlTx):
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__()
        self._conn = conn

    @staticmethod
    def _sql(sql: str) -> bytes:
        return sql.replace("?", "%s").encode()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(self._sql(sql), args).fetchall()

    def _run(self, sql: str, args: Sequence[Any] = ()) -> None:
        self._conn.execute(self._sql(sql), args)

    def _run_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)
