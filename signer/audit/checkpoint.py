"""Signing checkpoints of the audit log with the audit key in the token (invariant 4).

Every transaction that appends entries ends by signing a C2SP tlog-checkpoint
for the new tree size, so a checkpoint covering an entry exists before the
call that wrote it returns. The note carries only origin, size and root, and
Ed25519 is deterministic, so two checkpoints of one size are byte-identical;
the store refuses a second one anyway.

The audit key never signs a fork or a rollback. The token keeps the head of
the newest tree whose checkpoint may have left this process
(`signer.audit.head`), and a checkpoint is made in this order:

1. inside the transaction that appended the entries (`cover`): the new tree
   must extend the token's head (a consistency proof from the stored nodes,
   verified against the head), else the whole transaction is refused and
   rolled back (AuditHeadError: UNAVAILABLE, AUDIT_ROLLBACK or
   AUDIT_HEAD_MISMATCH, logged and counted); then the note is signed, in
   memory only. A failure to sign also rolls everything back;
2. the transaction commits: the entries are durable;
3. in a follow-up transaction that no other transaction can precede
   (`Tx.after_commit`; `release`): the stored tree is checked again, the
   token's head moves to the new tree, and only then is the note stored,
   i.e. handed to the database and through it to everyone.

So the head never runs ahead of the durable log, and no note leaves the
process before its tree is durable and recorded in the token. A crash (kill -9)
or a failed commit anywhere leaves one of: nothing committed and the head
unchanged; entries committed, the head not yet moved (the stored log extends
the head, and the next checkpoint covers those entries); the head moved and
its note lost (signed again with the next one). None of these needs any slack:
a database that does not extend the head is always tampering or a restored
older copy, never a crash. In particular a database owner who watches the
statements of a transaction and makes its COMMIT fail never sees a note for a
tree that is then not durable, so cannot obtain two signed heads that
disagree. What remains is the ordinary rule: the owner can still append
entries of their own at the end (the key signs them in the next checkpoint),
and auditors and offline verification judge every entry. Replicas sharing a
token read and move the head inside the database's one write lock; an owner
who broke that lock and showed two replicas different logs could race two
head updates against each other in the token (no PKCS#11 token offers a
compare-and-swap). Independent witnesses, which would catch what the token
cannot, are planned, not built (docs/architecture.md §13).

First start on a log whose token has no head (a log older than this check):
the head is taken from the latest stored checkpoint once its signature
verifies and its root matches the stored tree (no checkpoint: the empty
tree), written to the token, and logged. That trusts the database as it is
at that moment: have auditors fetch and verify the log just before upgrading
(deploy/backup-and-restore.md, "The token remembers the last signed log").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit import merkle
from signer.audit.head import (
    EMPTY,
    MISMATCH,
    ROLLBACK,
    HeadStore,
    MemoryHeads,
    TreeHead,
    check_extends,
)
from signer.audit.note import Checkpoint, Verifier, open_checkpoint, sign_note
from signer.errors import AuditHeadError, ConflictError, VerificationError
from signer.store.base import Tx

__all__ = ["Checkpointer", "HeadStatus", "RefusalObserver"]

log = structlog.get_logger("signer.audit")

HEAD_RESET = "audit.head_reset"


class RefusalObserver(Protocol):
    """Told of each checkpoint the audit key refused to sign (the metrics)."""

    def audit_head_refused(self, reason: str) -> None: ...


@dataclass(frozen=True)
class HeadStatus:
    """The token's head and the stored tree, as `signer audit head` shows them."""

    head: TreeHead | None  # None: the token holds none yet
    tree: TreeHead  # the stored log as it is now
    problem: AuditHeadError | None  # why the audit key would refuse it, if it would

    @property
    def consistent(self) -> bool:
        return self.problem is None


class Checkpointer:
    def __init__(
        self,
        origin: str,
        public_key: ed25519.Ed25519PublicKey,
        sign: Callable[[bytes], bytes],
        heads: HeadStore | None = None,
        observer: RefusalObserver | None = None,
    ) -> None:
        self.origin = origin
        self.verifier = Verifier.for_key(origin, public_key)
        self._sign = sign
        self.heads: HeadStore = heads if heads is not None else MemoryHeads()
        self.observer = observer

    def note(self, size: int, root: bytes) -> str:
        text = Checkpoint(self.origin, size, root).text()
        return sign_note(text, self.origin, self.verifier.public_key, self._sign)

    def cover(self, tx: Tx) -> None:
        """Sign a checkpoint for the tree as `tx` leaves it, unless one exists; it is
        stored, and the token's head moved, once `tx` has committed (steps 1-3 above)."""
        size = tx.tree_size()
        if not size:
            return
        new = TreeHead(size, merkle.root(tx, size))
        # Checked even when a note of this size is stored: a truncated or restored
        # database with the real (public) later notes copied back must not be served.
        self._require(tx, self._head(tx), new)
        if tx.checkpoint(size) is not None:
            return
        note = self.note(new.size, new.root)
        tx.after_commit(lambda follow_up: self.release(follow_up, new, note))

    def release(self, tx: Tx, new: TreeHead, note: str) -> None:
        """Step 3: with `new` durable, move the token's head to it, then store its note."""
        if tx.tree_size() < new.size or merkle.root(tx, new.size) != new.root:
            self._refused(
                AuditHeadError(
                    f"the audit log in the database changed between the commit of {new.size} "
                    "entries and their checkpoint; the checkpoint was not released",
                    reason=MISMATCH,
                )
            )
        head = self._head(tx)
        if head.size > new.size:  # another process moved it on meanwhile: it must extend `new`
            size = tx.tree_size()
            if size < head.size:  # ... and be in the database
                self._require(tx, head, TreeHead(size, merkle.root(tx, size)))
            self._require(tx, new, head)
        else:
            self._require(tx, head, new)
            if new != head:
                self.heads.write(new)
        if tx.checkpoint(new.size) is None:
            tx.put_checkpoint(new.size, note)

    # -- the head ---------------------------------------------------------------------

    def _require(self, tx: Tx, head: TreeHead, new: TreeHead) -> None:
        try:
            check_extends(tx, head, new)
        except AuditHeadError as e:
            self._refused(e)

    def _refused(self, error: AuditHeadError) -> NoReturn:
        log.error(
            "the audit key refused to sign a checkpoint", reason=error.reason, error=str(error)
        )
        if self.observer is not None:
            self.observer.audit_head_refused(error.reason)
        raise error

    def _head(self, tx: Tx) -> TreeHead:
        """The token's head; on a token that holds none, the verified stored one, written."""
        head = self.heads.read()
        if head is not None:
            return head
        try:
            head = self._stored_head(tx)
        except AuditHeadError as e:
            self._refused(e)
        if head == EMPTY:
            return head  # a new log: its first checkpoint writes the first head
        self.heads.write(head)
        log.warning(
            "the token held no audit tree head: initialised from the latest stored checkpoint",
            size=head.size,
            root=head.root_b64,
        )
        return head

    def _stored_head(self, tx: Tx) -> TreeHead:
        """The latest stored checkpoint's head, once it verifies and matches the stored tree."""
        found = tx.checkpoint()
        if found is None:
            return EMPTY
        size, note = found
        try:
            cp = open_checkpoint(note, self.verifier, f"the stored checkpoint of size {size}")
        except VerificationError as e:
            raise AuditHeadError(f"{e}; the database was edited", reason=MISMATCH) from None
        if cp.size != size or tx.tree_size() < size:
            raise AuditHeadError(
                f"the stored checkpoint of size {size} covers {cp.size} entries and the log "
                f"has {tx.tree_size()}: the database was edited or truncated",
                reason=ROLLBACK,
            )
        if merkle.root(tx, size) != cp.root:
            raise AuditHeadError(
                f"the stored checkpoint of size {size} does not match the stored tree: the "
                "database was edited",
                reason=MISMATCH,
            )
        return TreeHead(size, cp.root)

    def status(self, tx: Tx) -> HeadStatus:
        """The token's head and whether the stored tree extends it (writes nothing)."""
        size = tx.tree_size()
        tree = TreeHead(size, merkle.root(tx, size))
        head = self.heads.read()
        try:
            check_extends(tx, head if head is not None else self._stored_head(tx), tree)
        except AuditHeadError as e:
            return HeadStatus(head, tree, e)
        return HeadStatus(head, tree, None)

    def reset(self, tx: Tx, actor: str, reason: str, now: dt.datetime) -> TreeHead:
        """Accept the stored log as it is: record why, move the head to it, checkpoint it.

        Refused when the stored log already extends the head. The head is written
        before the entry commits: if the commit fails, the head is ahead of the
        database and the audit key keeps refusing, so a reset never takes effect
        without its entry.
        """
        status = self.status(tx)
        if status.problem is None:
            raise ConflictError(
                f"the audit log in the database ({status.tree.size} entries) is consistent with "
                "the token's tree head; there is nothing to reset",
                reason="AUDIT_HEAD_CONSISTENT",
            )
        tx.append_audit(
            now,
            HEAD_RESET,
            actor,
            "",
            "",
            {
                "reason": reason,
                "problem": status.problem.reason,
                "previous_head": status.head.as_dict() if status.head is not None else None,
                "accepted_tree": status.tree.as_dict(),
            },
        )
        size = tx.tree_size()
        new = TreeHead(size, merkle.root(tx, size))
        self.heads.write(new)
        log.warning(
            "audit tree head reset by the operator",
            actor=actor,
            previous=status.head.as_dict() if status.head is not None else None,
            accepted=status.tree.as_dict(),
            problem=status.problem.reason,
        )
        self.cover(tx)
        return new
