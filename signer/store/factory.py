"""Opens the store a config names: a SQLite file (default) or a PostgreSQL database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from signer.store.base import Store

if TYPE_CHECKING:
    from signer.server.config import StoreConfig

__all__ = ["open_store", "schema_of"]


def open_store(config: StoreConfig) -> Store:
    """The store a config names: a SQLite file (default) or a PostgreSQL database."""
    if config.path is not None:
        from signer.store.sqlite import SqliteStore

        return SqliteStore(config.path)
    from signer.store.postgres import PostgresStore  # psycopg only when it is used

    return PostgresStore(config.url, config.read_password(), pool_size=config.pool_size)


def schema_of(config: StoreConfig) -> tuple[int | None, int]:
    """The schema version of the store a config names (None: no SQLite file yet; 0: no
    schema yet) and this server's, read without writing anything."""
    if config.path is not None:
        from signer.store import sqlite

        return sqlite.schema_of(config.path)
    from signer.store import postgres

    return postgres.schema_of(config.url, config.read_password())
