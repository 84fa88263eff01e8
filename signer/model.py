"""Domain records: signing requests, digests, approvals (DESIGN §4).

Plain frozen dataclasses; no gRPC, SQL or PKCS#11 here.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TERMINAL", "Approval", "Digest", "Request", "State"]


class State(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    SIGNED = "SIGNED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


TERMINAL = frozenset({State.SIGNED, State.DENIED, State.EXPIRED, State.CANCELLED, State.FAILED})


@dataclass(frozen=True)
class Digest:
    algorithm: str  # sha256 | sha384 | sha512
    value: bytes
    artifact: str

    def as_dict(self) -> dict[str, str]:
        """The form bound by approval statements and audit entries."""
        return {"algorithm": self.algorithm, "digest": self.value.hex(), "artifact": self.artifact}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Digest:
        return cls(d["algorithm"], bytes.fromhex(d["digest"]), d["artifact"])


@dataclass(frozen=True)
class Approval:
    request_id: str
    approver: str
    decision: str  # approve | deny
    envelope: bytes
    created: dt.datetime
    reason: str = ""


@dataclass(frozen=True)
class Request:
    id: str
    key_name: str
    key_id: str
    algorithm: str
    requester: str
    digests: tuple[Digest, ...]
    context: dict[str, str]
    state: State
    created: dt.datetime
    expires: dt.datetime
    updated: dt.datetime
    status_message: str = ""
    idempotency_key: str = ""
    approvals: tuple[Approval, ...] = field(default=())
    signatures: tuple[bytes, ...] = field(default=())

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL
