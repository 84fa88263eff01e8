"""Read-only access to the audit log: pages of entries, the latest checkpoint, raw
entries and Merkle proofs (docs/architecture.md §6).

What the audit servicer and the request servicer's proof of a signature read.
Nothing here appends, so nothing here can break invariant 3; every range is
checked against the log's size before the store is read (invariant 8), and a
page never exceeds one page's bytes. A mixin of the core (its servicers and
tests ask the core), it needs only the core's `_tx`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.audit.proofs import SignedProof
from signer.errors import InvalidArgumentError, NotFoundError
from signer.store.base import PAGE_BYTES, AuditFilter, Tx

__all__ = ["AuditReader"]


class AuditReader:
    """The audit log's read side, over the transactions `_tx` opens."""

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def list_audit(self, f: AuditFilter, after: int, limit: int) -> list[AuditEntry]:
        """A page of matching entries: at most `limit`, within one page's bytes (one at least)."""
        with self._tx() as tx:
            return tx.list_audit(f, after, limit, PAGE_BYTES)

    def latest_checkpoint(self) -> tuple[int, str]:
        with self._tx() as tx:
            found = tx.checkpoint()
        if found is None:
            raise NotFoundError("the audit log has no checkpoint yet", reason="NO_CHECKPOINT")
        return found

    def entries(self, start: int, end: int) -> list[bytes]:
        with self._tx() as tx:
            size = tx.tree_size()
            if not 0 <= start <= size or end < start:
                raise InvalidArgumentError(
                    f"entries [{start}, {end}) are outside the log of {size} entries",
                    reason="BAD_RANGE",
                )
            return tx.entries(start, min(end, size, start + 1000), PAGE_BYTES)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._tx() as tx:
            current = tx.tree_size()
            if not 0 <= index < size <= current:
                raise InvalidArgumentError(
                    f"need 0 <= index < tree_size <= {current}; got index {index}, "
                    f"tree_size {size}",
                    reason="BAD_RANGE",
                )
            return merkle.inclusion_proof(tx, index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self._tx() as tx:
            current = tx.tree_size()
            if not 0 < first <= second <= current:
                raise InvalidArgumentError(
                    f"need 0 < first <= second <= {current}; got {first}, {second}",
                    reason="BAD_RANGE",
                )
            return merkle.consistency_proof(tx, first, second)

    def audit_proof(self, request_id: str) -> SignedProof | None:
        """Where a SIGNED request's request.signed entry is, proven in the latest checkpoint."""
        with self._tx() as tx:
            index = tx.signed_entry(request_id)
            found = tx.checkpoint()
            if index is None or found is None or found[0] <= index:
                return None
            size, note = found
            return SignedProof(
                index,
                tx.entries(index, index + 1)[0],
                size,
                merkle.inclusion_proof(tx, index, size),
                note,
            )
