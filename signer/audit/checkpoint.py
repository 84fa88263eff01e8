"""Signing checkpoints of the audit log with the audit key in the token (invariant 4).

Every transaction that appends entries ends by signing a C2SP tlog-checkpoint
for the new tree size, in the same transaction, so a checkpoint covering an
entry exists before the call that wrote it returns. The note carries only
origin, size and root, and Ed25519 is deterministic, so two checkpoints of one
size are byte-identical; the store refuses a second one anyway.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit import merkle
from signer.audit.note import Checkpoint, Verifier, sign_note
from signer.store.base import Tx

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(
        self, origin: str, public_key: ed25519.Ed25519PublicKey, sign: Callable[[bytes], bytes]
    ) -> None:
        self.origin = origin
        self.verifier = Verifier.for_key(origin, public_key)
        self._sign = sign

    def note(self, size: int, root: bytes) -> str:
        text = Checkpoint(self.origin, size, root).text()
        return sign_note(text, self.origin, self.verifier.public_key, self._sign)

    def cover(self, tx: Tx) -> None:
        """Sign and store a checkpoint for the tree as `tx` leaves it, unless one exists."""
        size = tx.tree_size()
        if size and tx.checkpoint(size) is None:
            tx.put_checkpoint(size, self.note(size, merkle.root(tx, size)))
