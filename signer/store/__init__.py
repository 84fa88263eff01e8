"""Persistence of requests, approvals, signatures and the audit log."""

from signer.store.base import AuditFilter, Store, Tx
from signer.store.sqlite import SqliteStore

__all__ = ["AuditFilter", "SqliteStore", "Store", "Tx"]
