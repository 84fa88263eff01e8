"""Persistence of requests, approvals, signatures and the audit log.

The package itself holds only the interface (`signer.store.base`), so that the
core can name a store without loading a database driver; `signer.store.factory`
opens the backend a config names.
"""

from __future__ import annotations

from signer.store.base import AuditFilter, Store, Tx

__all__ = ["AuditFilter", "Store", "Tx"]
