"""The tables every backend creates, written once in each dialect's words.

A schema version once released is never edited: a database created by it is
migrated forward by the later versions' scripts. Both backends build their first
version from `tables()` and check a database's version with `pending()`, which
refuses a database newer than the server (it would be read wrongly, not safely).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from signer.errors import StoreError

__all__ = ["Dialect", "frozen_keys", "outbox", "pending", "tables"]

# Columns added to `requests` after the first SQLite schema (the OIDC caller, a DSSE payload).
_REQUEST_V2 = """    caller TEXT,
    payload_type TEXT NOT NULL DEFAULT '',
    payload {blob} NOT NULL DEFAULT {empty},
"""

# v3: the keys an officer froze (docs/architecture.md §11), read in every signing transaction.
_FROZEN_KEYS = """
CREATE TABLE frozen_keys (
    key_name TEXT PRIMARY KEY,
    since_index {big} NOT NULL,
    officer TEXT NOT NULL,
    reason TEXT NOT NULL,
    frozen_at {time} NOT NULL
)
"""

# v4 (PostgreSQL v3): the notifications still to deliver, how far each sink has read, and
# the indexes that count a key's recent signatures (its limits) and requests (bursts), and
# who and where each key has seen (alerts) and has signed for (unusual requests), and why a
# request was unusual when made.
_OUTBOX = """
CREATE TABLE outbox (
    sink TEXT NOT NULL,
    idx {big} NOT NULL,
    created {time} NOT NULL,
    due {time} NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT '',
    lease_until {time} NOT NULL DEFAULT '',
    last_error TEXT NOT NULL DEFAULT '',
    dead INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, idx)
);
CREATE INDEX outbox_due ON outbox (sink, dead, due);
CREATE INDEX outbox_given_up ON outbox (dead, due);
CREATE TABLE outbox_cursors (
    sink TEXT PRIMARY KEY,
    after_idx {big} NOT NULL
);
CREATE INDEX requests_signed ON requests (key_name, state, updated);
CREATE INDEX requests_key_created ON requests (key_name, created);
CREATE TABLE seen (
    key_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    first_index {big} NOT NULL,
    PRIMARY KEY (key_name, kind, value)
);
CREATE TABLE signed_values (
    key_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key_name, kind, value)
);
ALTER TABLE requests ADD COLUMN unusual TEXT NOT NULL DEFAULT ''
"""

_TABLES = """
CREATE TABLE requests (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    key_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    requester TEXT NOT NULL,
    digests TEXT NOT NULL,
    context TEXT NOT NULL,
    state TEXT NOT NULL,
    created {time} NOT NULL,
    expires {time} NOT NULL,
    updated {time} NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    idempotency_key TEXT,
    params_hash TEXT NOT NULL,
{request_v2}    UNIQUE (requester, idempotency_key)
);
CREATE INDEX requests_state ON requests (state, expires);
CREATE INDEX requests_requester ON requests (requester, state);
CREATE TABLE approvals (
    request_id TEXT NOT NULL REFERENCES requests (id),
    approver TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    envelope {blob} NOT NULL,
    created {time} NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (request_id, approver)
);
CREATE TABLE signatures (
    request_id TEXT NOT NULL REFERENCES requests (id),
    idx INTEGER NOT NULL,
    signature {blob} NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE TABLE audit_log (
    idx {big} PRIMARY KEY,
    entry {blob} NOT NULL,
    time {time} NOT NULL,
    event TEXT NOT NULL,
    actor TEXT NOT NULL,
    request_id TEXT NOT NULL,
    key_name TEXT NOT NULL
);
CREATE INDEX audit_request ON audit_log (request_id);
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL,
    idx {big} NOT NULL,
    hash {blob} NOT NULL,
    PRIMARY KEY (level, idx)
){node_options};
CREATE TABLE checkpoints (
    size {big} PRIMARY KEY,
    note TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Dialect:
    """The words one SQL dialect spells the shared tables with."""

    seq: str  # an increasing row number, the creation order of requests
    big: str  # a 64-bit integer
    blob: str  # bytes
    empty: str  # the empty bytes literal
    time: str  # RFC 3339 text that must sort byte-wise
    node_options: str = ""  # after the audit_nodes table


def tables(dialect: Dialect, *, with_v2_columns: bool) -> str:
    """The CREATE statements of the shared tables (`requests` with or without the v2 columns)."""
    words = {
        "seq": dialect.seq,
        "big": dialect.big,
        "blob": dialect.blob,
        "empty": dialect.empty,
        "time": dialect.time,
        "node_options": dialect.node_options,
    }
    v2 = _REQUEST_V2.format(**words) if with_v2_columns else ""
    return _TABLES.format(request_v2=v2, **words)


def frozen_keys(dialect: Dialect) -> str:
    """The CREATE statement of the v3 `frozen_keys` table."""
    return _FROZEN_KEYS.format(big=dialect.big, time=dialect.time)


def outbox(dialect: Dialect) -> str:
    """The CREATE statements of the outbox tables (SQLite v4, PostgreSQL v3)."""
    return _OUTBOX.format(big=dialect.big, time=dialect.time)


def pending(
    version: int, migrations: Sequence[tuple[int, str]], where: str
) -> list[tuple[int, str]]:
    """The migrations a database at `version` still needs, in order; a newer one is refused."""
    current = max(target for target, _ in migrations)
    if version > current:
        raise StoreError(
            f"database {where} has schema {version}, newer than this "
            f"server's {current}; upgrade the server"
        )
    return [(target, script) for target, script in migrations if version < target]
