"""Break glass (docs/architecture.md §11): any one officer freezes a key at once; only
the quorum lifts it.

A freeze is a DSSE envelope (payload type `PAYLOAD_TYPE`, never a signing-request
approval or a policy approval) over the canonical JSON statement

    {"key_name": K, "key_id": hex, "officer": NAME, "reason": TEXT, "issued_at": RFC 3339}

signed with the officer's approval key. Any officer the policy in force names (an
approver of that key, or a policy officer) may send one; the server records it as a
`key.frozen` audit entry, and from then on no server on the store signs with the key,
nor takes a new request for it. A freeze is lifted only by a policy version adopted
after it whose key entry names the freeze's audit index in `lift_freeze`: a change the
quorum of the policy officers approved (`signer.policy_chain`). Offline, `signer audit
verify` checks each freeze's signature and refuses a signature made while a freeze held.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from signer.approval.keys import ApprovalKey, ApprovalSigner
from signer.dsse import Envelope, sign_payload
from signer.encoding import canonical_json, format_time, parse_time
from signer.errors import EnvelopeError
from signer.text import is_displayable

__all__ = ["FRESHNESS", "MAX_REASON", "PAYLOAD_TYPE", "Freeze", "sign_freeze", "verify_freeze"]

PAYLOAD_TYPE = "application/vnd.signer.key-freeze.v1+json"
FRESHNESS = dt.timedelta(minutes=5)  # how far issued_at may be from the server's clock
MAX_REASON = 1024
_FIELDS = {"key_name", "key_id", "officer", "reason", "issued_at"}


@dataclass(frozen=True)
class Freeze:
    """One officer's freeze of one key, as signed."""

    key_name: str
    key_id: str
    officer: str
    reason: str
    issued_at: dt.datetime

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "key_name": self.key_name,
                "key_id": self.key_id,
                "officer": self.officer,
                "reason": self.reason,
                "issued_at": format_time(self.issued_at),
            }
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> Freeze:
        """The statement, strictly: exact fields, canonical form; EnvelopeError if not."""
        try:
            d = json.loads(payload)
            if not isinstance(d, dict) or set(d) != _FIELDS:
                raise ValueError(f"fields must be exactly {', '.join(sorted(_FIELDS))}")
            for name in ("key_name", "key_id", "officer", "reason"):
                if not isinstance(d[name], str):
                    raise ValueError(f"{name} must be a string")
            if not d["key_name"] or not d["officer"]:
                raise ValueError("key_name and officer must not be empty")
            if not (d["reason"] and len(d["reason"]) <= MAX_REASON and is_displayable(d["reason"])):
                raise ValueError(f"reason must be 1-{MAX_REASON} displayable characters")
            freeze = cls(
                d["key_name"], d["key_id"], d["officer"], d["reason"], parse_time(d["issued_at"])
            )
        except (ValueError, TypeError, RecursionError) as e:
            raise EnvelopeError(f"not a key freeze: {str(e)[:200]}") from None
        if freeze.to_bytes() != payload:
            raise EnvelopeError("the key freeze is not in canonical JSON form")
        return freeze


def sign_freeze(freeze: Freeze, signer: ApprovalSigner) -> bytes:
    """The officer's freeze envelope, signed with their approval key."""
    return sign_payload(PAYLOAD_TYPE, freeze.to_bytes(), signer)


def verify_freeze(envelope: bytes, key: ApprovalKey) -> Freeze:
    """The freeze `envelope` holds, if `key` signed it; EnvelopeError if not."""
    env = Envelope.parse(envelope, PAYLOAD_TYPE)
    return Freeze.from_bytes(env.verified_payload(key))
