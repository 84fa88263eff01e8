"""Whether one officer's signed statement binds its request, and whether a request's
approvals make a quorum (invariant 2).

`quorum` is the one place the core decides that a request may be signed: m
valid approvals (the key's policy rules say which approvers count and how many
make m) from distinct people with distinct keys, none from the requester or the
pipeline's actor, no denial, each envelope verifying with the approver's
registered key and binding the exact request id, key, key id and digests, and
the key still the one the request names. The core asks it when an approval
arrives and again right before the token signs. The binding rule and the
distinct count are `dsse.Binding.check` and `dsse.distinct_approvers`, the ones
bundle verification and the offline audit verifier apply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from signer.approval.keys import ApprovalKey
from signer.core.intake import Limits, check_reason
from signer.core.policy import KeyPolicy
from signer.dsse import Binding, Envelope, Statement, distinct_approvers
from signer.errors import EnvelopeError
from signer.model import KeySpec, Request

__all__ = ["check_statement", "quorum"]

_CLOCK_SKEW = dt.timedelta(minutes=5)


def check_statement(
    st: Statement, request: Request, approver: str, decision: str, now: dt.datetime, limits: Limits
) -> None:
    """Every field of the signed statement must equal the stored request, and its time
    fall within the request's life (EnvelopeError, STATEMENT_MISMATCH)."""
    Binding.of(request).check(st, approver, decision)
    if st.issued_at > now + _CLOCK_SKEW:
        raise EnvelopeError(
            "the statement's issued_at is in the future; check the clock",
            reason="STATEMENT_MISMATCH",
        )
    if st.issued_at < request.created - _CLOCK_SKEW:
        raise EnvelopeError(
            "the statement was issued before the request existed", reason="STATEMENT_MISMATCH"
        )
    if decision == "deny":
        check_reason(st.reason, limits)


def quorum(
    request: Request,
    policy: KeyPolicy | None,
    spec: KeySpec | None,
    approver_keys: Mapping[str, ApprovalKey],
    now: dt.datetime,
    limits: Limits,
) -> list[str] | None:
    """Approvers making a valid quorum for `request` under `policy`, or None."""
    if (
        policy is None
        or spec is None
        or spec.key_id != request.key_id
        or spec.algorithm.name != request.algorithm
    ):
        return None
    if any(a.decision == "deny" for a in request.approvals):
        return None
    valid: list[tuple[str, ApprovalKey]] = []
    for a in request.approvals:
        key = approver_keys.get(a.approver)
        if (
            a.decision != "approve"
            or not policy.may_approve(a.approver)
            or not request.may_decide(a.approver)
            or not policy.approval_counts(a.created, now)
            or key is None
            or not policy.takes_kind(key.kind)
        ):
            continue
        try:
            st = Envelope.parse(a.envelope).verify(key)
            check_statement(st, request, a.approver, "approve", now, limits)
        except EnvelopeError:
            continue
        valid.append((a.approver, key))
    counted = distinct_approvers(valid)
    problem = policy.quorum_problem(counted, bool(request.unusual))
    return None if problem is not None else sorted(counted)
