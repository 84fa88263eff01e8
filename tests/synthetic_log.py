"""Small synthetic audit logs, signed with in-memory keys and written as `audit fetch` writes them.

`Synth` builds one policy, one request, its decisions and its signature, entry
by entry, so a test can make a log that is correctly signed but wrong in one
way; `valid_quorum` adds a 2-of-3 flow that verifies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.keys import ApprovalSigner
from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.audit.note import Checkpoint, Verifier, sign_note
from signer.dsse import Statement, sign_statement
from signer.encoding import canonical_json
from signer.model import Digest, Manifest

__all__ = ["OFFICERS", "Synth", "valid_quorum", "write_lines"]


_ORIGIN = "example.test/synthetic"
OFFICERS = ("alice", "bob", "carol", "dave")
_KEY_ID = "ab" * 32


def write_lines(d: Path, lines: list[bytes]) -> None:
    (d / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


@dataclasses.dataclass
class Synth:
    """A small log: one policy, one request, its decisions and its signature."""

    keys: dict[str, ApprovalSigner]
    entries: list[AuditEntry] = dataclasses.field(default_factory=list)
    rid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    digests: tuple[Digest, ...] = (Digest("sha256", hashlib.sha256(b"app").digest(), "app.tar"),)
    t0: dt.datetime = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    def add(self, event: str, actor: str, details: dict[str, Any], rid: str | None = None) -> int:
        i = len(self.entries)
        when = self.t0 + dt.timedelta(seconds=i)
        self.entries.append(
            AuditEntry(i, when, event, actor, self.rid if rid is None else rid, details)
        )
        return i

    def policy(
        self, approvers: tuple[str, ...] = ("alice", "bob", "carol"), **key_as: str
    ) -> dict[str, Any]:
        """Like `Config.policy_document`; `key_as` registers an officer under another's key."""
        return {
            "keys": {
                "release": {
                    "name": "release",
                    "algorithm": "ecdsa-p256",
                    "approvers": sorted(approvers),
                    "threshold": 2,
                    "requesters": ["carol", "ci"],
                    "max_ttl_seconds": 3600,
                }
            },
            "identities": {"ci": ["requester"], **{o: ["approver"] for o in OFFICERS}},
            "approver_keys": {
                o: self.keys[key_as.get(o, o)].public_key().policy_value() for o in OFFICERS
            },
            "access": {},
            "audit_key": "audit",
        }

    def started(self, policy: dict[str, Any], policy_hash: str | None = None) -> int:
        digest = policy_hash or hashlib.sha256(canonical_json(policy)).hexdigest()
        return self.add(
            "server.started",
            "signer",
            {"policy": policy, "policy_hash": digest, "version": "0"},
            rid="",
        )

    def created(self, requester: str = "ci") -> int:
        return self.add(
            "request.created",
            requester,
            {
                "key_name": "release",
                "key_id": _KEY_ID,
                "algorithm": "ecdsa-p256",
                "requester": requester,
                "digests": [d.as_dict() for d in self.digests],
                "threshold": 2,
            },
        )

    def decided(
        self,
        officer: str,
        decision: str = "approve",
        signer: str | None = None,
        digests: tuple[Digest, ...] | None = None,
        manifest: Manifest | None = None,
    ) -> int:
        st = Statement(
            self.rid,
            "release",
            _KEY_ID,
            () if manifest else digests or self.digests,
            decision,
            officer,
            self.t0,
            "no" if decision == "deny" else "",
            manifest=manifest,
        )
        envelope = sign_statement(st, self.keys[signer or officer]).decode()
        details = {"approver": officer, "envelope": envelope}
        if decision == "deny":
            return self.add("request.denied", officer, {**details, "reason": "no"})
        return self.add("request.approved", officer, details)

    def signed(self, approvers: list[str]) -> int:
        return self.add(
            "request.signed",
            "signer",
            {"key_id": _KEY_ID, "approvers": approvers, "signature_sha256": ["00" * 32]},
        )

    def write(self, d: Path, audit_key: ed25519.Ed25519PrivateKey) -> str:
        """entries.jsonl, checkpoint and checkpoints/N.note as `audit fetch` writes them."""
        raw = [e.to_bytes() for e in self.entries]
        size, root = merkle.root_from_leaves(merkle.leaf_hash(r) for r in raw)
        note = sign_note(
            Checkpoint(_ORIGIN, size, root).text(), _ORIGIN, audit_key.public_key(), audit_key.sign
        )
        (d / "checkpoints").mkdir(parents=True)
        write_lines(d, raw)
        (d / "checkpoint").write_text(note)
        (d / "checkpoints" / f"{size}.note").write_text(note)
        return str(Verifier.for_key(_ORIGIN, audit_key.public_key()))


def valid_quorum(s: Synth, policy: dict[str, Any] | None = None) -> int:
    s.started(policy if policy is not None else s.policy())
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.add("request.quorum", "bob", {"approvers": ["alice", "bob"], "threshold": 2})
    return s.signed(["alice", "bob"])
