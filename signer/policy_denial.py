"""An officer's denial of a proposed policy version (docs/architecture.md §11), signed
as approvals are.

A denial is a DSSE envelope (payload type `PAYLOAD_TYPE`: never an approval of a
policy version, of a signing request or a freeze) over the canonical JSON statement

    {"version": N, "policy_sha256": hex, "previous_sha256": hex or "",
     "officer": NAME, "reason": TEXT, "issued_at": RFC 3339}

A proposal is rejected once its denials leave fewer officers than a threshold of
either the version in force or the proposed one (`rejected`): no quorum can complete
it any more. One denial alone rejects nothing unless the rule says so.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection
from dataclasses import dataclass

from signer.approval.keys import ApprovalKey, ApprovalSigner
from signer.dsse import Envelope, sign_payload
from signer.encoding import canonical_json, format_time, parse_time
from signer.errors import EnvelopeError
from signer.freeze import MAX_REASON
from signer.policy_chain import Officers
from signer.text import is_displayable

__all__ = ["PAYLOAD_TYPE", "PolicyDenial", "rejected", "sign_denial", "verify_denial"]

PAYLOAD_TYPE = "application/vnd.signer.policy-denial.v1+json"
_FIELDS = {"version", "policy_sha256", "previous_sha256", "officer", "reason", "issued_at"}


@dataclass(frozen=True)
class PolicyDenial:
    """One officer's denial of one proposed policy version, as signed."""

    version: int
    policy_sha256: str
    previous_sha256: str
    officer: str
    reason: str
    issued_at: dt.datetime

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "version": self.version,
                "policy_sha256": self.policy_sha256,
                "previous_sha256": self.previous_sha256,
                "officer": self.officer,
                "reason": self.reason,
                "issued_at": format_time(self.issued_at),
            }
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> PolicyDenial:
        """The statement, strictly: exact fields, canonical form; EnvelopeError if not."""
        try:
            d = json.loads(payload)
            if not isinstance(d, dict) or set(d) != _FIELDS:
                raise ValueError(f"fields must be exactly {', '.join(sorted(_FIELDS))}")
            if type(d["version"]) is not int or d["version"] < 1:
                raise ValueError("version must be a positive integer")
            for name in ("policy_sha256", "previous_sha256", "officer", "reason"):
                if not isinstance(d[name], str):
                    raise ValueError(f"{name} must be a string")
            if not d["officer"]:
                raise ValueError("officer must be a name")
            if not (d["reason"] and len(d["reason"]) <= MAX_REASON and is_displayable(d["reason"])):
                raise ValueError(f"reason must be 1-{MAX_REASON} displayable characters")
            denial = cls(
                d["version"],
                d["policy_sha256"],
                d["previous_sha256"],
                d["officer"],
                d["reason"],
                parse_time(d["issued_at"]),
            )
        except (ValueError, TypeError, RecursionError) as e:
            raise EnvelopeError(f"not a policy denial: {str(e)[:200]}") from None
        if denial.to_bytes() != payload:
            raise EnvelopeError("the policy denial is not in canonical JSON form")
        return denial


def sign_denial(denial: PolicyDenial, signer: ApprovalSigner) -> bytes:
    """The officer's denial envelope, signed with their approval key."""
    return sign_payload(PAYLOAD_TYPE, denial.to_bytes(), signer)


def verify_denial(envelope: bytes, key: ApprovalKey) -> PolicyDenial:
    """The denial `envelope` holds, if `key` signed it; EnvelopeError if not."""
    return PolicyDenial.from_bytes(Envelope.parse(envelope, PAYLOAD_TYPE).verified_payload(key))


def rejected(denied: Collection[str], sets: Collection[Officers]) -> bool:
    """Whether the officers who denied leave fewer than a threshold of any of `sets`."""
    return any(len([n for n in o.names if n not in denied]) < o.threshold for o in sets)
