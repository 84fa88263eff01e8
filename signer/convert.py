"""Conversions between domain records and signer.v1 protobuf messages."""

from __future__ import annotations

import datetime as dt

from google.protobuf import duration_pb2, timestamp_pb2

from signer.audit.entry import AuditEntry
from signer.audit.proofs import SignedProof
from signer.encoding import canonical_json
from signer.errors import InvalidArgumentError
from signer.model import Approval, Digest, KeySpec, Request, State, TokenCaller
from signer.policy_decisions import Proposed
from signer.v1 import approval_pb2, audit_pb2, types_pb2

__all__ = [
    "HASH_FROM_PB",
    "HASH_TO_PB",
    "STATE_FROM_PB",
    "STATE_TO_PB",
    "audit_event_pb",
    "audit_proof_pb",
    "digest_from_pb",
    "digest_pb",
    "duration",
    "key_info_pb",
    "request_pb",
    "time_of",
    "timestamp",
]

_MAX_SECONDS = 100 * 366 * 86400
HASH_TO_PB = {
    "sha256": types_pb2.HASH_ALGORITHM_SHA256,
    "sha384": types_pb2.HASH_ALGORITHM_SHA384,
    "sha512": types_pb2.HASH_ALGORITHM_SHA512,
}
HASH_FROM_PB = {v: k for k, v in HASH_TO_PB.items()}
STATE_TO_PB = {s: types_pb2.RequestState.Value(f"REQUEST_STATE_{s.value}") for s in State}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}
_DECISION = {"approve": types_pb2.DECISION_APPROVE, "deny": types_pb2.DECISION_DENY}


def timestamp(t: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


def duration(pb: duration_pb2.Duration) -> dt.timedelta | None:
    """A Duration field as timedelta; None when unset or zero."""
    if pb.seconds < 0 or pb.nanos < 0:
        raise InvalidArgumentError("durations must not be negative", reason="BAD_TTL")
    if pb.seconds > _MAX_SECONDS:
        raise InvalidArgumentError("durations must be under 100 years", reason="BAD_TTL")
    return pb.ToTimedelta() if (pb.seconds or pb.nanos) else None


def time_of(pb: timestamp_pb2.Timestamp) -> dt.datetime:
    """A Timestamp field as an aware datetime; out-of-range values are bad input."""
    try:
        return pb.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgumentError("timestamp out of range", reason="BAD_TIME") from None


def digest_from_pb(i: int, d: types_pb2.Digest) -> Digest:
    name = HASH_FROM_PB.get(d.algorithm)
    if name is None:
        raise InvalidArgumentError(
            f"digest {i}: unknown hash algorithm {d.algorithm}; use SHA256, SHA384 or SHA512",
            reason="UNKNOWN_HASH",
        )
    return Digest(name, d.value, d.artifact_name)


def digest_pb(d: Digest) -> types_pb2.Digest:
    return types_pb2.Digest(
        algorithm=HASH_TO_PB[d.algorithm], value=d.value, artifact_name=d.artifact
    )


def _approval_pb(a: Approval) -> types_pb2.Approval:
    return types_pb2.Approval(
        approver=a.approver,
        decision=_DECISION[a.decision],
        envelope=a.envelope,
        create_time=timestamp(a.created),
        reason=a.reason,
    )


def request_pb(r: Request, threshold: int) -> types_pb2.SigningRequest:
    return types_pb2.SigningRequest(
        id=r.id,
        key_name=r.key_name,
        key_id=r.key_id,
        algorithm=r.algorithm,
        requester=r.requester,
        digests=[digest_pb(d) for d in r.digests],
        context=r.context,
        state=STATE_TO_PB[r.state],
        create_time=timestamp(r.created),
        expire_time=timestamp(r.expires),
        update_time=timestamp(r.updated),
        threshold=threshold,
        approvals=[_approval_pb(a) for a in r.approvals],
        signatures=list(r.signatures),
        status_message=r.status_message,
        caller=_caller_pb(r.caller) if r.caller else None,
        payload_type=r.payload_type,
        payload=r.payload,
    )


def _caller_pb(c: TokenCaller) -> types_pb2.TokenCaller:
    return types_pb2.TokenCaller(
        issuer=c.issuer, claims=c.claims, actor=c.actor, barred_approvers=list(c.barred)
    )


def audit_proof_pb(p: SignedProof) -> types_pb2.AuditProof:
    return types_pb2.AuditProof(
        index=p.index,
        entry=p.entry,
        tree_size=p.tree_size,
        inclusion_proof=p.inclusion_proof,
        checkpoint=p.checkpoint,
    )


def key_info_pb(k: KeySpec) -> types_pb2.KeyInfo:
    return types_pb2.KeyInfo(
        name=k.name,
        algorithm=k.algorithm.name,
        key_id=k.key_id,
        public_key_pem=k.public_key_pem,
        openpgp_created=k.openpgp_created or 0,
    )


def audit_event_pb(e: AuditEntry) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        index=e.index,
        time=timestamp(e.time),
        event=e.event,
        actor=e.actor,
        request_id=e.request_id,
        entry=e.to_bytes(),
    )


def policy_proposal_pb(p: Proposed) -> approval_pb2.PolicyProposal:
    """A proposal for the next policy version, with the decisions recorded on it."""
    return approval_pb2.PolicyProposal(
        index=p.index,
        proposal=canonical_json(p.proposal.to_json()),
        proposed_by=p.proposed_by,
        proposed_at=timestamp(p.proposed_at),
        approvals=[approval_pb2.PolicyDecision(officer=o) for o in sorted(p.approvals)],
        denials=[
            approval_pb2.PolicyDecision(officer=o, reason=r) for o, r in sorted(p.denials.items())
        ],
        adopted=p.adopted,
        rejected=p.rejected,
    )
