"""Officers' decisions on a proposed policy version (docs/architecture.md §11), checked the same way
by the server (`signer.core.policy_desk`) and the offline audit verifier.

A proposal for the next version is a `policy.proposed` entry (`proposal_of`); a
decision on it counts only as the signed word of an officer it needs, over exactly
its version (`verify_decision`); an approval counts for `APPROVAL_MAX_AGE` from its
issue (`is_fresh`). Pure: no store, no token.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from signer.audit.entry import AuditEntry
from signer.bounds import echo
from signer.dsse import Envelope
from signer.encoding import canonical_json
from signer.errors import (
    ConflictError,
    EnvelopeError,
    PermissionDeniedError,
    PolicyChainError,
    StatementMismatchError,
)
from signer.policy_chain import PAYLOAD_TYPE, Officers, PolicyApproval, Proposal, Version
from signer.policy_denial import PolicyDenial, rejected, verify_denial

__all__ = [
    "APPROVAL_MAX_AGE",
    "APPROVAL_SKEW",
    "Proposed",
    "is_fresh",
    "proposal_of",
    "verify_decision",
]

APPROVAL_MAX_AGE = dt.timedelta(days=30)  # how long an officer's approval counts
APPROVAL_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Proposed:
    """A proposal for the next version, with the officers' decisions so far."""

    index: int  # its `policy.proposed` entry
    proposal: Proposal
    proposed_by: str
    proposed_at: dt.datetime
    # officer -> (envelope, issued_at): only decisions that verify as that officer's
    approvals: Mapping[str, tuple[bytes, dt.datetime]] = field(default_factory=dict)
    denials: Mapping[str, str] = field(default_factory=dict)  # officer -> reason
    adopted: bool = False

    @property
    def sets(self) -> list[tuple[str, Officers]]:
        """Whose approvals it needs: the version in force's officers, and its own."""
        out = [("its own", Officers.of(self.proposal.document))]
        if self.proposal.previous_document is not None:
            number = self.proposal.number - 1
            out.insert(0, (f"version {number}'s", Officers.of(self.proposal.previous_document)))
        return out

    def fresh(self, now: dt.datetime) -> dict[str, bytes]:
        """The approvals that still count at `now` (issued within their lifetime)."""
        return {o: raw for o, (raw, at) in self.approvals.items() if is_fresh(at, now)}

    @property
    def rejected(self) -> bool:
        """Whether its denials leave fewer officers than a threshold it needs (one whose
        officers cannot be read can never be decided: rejected too)."""
        try:
            return rejected(self.denials.keys(), [o for _, o in self.sets])
        except PolicyChainError:
            return True


def proposal_of(e: AuditEntry, previous: Version | None) -> Proposal | None:
    """The proposal an entry records, if it is one for the version after `previous`."""
    d = e.details
    document = d.get("document")
    number = previous.number + 1 if previous is not None else 1
    if (
        d.get("version") != number
        or d.get("previous_sha256") != (previous.sha256 if previous else "")
        or not isinstance(document, dict)
    ):
        return None
    try:
        sha256 = hashlib.sha256(canonical_json(document)).hexdigest()
    except (ValueError, TypeError):
        return None
    if d.get("sha256") != sha256:
        return None
    return Proposal(
        number,
        previous.sha256 if previous else "",
        document,
        previous.document if previous is not None else None,
    )


def verify_decision(
    p: Proposed, actor: str, envelope: bytes, approval: bool
) -> PolicyApproval | PolicyDenial:
    """`actor`'s approval (or denial) of exactly `p`'s version, signed with their key
    as a version `p` needs records it; PermissionDenied if `actor` is an officer of
    neither, EnvelopeError or StatementMismatchError if it is not that decision."""
    keys = _keys_of(p, actor)
    version = p.proposal.version
    what = "approval" if approval else "denial"
    found: PolicyApproval | PolicyDenial | None = None
    for key in keys:
        try:
            if approval:
                env = Envelope.parse(envelope, PAYLOAD_TYPE)
                found = PolicyApproval.from_bytes(env.verified_payload(key))
            else:
                found = verify_denial(envelope, key)
            break
        except EnvelopeError:
            continue
    if found is None:
        raise EnvelopeError(
            f"the {what} is not signed with {echo(actor)}'s approval key as the policy records it"
        )
    if (found.version, found.policy_sha256, found.previous_sha256, found.officer) != (
        version.number,
        version.sha256,
        version.previous_sha256,
        actor,
    ):
        raise StatementMismatchError(
            f"the {what} is not {echo(actor)}'s of policy version {version.number} "
            f"({version.sha256[:16]}...)",
            ("version", "policy_sha256", "previous_sha256", "officer"),
        )
    return found


def _keys_of(p: Proposed, actor: str) -> list[Any]:
    """`actor`'s approval keys as the officer sets of `p` record them; PermissionDenied
    if `actor` is an officer of neither (their decision could not count)."""
    try:
        keys = [o.keys[actor] for _, o in p.sets if actor in o.names]
    except PolicyChainError as e:
        raise ConflictError(f"the proposal cannot be decided: {e}") from None
    if not keys:
        raise PermissionDeniedError(
            f"{echo(actor)} is not a policy officer of version {p.proposal.number} or the one "
            "in force; a decision from them would not count",
            reason="NOT_A_POLICY_OFFICER",
        )
    return keys


def is_fresh(issued_at: dt.datetime, now: dt.datetime) -> bool:
    return now - APPROVAL_MAX_AGE <= issued_at <= now + APPROVAL_SKEW
