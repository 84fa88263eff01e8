"""Bad input gets a clear status, a machine-readable reason, an audit entry and no effect."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from signer.client import RemoteError
from signer.dsse import PAYLOAD_TYPE, Statement, pae
from signer.encoding import canonical_json
from signer.model import Digest
from signer.v1 import approval_pb2, signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.commands import wait_until
from testbed.env import Env
from testbed.process import Running
from tests.harness import audit_events, rpc_error

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


# -- helpers -------------------------------------------------------------------


def _expect(
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


def _create_call(
    clients: Clients, who: str = "ci", **fields: Any
) -> Callable[[], signing_pb2.CreateSigningRequestResponse]:
    """A CreateSigningRequest call with exactly `fields` (no defaults filled in)."""
    req = signing_pb2.CreateSigningRequestRequest(**fields)
    return lambda: clients.signing(who).CreateSigningRequest(req, timeout=RPC_TIMEOUT)


def _approve_call(
    clients: Clients, officer: str, request_id: str, envelope: bytes
) -> Callable[[], approval_pb2.ApproveResponse]:
    req = approval_pb2.ApproveRequest(id=request_id, envelope=envelope)
    return lambda: clients.approval(officer).Approve(req, timeout=RPC_TIMEOUT)


def _deny_call(
    clients: Clients, officer: str, request_id: str, envelope: bytes
) -> Callable[[], approval_pb2.DenyResponse]:
    req = approval_pb2.DenyRequest(id=request_id, envelope=envelope)
    return lambda: clients.approval(officer).Deny(req, timeout=RPC_TIMEOUT)


def _assert_pending(
    clients: Clients, r: types_pb2.SigningRequest, approvers: list[str], who: str = "ci"
) -> None:
    """The request is still PENDING, with exactly `approvers` approving, and unsigned."""
    now = clients.get(r.id, who=who)
    assert now.state == PENDING
    assert [a.approver for a in now.approvals] == approvers
    assert all(a.decision == types_pb2.DECISION_APPROVE for a in now.approvals)
    assert now.threshold == 2
    assert list(now.signatures) == []


def _digest(algorithm: Any, size: int) -> types_pb2.Digest:
    return types_pb2.Digest(algorithm=algorithm, value=os.urandom(size), artifact_name="a.bin")


def _key_id(clients: Clients, key: str) -> str:
    resp = clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name=key), timeout=RPC_TIMEOUT
    )
    return str(resp.key.key_id)


# -- CreateSigningRequest ----------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "size", "want"),
    [
        (SHA256, 31, 32),
        (SHA256, 33, 32),
        (SHA256, 0, 32),
        (SHA384, 32, 48),
        (SHA512, 48, 64),
    ],
)
def test_wrong_digest_length(shared: Running, algorithm: int, size: int, want: int) -> None:
    """A digest whose length does not match its hash algorithm is INVALID_ARGUMENT."""
    call = _create_call(shared.clients, key_name="release", digests=[_digest(algorithm, size)])
    err = _expect(
        shared.env,
        call,
        INVALID,
        "BAD_DIGEST_LENGTH",
        f"is {want} bytes, got {size}",
        actor="ci",
        method=CREATE,
    )
    assert "digest 0" in err.message


def test_wrong_digest_length_names_the_digest(shared: Running) -> None:
    """With several digests the message names the position of the bad one."""
    digests = [sha256_digest(b"ok"), _digest(SHA384, 32)]
    call = _create_call(shared.clients, key_name="release", digests=digests)
    _expect(
        shared.env,
        call,
        INVALID,
        "BAD_DIGEST_LENGTH",
        "digest 1: a sha384 digest is 48 bytes",
        actor="ci",
        method=CREATE,
    )


@pytest.mark.parametrize("algorithm", [types_pb2.HASH_ALGORITHM_UNSPECIFIED, 99])
def test_unknown_hash_algorithm(shared: Running, algorithm: int) -> None:
    """An unspecified or out-of-range hash algorithm is INVALID_ARGUMENT UNKNOWN_HASH."""
    call = _create_call(shared.clients, key_name="release", digests=[_digest(algorithm, 32)])
    _expect(
        shared.env,
        call,
        INVALID,
        "UNKNOWN_HASH",
        "use SHA256, SHA384 or SHA512",
        actor="ci",
        method=CREATE,
    )


def test_unknown_key(shared: Running) -> None:
    """A request for a key the server does not have is NOT_FOUND UNKNOWN_KEY."""
    call = _create_call(shared.clients, key_name="no-such-key", digests=[sha256_digest(b"x")])
    _expect(
        shared.env,
        call,
        NOT_FOUND,
        "UNKNOWN_KEY",
        "no signing key named 'no-such-key'",
        actor="ci",
        method=CREATE,
    )


def test_unknown_key_for_public_key(shared: Running) -> None:
    """GetPublicKey for a key the server does not have is NOT_FOUND UNKNOWN_KEY."""
    req = signing_pb2.GetPublicKeyRequest(key_name="no-such-key")
    _expect(
        shared.env,
        lambda: shared.clients.signing().GetPublicKey(req, timeout=RPC_TIMEOUT),
        NOT_FOUND,
        "UNKNOWN_KEY",
        "no signing key named 'no-such-key'",
        actor="ci",
        method="/signer.v1.SigningService/GetPublicKey",
    )


def test_no_digests(shared: Running) -> None:
    """A request with no digests is INVALID_ARGUMENT NO_DIGESTS."""
    call = _create_call(shared.clients, key_name="release", digests=[])
    _expect(
        shared.env,
        call,
        INVALID,
        "NO_DIGESTS",
        "send at least one",
        actor="ci",
        method=CREATE,
    )


def test_too_many_digests(shared: Running) -> None:
    """10,001 digests in one request is RESOURCE_EXHAUSTED TOO_MANY_DIGESTS."""
    digests = [sha256_digest(i.to_bytes(4, "big"), f"f{i}") for i in range(10_001)]
    call = _create_call(shared.clients, key_name="release", digests=digests)
    _expect(
        shared.env,
        call,
        EXHAUSTED,
        "TOO_MANY_DIGESTS",
        "the limit is 10000",
        actor="ci",
        method=CREATE,
    )


@pytest.mark.parametrize("what", ["context value", "artifact list"])
def test_oversized_message(shared: Running, what: str) -> None:
    """A request over the server's 4 MiB message limit is RESOURCE_EXHAUSTED, with no effect."""
    big = 5 * 1024 * 1024
    if what == "context value":
        fields: dict[str, Any] = {
            "digests": [sha256_digest(b"x")],
            "context": {"huge": "x" * big},
        }
    else:
        name = "n" * 500
        fields = {"digests": [sha256_digest(b"x", name) for _ in range(big // 500)]}
    mark = len(audit_events(shared.env))
    err = rpc_error(_create_call(shared.clients, key_name="release", **fields))
    assert err.code == EXHAUSTED, err
    assert "larger than max" in err.message.lower(), err.message
    assert not [e for e in audit_events(shared.env)[mark:] if e["event"] in STATE_EVENTS]


@pytest.mark.parametrize(
    ("context", "phrase"),
    [
        ({"has space": "x"}, "context key 'has space' must be 1-64 of"),
        ({"": "x"}, "must be 1-64 of"),
        ({"k" * 65: "x"}, "must be 1-64 of"),
        ({"repo": "a\nb"}, "without control characters"),
        ({"repo": "v" * 1025}, "at most 1024 characters"),
    ],
)
def test_bad_context(shared: Running, context: dict[str, str], phrase: str) -> None:
    """A context key outside [A-Za-z0-9_.-]{1,64} or a bad value is INVALID_ARGUMENT."""
    call = _create_call(
        shared.clients, key_name="release", digests=[sha256_digest(b"x")], context=context
    )
    _expect(shared.env, call, INVALID, "BAD_CONTEXT", phrase, actor="ci", method=CREATE)


@pytest.mark.parametrize(
    ("ttl", "phrase"),
    [
        (duration_pb2.Duration(seconds=-5), "must not be negative"),
        (duration_pb2.Duration(nanos=-1), "must not be negative"),
        (duration_pb2.Duration(nanos=500_000_000), "ttl must be at least"),
    ],
)
def test_bad_ttl(shared: Running, ttl: duration_pb2.Duration, phrase: str) -> None:
    """A negative TTL, or one under the 1 s minimum, is INVALID_ARGUMENT BAD_TTL."""
    call = _create_call(shared.clients, key_name="release", digests=[sha256_digest(b"x")], ttl=ttl)
    _expect(shared.env, call, INVALID, "BAD_TTL", phrase, actor="ci", method=CREATE)


def test_ttl_above_policy_is_capped(clients: Clients) -> None:
    """A TTL over the key's max_ttl (1h) is capped to it, not rejected."""
    r = clients.create(ttl=duration_pb2.Duration(seconds=6 * 3600))
    assert r.state == PENDING
    assert r.expire_time.ToDatetime() - r.create_time.ToDatetime() == dt.timedelta(hours=1)


def test_idempotency_key_reused_with_other_parameters(shared: Running) -> None:
    """Reusing an idempotency key for other parameters is ALREADY_EXISTS; the same is a replay."""
    c = shared.clients
    key = f"build-{uuid.uuid4()}"
    first = c.create(digests=[sha256_digest(b"one")], idempotency_key=key)
    assert c.create(digests=[sha256_digest(b"one")], idempotency_key=key).id == first.id
    for fields in (
        {"key_name": "release", "digests": [sha256_digest(b"two")]},
        {"key_name": "k-ecdsa-p256", "digests": [sha256_digest(b"one")]},
        {"key_name": "release", "digests": [sha256_digest(b"one")], "context": {"a": "b"}},
    ):
        err = _expect(
            shared.env,
            _create_call(c, idempotency_key=key, **fields),
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
            "use a new key",
            actor="ci",
            method=CREATE,
        )
        assert first.id in err.message
    _assert_pending(c, first, [])


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
        call = _approve_call(c, "alice", rid, c.envelope("alice", real, request_id=rid))
        actor = "alice"
    else:
        env = c.envelope("bob", real, decision="deny", reason="no", request_id=rid)
        call, actor = _deny_call(c, "bob", rid, env), "bob"
    service = "SigningService" if rpc.endswith("SigningRequest") else "ApprovalService"
    _expect(
        shared.env,
        call,
        NOT_FOUND,
        "UNKNOWN_REQUEST",
        f"no request with id {rid!r}",
        actor=actor,
        method=f"/signer.v1.{service}/{rpc}",
        request_id=rid if rid != "not-a-uuid" else "",
    )
    _assert_pending(c, real, [])


# -- approvals ---------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["approve", "deny"])
def test_same_officer_twice(shared: Running, second: str) -> None:
    """An officer's second decision is FAILED_PRECONDITION ALREADY_DECIDED; they count once."""
    c = shared.clients
    r = c.create()
    c.approve("alice", r)
    call: Callable[[], Any]
    if second == "approve":
        call = _approve_call(c, "alice", r.id, c.envelope("alice", r))
        method = APPROVE
    else:
        env = c.envelope("alice", r, decision="deny", reason="changed my mind")
        call, method = _deny_call(c, "alice", r.id, env), DENY
    _expect(
        shared.env,
        call,
        PRECONDITION,
        "ALREADY_DECIDED",
        "each officer counts once",
        actor="alice",
        method=method,
        request_id=r.id,
    )
    _assert_pending(c, r, ["alice"])


def test_non_member_cannot_approve(shared: Running) -> None:
    """An approver not in the key's policy (dave) is PERMISSION_DENIED NOT_AN_APPROVER."""
    c = shared.clients
    r = c.create()
    _expect(
        shared.env,
        _approve_call(c, "dave", r.id, c.envelope("dave", r)),
        DENIED,
        "NOT_AN_APPROVER",
        "'dave' is not an approver for key 'release'",
        actor="dave",
        method=APPROVE,
        request_id=r.id,
    )
    _assert_pending(c, r, [])


def test_non_member_cannot_get_request(shared: Running) -> None:
    """An approver not in the key's policy cannot read the request either."""
    c = shared.clients
    r = c.create()
    req = approval_pb2.GetRequestRequest(id=r.id)
    _expect(
        shared.env,
        lambda: c.approval("dave").GetRequest(req, timeout=RPC_TIMEOUT),
        DENIED,
        "NOT_AN_APPROVER",
        "is not an approver for key",
        actor="dave",
        method="/signer.v1.ApprovalService/GetRequest",
        request_id=r.id,
    )


def test_requester_cannot_approve(shared: Running) -> None:
    """An officer who made the request cannot approve it: REQUESTER_CANNOT_APPROVE."""
    c = shared.clients
    r = c.create(who="carol")
    assert r.requester == "carol"
    _expect(
        shared.env,
        _approve_call(c, "carol", r.id, c.envelope("carol", r)),
        DENIED,
        "REQUESTER_CANNOT_APPROVE",
        "cannot decide on it",
        actor="carol",
        method=APPROVE,
        request_id=r.id,
    )
    _assert_pending(c, r, [], who="carol")


def test_approval_signed_with_another_officers_key(shared: Running) -> None:
    """An envelope not signed with the caller's own key is BAD_APPROVAL_SIGNATURE."""
    c = shared.clients
    r = c.create()
    for env in (c.envelope("alice", r, signer="bob"), c.envelope("bob", r)):
        _expect(
            shared.env,
            _approve_call(c, "alice", r.id, env),
            INVALID,
            "BAD_APPROVAL_SIGNATURE",
            "does not verify with the approver's registered key",
            actor="alice",
            method=APPROVE,
            request_id=r.id,
        )
    _assert_pending(c, r, [])


def test_tampered_payload_fails_signature(shared: Running) -> None:
    """An envelope whose payload was edited after signing is BAD_APPROVAL_SIGNATURE."""
    c = shared.clients
    r, other = c.create(), c.create()
    good = json.loads(c.envelope("alice", r))
    stmt = json.loads(base64.b64decode(good["payload"]))
    stmt["request_id"] = other.id
    good["payload"] = base64.b64encode(canonical_json(stmt)).decode()
    _expect(
        shared.env,
        _approve_call(c, "alice", other.id, canonical_json(good)),
        INVALID,
        "BAD_APPROVAL_SIGNATURE",
        "does not verify",
        actor="alice",
        method=APPROVE,
        request_id=other.id,
    )
    _assert_pending(c, other, [])


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"request_id": "OTHER"}, "request_id differ"),
        ({"digests": "OTHER"}, "digests differ"),
        ({"digests": "RENAMED"}, "digests differ"),
        ({"digests": ()}, "digests differ"),
        ({"key_name": "k-ecdsa-p384", "key_id": "P384"}, "key_name, key_id differ"),
        ({"key_name": "k-ecdsa-p384"}, "key_name differ"),
        ({"key_id": "P384"}, "key_id differ"),
        ({"key_id": "0" * 64}, "key_id differ"),
        ({"approver": "bob"}, "approver differ"),
        ({"decision": "deny", "reason": "no"}, "decision differ"),
        ({"issued_at": "FUTURE"}, "issued_at is in the future"),
        ({"issued_at": "PAST"}, "issued before the request existed"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_statement_mismatch(shared: Running, overrides: dict[str, Any], phrase: str) -> None:
    """A statement bound to another request, digest, key, approver or decision is rejected."""
    c = shared.clients
    r, other = c.create(), c.create()
    fields = dict(overrides)
    if fields.get("request_id") == "OTHER":
        fields["request_id"] = other.id
    if fields.get("digests") == "OTHER":
        fields["digests"] = (Digest("sha256", hashlib.sha256(b"other").digest(), "artifact.bin"),)
    if fields.get("digests") == "RENAMED":
        d = r.digests[0]
        fields["digests"] = (Digest("sha256", d.value, d.artifact_name + ".evil"),)
    if fields.get("key_id") == "P384":
        fields["key_id"] = _key_id(c, "k-ecdsa-p384")
    if fields.get("issued_at") == "FUTURE":  # an hour ahead of now, however long the run
        fields["issued_at"] = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    if fields.get("issued_at") == "PAST":
        fields["issued_at"] = r.create_time.ToDatetime(dt.UTC) - dt.timedelta(hours=1)
    err = _expect(
        shared.env,
        _approve_call(c, "alice", r.id, c.envelope("alice", r, **fields)),
        INVALID,
        "STATEMENT_MISMATCH",
        phrase,
        actor="alice",
        method=APPROVE,
        request_id=r.id,
    )
    assert "issued" in phrase or "re-fetch the request and sign again" in err.message
    _assert_pending(c, r, [])
    _assert_pending(c, other, [])


def test_approve_statement_sent_to_deny(shared: Running) -> None:
    """An "approve" statement sent to Deny is STATEMENT_MISMATCH and denies nothing."""
    c = shared.clients
    r = c.create()
    _expect(
        shared.env,
        _deny_call(c, "alice", r.id, c.envelope("alice", r)),
        INVALID,
        "STATEMENT_MISMATCH",
        "decision differ",
        actor="alice",
        method=DENY,
        request_id=r.id,
    )
    _assert_pending(c, r, [])


def _mangle(good: bytes, how: str) -> bytes:
    d = json.loads(good)
    if how == "wrong payloadType":
        d["payloadType"] = "application/vnd.in-toto+json"
    elif how == "two signatures":
        d["signatures"] = d["signatures"] * 2
    elif how == "no signatures":
        d["signatures"] = []
    elif how == "bad base64 payload":
        d["payload"] = "not*base64!"
    elif how == "bad base64 sig":
        d["signatures"][0]["sig"] = "%%%"
    elif how == "missing payload":
        del d["payload"]
    return canonical_json(d)


def _signed_payload(c: Clients, officer: str, payload: bytes) -> bytes:
    sig = c.env.approval_key(officer).sign(pae(PAYLOAD_TYPE, payload))
    return canonical_json(
        {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}],
        }
    )


@pytest.mark.parametrize(
    ("how", "phrase"),
    [
        ("empty", "the approval envelope is empty"),
        ("not JSON", "not valid DSSE JSON"),
        ("JSON list", "not valid DSSE JSON"),
        ("wrong payloadType", "payloadType must be application/vnd.signer.approval.v1+json"),
        ("two signatures", "exactly one signature"),
        ("no signatures", "exactly one signature"),
        ("bad base64 payload", "not valid DSSE JSON"),
        ("bad base64 sig", "not valid DSSE JSON"),
        ("missing payload", "not valid DSSE JSON"),
        ("oversized", "is over 262144 bytes"),
        ("statement not canonical", "not in canonical JSON form"),
        ("statement extra field", "fields must be exactly"),
        ("statement not an object", "must be a JSON object"),
    ],
)
def test_malformed_envelope(shared: Running, how: str, phrase: str) -> None:
    """A malformed DSSE envelope or statement is INVALID_ARGUMENT BAD_ENVELOPE."""
    c = shared.clients
    r = c.create()
    good = c.envelope("alice", r)
    stmt = Statement(
        r.id,
        r.key_name,
        r.key_id,
        tuple(Digest("sha256", d.value, d.artifact_name) for d in r.digests),
        "approve",
        "alice",
        dt.datetime.now(dt.UTC),
    )
    env: bytes
    if how == "empty":
        env = b""
    elif how == "not JSON":
        env = b"this is not json {"
    elif how == "JSON list":
        env = b"[]"
    elif how == "oversized":
        env = good + b" " * (256 * 1024)
    elif how == "statement not canonical":
        env = _signed_payload(c, "alice", json.dumps(stmt.as_dict(), indent=2).encode())
    elif how == "statement extra field":
        env = _signed_payload(c, "alice", canonical_json({**stmt.as_dict(), "extra": 1}))
    elif how == "statement not an object":
        env = _signed_payload(c, "alice", b"[]")
    else:
        env = _mangle(good, how)
    _expect(
        shared.env,
        _approve_call(c, "alice", r.id, env),
        INVALID,
        "BAD_ENVELOPE",
        phrase,
        actor="alice",
        method=APPROVE,
        request_id=r.id,
    )
    _assert_pending(c, r, [])


# -- approvals on finished requests ------------------------------------------------------


def test_approve_after_denial(shared: Running) -> None:
    """Once one officer denies, an approval is FAILED_PRECONDITION REQUEST_DENIED."""
    c = shared.clients
    r = c.create()
    assert c.deny("bob", r, reason="unknown commit").state == types_pb2.REQUEST_STATE_DENIED
    _expect(
        shared.env,
        _approve_call(c, "alice", r.id, c.envelope("alice", r)),
        PRECONDITION,
        "REQUEST_DENIED",
        "is DENIED; cannot approve it",
        actor="alice",
        method=APPROVE,
        request_id=r.id,
    )
    now = c.get(r.id)
    assert now.state == types_pb2.REQUEST_STATE_DENIED
    assert [(a.approver, a.decision) for a in now.approvals] == [("bob", types_pb2.DECISION_DENY)]
    assert list(now.signatures) == []


def test_approve_after_expiry(shared: Running) -> None:
    """An approval after the TTL is FAILED_PRECONDITION REQUEST_EXPIRED; the request is EXPIRED."""
    c = shared.clients
    r = c.create(ttl=duration_pb2.Duration(seconds=3))
    c.approve("alice", r)
    expires = r.expire_time.ToDatetime(dt.UTC)
    wait_until(lambda: dt.datetime.now(dt.UTC) > expires, timeout=30)  # the TTL is over
    err = rpc_error(_approve_call(c, "bob", r.id, c.envelope("bob", r)))
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


def test_approve_after_signing(shared: Running) -> None:
    """A third approval after the request is signed is FAILED_PRECONDITION REQUEST_SIGNED."""
    c = shared.clients
    r = c.create()
    c.approve("alice", r)
    signed = c.approve("bob", r)
    assert signed.state == types_pb2.REQUEST_STATE_SIGNED
    _expect(
        shared.env,
        _approve_call(c, "carol", r.id, c.envelope("carol", r)),
        PRECONDITION,
        "REQUEST_SIGNED",
        "is SIGNED; cannot approve it",
        actor="carol",
        method=APPROVE,
        request_id=r.id,
    )
    now = c.get(r.id)
    assert [a.approver for a in now.approvals] == ["alice", "bob"]
    assert list(now.signatures) == list(signed.signatures)


# -- requesters -----------------------------------------------------------------------------


def test_cancel_by_other_requester(shared: Running) -> None:
    """Only the requester may cancel: ci2 cancelling ci's request is NOT_YOUR_REQUEST."""
    c = shared.clients
    r = c.create()
    req = signing_pb2.CancelSigningRequestRequest(id=r.id, reason="mine now")
    _expect(
        shared.env,
        lambda: c.signing("ci2").CancelSigningRequest(req, timeout=RPC_TIMEOUT),
        DENIED,
        "NOT_YOUR_REQUEST",
        "only the requester",
        actor="ci2",
        method="/signer.v1.SigningService/CancelSigningRequest",
        request_id=r.id,
    )
    _assert_pending(c, r, [])


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
    err = _expect(
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
    _assert_pending(c, r, [])
