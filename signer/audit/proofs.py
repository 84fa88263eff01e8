"""Client-side check that a signature is on the record (invariant 4, docs/architecture.md §6).

Before `signer sign` writes a signature it checks, with only the pinned audit
verifier key: the checkpoint's signature, that the request.signed entry is
included in that checkpoint's tree, and that the entry names this request,
this key and exactly these signatures. A server that signed off the record,
or showed a different log to this client, is caught here.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.audit.note import Checkpoint, Verifier, open_checkpoint
from signer.errors import VerificationError

__all__ = ["SignedProof", "verify_signed_proof"]


@dataclass(frozen=True)
class SignedProof:
    """An entry, its RFC 9162 inclusion proof and the signed checkpoint it is proven in."""

    index: int
    entry: bytes
    tree_size: int
    inclusion_proof: list[bytes]
    checkpoint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "entry": base64.b64encode(self.entry).decode(),
            "tree_size": self.tree_size,
            "inclusion_proof": [base64.b64encode(h).decode() for h in self.inclusion_proof],
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignedProof:
        try:
            return cls(
                int(d["index"]),
                base64.b64decode(d["entry"], validate=True),
                int(d["tree_size"]),
                [base64.b64decode(h, validate=True) for h in d["inclusion_proof"]],
                str(d["checkpoint"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise VerificationError(f"malformed audit proof: {e}") from None


def verify_signed_proof(
    proof: SignedProof,
    verifier: Verifier,
    request_id: str,
    key_id: str,
    signatures: list[bytes],
) -> Checkpoint:
    """Raise VerificationError unless the proof puts exactly these signatures on the log."""
    checkpoint = open_checkpoint(proof.checkpoint, verifier)
    if checkpoint.size != proof.tree_size:
        raise VerificationError(
            f"the checkpoint is for {checkpoint.size} entries, the proof for {proof.tree_size}"
        )
    merkle.verify_inclusion(
        merkle.leaf_hash(proof.entry),
        proof.index,
        proof.tree_size,
        proof.inclusion_proof,
        checkpoint.root,
    )
    try:
        entry = AuditEntry.from_bytes(proof.entry)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise VerificationError(f"the audit entry is malformed: {e}") from None
    expected = [hashlib.sha256(s).hexdigest() for s in signatures]
    problems = [
        what
        for what, ok in (
            ("index", entry.index == proof.index),
            ("event", entry.event == "request.signed"),
            ("request id", entry.request_id == request_id),
            ("key id", entry.details.get("key_id") == key_id),
            ("signatures", entry.details.get("signature_sha256") == expected),
        )
        if not ok
    ]
    if problems:
        raise VerificationError(
            f"the audit entry does not match the signed request: {', '.join(problems)} differ"
        )
    return checkpoint
