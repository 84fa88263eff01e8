"""A call on a request its caller may not act on is refused with its reason, audited, no effect.

Every request RPC refuses an unknown or malformed id; a requester can neither
cancel, read nor wait on another requester's request, and is not told whose it
is; an approver outside the key's policy cannot read it; an approval after the
TTL finds the request EXPIRED (tests/bad_input.py checks each refusal).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import duration_pb2

from signer.v1 import approval_pb2, signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT
from testbed.commands import wait_until
from testbed.process import Running
from tests.bad_input import (
    DENIED,
    NOT_FOUND,
    PRECONDITION,
    approve_call,
    assert_pending,
    deny_call,
    expect_refused,
)
from tests.harness import audit_events, rpc_error

# -- unknown requests ------------------------------------------------------------------


_UNKNOWN_IDS = [pytest.param(str(uuid.uuid4()), id="uuid4"), pytest.param("not-a-uuid", id="bad")]


@pytest.mark.parametrize("rid", _UNKNOWN_IDS)
@pytest.mark.parametrize(
    "rpc",
    [
        "GetSigningRequest",
        "WaitSigningRequest",
        "CancelSigningRequest",
        "GetRequest",
        "Approve",
        "Deny",
    ],
)
def test_unknown_request(shared: Running, rpc: str, rid: str) -> None:
    """An unknown or malformed request id is NOT_FOUND UNKNOWN_REQUEST on every request RPC."""
    c = shared.clients
    real = c.create()  # envelopes must parse and verify before the id is looked up
    call: Callable[[], Any]
    if rpc == "GetSigningRequest":
        req1 = signing_pb2.GetSigningRequestRequest(id=rid)
        call, actor = (lambda: c.signing().GetSigningRequest(req1, timeout=RPC_TIMEOUT)), "ci"
    elif rpc == "WaitSigningRequest":
        req2 = signing_pb2.WaitSigningRequestRequest(id=rid)
        call, actor = (lambda: c.signing().WaitSigningRequest(req2, timeout=RPC_TIMEOUT)), "ci"
    elif rpc == "CancelSigningRequest":
        req3 = signing_pb2.CancelSigningRequestRequest(id=rid)
        call, actor = (lambda: c.signing().CancelSigningRequest(req3, timeout=RPC_TIMEOUT)), "ci"
    elif rpc == "GetRequest":
        req4 = approval_pb2.GetRequestRequest(id=rid)
        call, actor = (lambda: c.approval("alice").GetRequest(req4, timeout=RPC_TIMEOUT)), "alice"
    elif rpc == "Approve":
        call = approve_call(c, "alice", rid, c.envelope("alice", real, request_id=rid))
        actor = "alice"
    else:
        env = c.envelope("bob", real, decision="deny", reason="no", request_id=rid)
        call, actor = deny_call(c, "bob", rid, env), "bob"
    service = "SigningService" if rpc.endswith("SigningRequest") else "ApprovalService"
    expect_refused(
        shared.env,
        call,
        NOT_FOUND,
        "UNKNOWN_REQUEST",
        f"no request with id {rid!r}",
        actor=actor,
        method=f"/signer.v1.{service}/{rpc}",
        request_id=rid if rid != "not-a-uuid" else "",
    )
    assert_pending(c, real, [])


# -- officers -------------------------------------------------------------------------------


def test_non_member_cannot_get_request(shared: Running) -> None:
    """An approver not in the key's policy cannot read the request either."""
    c = shared.clients
    r = c.create()
    req = approval_pb2.GetRequestRequest(id=r.id)
    expect_refused(
        shared.env,
        lambda: c.approval("dave").GetRequest(req, timeout=RPC_TIMEOUT),
        DENIED,
        "NOT_AN_APPROVER",
        "is not an approver for key",
        actor="dave",
        method="/signer.v1.ApprovalService/GetRequest",
        request_id=r.id,
    )


def test_approve_after_expiry(shared: Running) -> None:
    """An approval after the TTL is FAILED_PRECONDITION REQUEST_EXPIRED; the request is EXPIRED."""
    c = shared.clients
    r = c.create(ttl=duration_pb2.Duration(seconds=3))
    c.approve("alice", r)
    expires = r.expire_time.ToDatetime(dt.UTC)
    wait_until(lambda: dt.datetime.now(dt.UTC) > expires, timeout=30)  # the TTL is over
    err = rpc_error(approve_call(c, "bob", r.id, c.envelope("bob", r)))
    assert (err.code, err.reason) == (PRECONDITION, "REQUEST_EXPIRED"), err
    assert "expired" in err.message.lower()
    now = c.get(r.id)
    assert now.state == types_pb2.REQUEST_STATE_EXPIRED
    assert [a.approver for a in now.approvals] == ["alice"]
    assert list(now.signatures) == []
    events = [e for e in audit_events(shared.env) if e["request_id"] == r.id]
    assert [e["event"] for e in events] == [
        "request.created",
        "request.approved",
        "request.expired",
        "call.rejected",
    ]
    assert events[-1]["actor"] == "bob"
    assert events[-1]["details"]["reason"] == "REQUEST_EXPIRED"


# -- requesters -----------------------------------------------------------------------------


def test_cancel_by_other_requester(shared: Running) -> None:
    """Only the requester may cancel: ci2 cancelling ci's request is NOT_YOUR_REQUEST."""
    c = shared.clients
    r = c.create()
    req = signing_pb2.CancelSigningRequestRequest(id=r.id, reason="mine now")
    expect_refused(
        shared.env,
        lambda: c.signing("ci2").CancelSigningRequest(req, timeout=RPC_TIMEOUT),
        DENIED,
        "NOT_YOUR_REQUEST",
        "only the requester",
        actor="ci2",
        method="/signer.v1.SigningService/CancelSigningRequest",
        request_id=r.id,
    )
    assert_pending(c, r, [])


@pytest.mark.parametrize("rpc", ["GetSigningRequest", "WaitSigningRequest"])
def test_other_requesters_request_is_private(shared: Running, rpc: str) -> None:
    """Another requester cannot read or wait on a request: PERMISSION_DENIED NOT_YOUR_REQUEST."""
    c = shared.clients
    r = c.create()
    stub = c.signing("ci2")
    call: Callable[[], Any]
    if rpc == "GetSigningRequest":
        get = signing_pb2.GetSigningRequestRequest(id=r.id)
        call = lambda: stub.GetSigningRequest(get, timeout=RPC_TIMEOUT)  # noqa: E731
    else:
        wait = signing_pb2.WaitSigningRequestRequest(id=r.id)
        call = lambda: stub.WaitSigningRequest(wait, timeout=RPC_TIMEOUT)  # noqa: E731
    err = expect_refused(
        shared.env,
        call,
        DENIED,
        "NOT_YOUR_REQUEST",
        "made by another requester",
        actor="ci2",
        method=f"/signer.v1.SigningService/{rpc}",
        request_id=r.id,
    )
    assert "ci'" not in err.message  # the other requester's name is not disclosed
    assert_pending(c, r, [])
