"""Audit entries: the canonical bytes that the Merkle tree will hash.

An entry is canonical JSON with exactly: index, time, event, actor,
request_id, details. Its bytes are fixed when it is appended and stored
verbatim; `from_bytes` refuses anything that is not canonical, so the leaf
hash of an entry is a function of its content alone (RFC 9162 leaf =
SHA-256(0x00 || entry)).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from signer.encoding import canonical_json, format_time, parse_time

__all__ = ["EVENTS", "AuditEntry"]

EVENTS = (
    "server.started",
    "key.generated",
    "key.openpgp_created",
    "key.frozen",
    "request.created",
    "request.approved",
    "request.denied",
    "request.quorum",
    "request.signed",
    "request.failed",
    "request.expired",
    "request.cancelled",
    "call.rejected",
    "audit.head_reset",
    "policy.proposed",
    "policy.approved",
    "policy.denied",
    "policy.adopted",
    "alert.off_hours",
    "alert.first_seen",
    "alert.burst",
)


@dataclass(frozen=True)
class AuditEntry:
    index: int
    time: dt.datetime
    event: str
    actor: str
    request_id: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "time": format_time(self.time),
            "event": self.event,
            "actor": self.actor,
            "request_id": self.request_id,
            "details": self.details,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.as_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> AuditEntry:
        d = json.loads(raw)
        entry = cls(
            d["index"], parse_time(d["time"]), d["event"], d["actor"], d["request_id"], d["details"]
        )
        if entry.to_bytes() != raw:
            raise ValueError(f"audit entry {d.get('index')} is not canonical")
        return entry
