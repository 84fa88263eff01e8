"""Bad input over gRPC, for tests: the check every refused call must pass, and raw calls.

`expect_refused` runs a call that must fail and checks its status, its
machine-readable reason, its message, that it is audited once as
`call.rejected` (actor, method, request id, reason, message) and that it caused
no state change. `create_call`, `approve_call` and `deny_call` send exactly the
fields given, with no client-side defaults; `assert_pending` checks a request
was left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from signer.client.profile import RemoteError
from signer.v1 import approval_pb2, signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients
from testbed.env import Env
from tests.harness import audit_events, rpc_error

__all__ = [
    "APPROVE",
    "CREATE",
    "DENIED",
    "DENY",
    "EXHAUSTED",
    "INVALID",
    "NOT_FOUND",
    "PENDING",
    "PRECONDITION",
    "SHA256",
    "SHA384",
    "SHA512",
    "STATE_EVENTS",
    "approve_call",
    "assert_pending",
    "create_call",
    "deny_call",
    "expect_refused",
]

PENDING = types_pb2.REQUEST_STATE_PENDING
SHA256 = types_pb2.HASH_ALGORITHM_SHA256
SHA384 = types_pb2.HASH_ALGORITHM_SHA384
SHA512 = types_pb2.HASH_ALGORITHM_SHA512
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
CREATE = "/signer.v1.SigningService/CreateSigningRequest"
APPROVE = "/signer.v1.ApprovalService/Approve"
DENY = "/signer.v1.ApprovalService/Deny"
# State changes a rejected call must never cause (the sweeper's request.expired is not one).
STATE_EVENTS = {
    "request.created",
    "request.approved",
    "request.denied",
    "request.quorum",
    "request.signed",
    "request.failed",
    "request.cancelled",
}


def expect_refused(
    env: Env,
    call: Callable[[], Any],
    code: grpc.StatusCode,
    reason: str,
    phrase: str,
    *,
    actor: str,
    method: str,
    request_id: str = "",
) -> RemoteError:
    """Run a call that must fail; check status, reason, message, audit; return the error."""
    mark = len(audit_events(env))
    err = rpc_error(call)
    assert (err.code, err.reason) == (code, reason), err
    assert phrase in err.message, err.message
    new = audit_events(env)[mark:]
    caused = [
        e
        for e in new
        if e["event"] in STATE_EVENTS
        and (e["actor"] == actor or (request_id and e["request_id"] == request_id))
    ]
    assert not caused, caused
    rejected = [e for e in new if e["event"] == "call.rejected"]
    assert len(rejected) == 1, new
    entry = rejected[0]
    assert entry["actor"] == actor
    assert entry["request_id"] == request_id
    assert entry["details"]["reason"] == reason
    assert entry["details"]["method"] == method
    assert entry["details"]["message"] == err.message
    return err


def create_call(
    clients: Clients, who: str = "ci", **fields: Any
) -> Callable[[], signing_pb2.CreateSigningRequestResponse]:
    """A CreateSigningRequest call with exactly `fields` (no defaults filled in)."""
    req = signing_pb2.CreateSigningRequestRequest(**fields)
    return lambda: clients.signing(who).CreateSigningRequest(req, timeout=RPC_TIMEOUT)


def approve_call(
    clients: Clients, officer: str, request_id: str, envelope: bytes
) -> Callable[[], approval_pb2.ApproveResponse]:
    req = approval_pb2.ApproveRequest(id=request_id, envelope=envelope)
    return lambda: clients.approval(officer).Approve(req, timeout=RPC_TIMEOUT)


def deny_call(
    clients: Clients, officer: str, request_id: str, envelope: bytes
) -> Callable[[], approval_pb2.DenyResponse]:
    req = approval_pb2.DenyRequest(id=request_id, envelope=envelope)
    return lambda: clients.approval(officer).Deny(req, timeout=RPC_TIMEOUT)


def assert_pending(
    clients: Clients, r: types_pb2.SigningRequest, approvers: list[str], who: str = "ci"
) -> None:
    """The request is still PENDING, with exactly `approvers` approving, and unsigned."""
    now = clients.get(r.id, who=who)
    assert now.state == PENDING
    assert [a.approver for a in now.approvals] == approvers
    assert all(a.decision == types_pb2.DECISION_APPROVE for a in now.approvals)
    assert now.threshold == 2
    assert list(now.signatures) == []
