"""The audit log's last signed tree head, kept in the token (invariant 4, docs/architecture.md §14).

Whoever can write the database can edit, truncate, roll back or fork the
stored log; they cannot write the token. The token therefore keeps the tree
head (size, root) of the newest checkpoint the audit key may have released,
and the audit key signs only trees that extend it (`check_extends`: an RFC 9162
consistency proof computed from the stored nodes and verified against the
token's head). A tree smaller than the head is a rollback (AUDIT_ROLLBACK);
one of the same size with another root, or one the proof does not tie to the
head, is an edit or a fork (AUDIT_HEAD_MISMATCH).

In the token (`TokenHeads`) the head lives in two private token objects
(CKO_DATA, CKA_TOKEN, CKA_PRIVATE: no one reads or writes them without the
PIN) whose CKA_APPLICATION names the audit key, and whose CKA_LABEL holds the
head with a sequence number and the audit key's id, e.g.
`audit tree head: seq=7 size=42 root=... key=<key id>`. PKCS#11 lets every
token change a storage object's label; SoftHSM 2.6 refuses to change a data
object's CKA_VALUE. A write relabels the object holding the older of the two,
so a crash in the middle of one (a half-written SoftHSM object file, which
SoftHSM then ignores) leaves the previous head, never none: an older head is
still a prefix of the durable log (see `signer.audit.checkpoint` for the order
of the steps), so it only checks less.

`MemoryHeads` keeps the head in memory, for tests and tools without a token.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Protocol

from signer.audit import merkle
from signer.errors import AuditHeadError, TokenError, VerificationError

__all__ = [
    "MISMATCH",
    "ROLLBACK",
    "HeadStore",
    "MemoryHeads",
    "TokenHeads",
    "TokenRecords",
    "TreeHead",
    "check_extends",
]

ROLLBACK = "AUDIT_ROLLBACK"
MISMATCH = "AUDIT_HEAD_MISMATCH"
_SEE = "see `signer audit head` and deploy/backup-and-restore.md"


@dataclass(frozen=True)
class TreeHead:
    """A Merkle tree head: the first `size` entries hash to `root`."""

    size: int
    root: bytes

    @property
    def root_b64(self) -> str:
        return base64.b64encode(self.root).decode()

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "root": self.root_b64}


EMPTY = TreeHead(0, merkle.EMPTY_ROOT)


class HeadStore(Protocol):
    """Where the last signed tree head is kept (the token, or memory in tests)."""

    def read(self) -> TreeHead | None:
        """The head, or None if none was ever written."""
        ...

    def write(self, head: TreeHead) -> None: ...


def check_extends(src: merkle.NodeSource, head: TreeHead, new: TreeHead) -> None:
    """Raise AuditHeadError unless the tree `new` (read from `src`) extends `head`.

    The consistency proof is computed from the stored nodes and verified with the
    auditors' own verifier against the head's root: nothing is taken on trust
    from the store but the proof's hashes.
    """
    if head.size == 0:
        return
    if new.size < head.size:
        raise AuditHeadError(
            f"the audit log in the database has {new.size} entries but the audit key "
            f"last signed a tree of {head.size}: the database was rolled back or truncated "
            f"(an older copy restored?); the audit key signs nothing until it is consistent "
            f"again ({_SEE})",
            reason=ROLLBACK,
        )
    if new.size == head.size:
        if new.root != head.root:
            raise AuditHeadError(
                f"the audit log in the database has {new.size} entries, but not the ones the "
                f"audit key signed at that size: it was edited or forked; the audit key signs "
                f"nothing until it is consistent again ({_SEE})",
                reason=MISMATCH,
            )
        return
    proof = merkle.consistency_proof(src, head.size, new.size)
    try:
        merkle.verify_consistency(head.size, new.size, head.root, new.root, proof)
    except VerificationError as e:
        raise AuditHeadError(
            f"the audit log in the database ({new.size} entries) does not extend the "
            f"{head.size} the audit key last signed: entries before {head.size} were "
            f"changed, removed or reordered ({e}); the audit key signs nothing until it "
            f"is consistent again ({_SEE})",
            reason=MISMATCH,
        ) from None


class MemoryHeads:
    """A `HeadStore` in memory; counts its writes."""

    def __init__(self, head: TreeHead | None = None) -> None:
        self.head = head
        self.writes = 0

    def read(self) -> TreeHead | None:
        return self.head

    def write(self, head: TreeHead) -> None:
        self.head = head
        self.writes += 1


class TokenRecords(Protocol):
    """The token's private data objects of one application, in numbered slots."""

    def data_labels(self, application: str, beside: str) -> dict[int, str]:
        """CKA_LABEL of each private data object of `application`, by slot; the key
        `beside` must be found with them (a token that went away is not an empty one)."""
        ...

    def set_data_label(self, application: str, slot: int, label: str) -> None:
        """Relabel the object in `slot`, creating it (private, on the token) if absent."""
        ...


_LABEL = re.compile(
    r"(?P<key>.+) tree head: seq=(?P<seq>[0-9]{1,19}) size=(?P<size>[0-9]{1,19}) "
    r"root=(?P<root>[A-Za-z0-9+/]{43}=) key=(?P<key_id>[0-9a-f]{64})\Z"
)
_SLOTS = (0, 1)


class TokenHeads:
    """The head of audit key `audit_key` (key id `key_id`) in two token objects."""

    def __init__(self, token: TokenRecords, audit_key: str, key_id: str) -> None:
        self._token = token
        self.audit_key = audit_key
        self.key_id = key_id
        self.application = f"signer audit tree head of {audit_key}"

    def _slots(self) -> dict[int, tuple[int, TreeHead]]:
        """slot -> (sequence number, head), for the slots that hold one."""
        out = {}
        for slot, label in self._token.data_labels(self.application, self.audit_key).items():
            m = _LABEL.match(label)
            if slot not in _SLOTS or m is None or m["key"] != self.audit_key:
                raise TokenError(
                    f"the token object {self.application!r} in slot {slot} does not hold a "
                    f"tree head (label {label[:200]!r}); it was not written by this service"
                )
            if m["key_id"] != self.key_id:
                raise TokenError(
                    f"the token's tree head belongs to audit key id {m['key_id']}, not to the "
                    f"audit key {self.audit_key!r} ({self.key_id}): the audit key was replaced; "
                    f"{_SEE}"
                )
            try:
                root = base64.b64decode(m["root"], validate=True)
            except binascii.Error:
                raise TokenError(f"the token's tree head in slot {slot} is damaged") from None
            out[slot] = (int(m["seq"]), TreeHead(int(m["size"]), root))
        return out

    def read(self) -> TreeHead | None:
        slots = self._slots()
        return max(slots.values(), key=lambda s: s[0])[1] if slots else None

    def write(self, head: TreeHead) -> None:
        slots = self._slots()
        seq = max((s for s, _ in slots.values()), default=0) + 1
        target = min(_SLOTS, key=lambda n: slots[n][0] if n in slots else -1)
        label = (
            f"{self.audit_key} tree head: seq={seq} size={head.size} root={head.root_b64} "
            f"key={self.key_id}"
        )
        self._token.set_data_label(self.application, target, label)
