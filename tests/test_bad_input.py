"""Bad input gets a clear status, a machine-readable reason, an audit entry and no effect."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from signer.client.profile import RemoteError
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


# -- officers' decisions: one table ---------------------------------------------------------


@dataclass
class Made:
    """What a refused decision is made on: the request, another one of the same key (for
    the cases that need one), and what the case saw before the refused call."""

    c: Clients
    r: types_pb2.SigningRequest
    other_request: types_pb2.SigningRequest | None = None
    signatures: list[bytes] = field(default_factory=list)

    @property
    def other(self) -> types_pb2.SigningRequest:
        assert self.other_request is not None, "the case needs other=True"
        return self.other_request


@dataclass(frozen=True)
class Refusal:
    """One decision the server must refuse: who sends which envelope to which method
    (on which request), the status, reason and phrase it gets, and what must not change."""

    officer: str
    envelope: Callable[[Made], bytes]
    code: grpc.StatusCode
    reason: str
    phrase: str
    method: str = APPROVE
    requester: str = "ci"
    other: bool = False  # the case needs another request
    on_other: bool = False  # sent for the other request, not `r`
    before: Callable[[Made], None] = lambda m: None
    after: Callable[[Made], None] = lambda m: _assert_pending(m.c, m.r, [], who=m.r.requester)


def _envelope(officer: str, **fields: Any) -> Callable[[Made], bytes]:
    return lambda m: m.c.envelope(officer, m.r, **fields)


def _approved_by_alice(m: Made) -> None:
    m.c.approve("alice", m.r)


def _still_pending_with_alice(m: Made) -> None:
    _assert_pending(m.c, m.r, ["alice"])


def _denied_by_bob(m: Made) -> None:
    assert m.c.deny("bob", m.r, reason="unknown commit").state == types_pb2.REQUEST_STATE_DENIED


def _still_denied_by_bob(m: Made) -> None:
    now = m.c.get(m.r.id)
    assert now.state == types_pb2.REQUEST_STATE_DENIED
    assert [(a.approver, a.decision) for a in now.approvals] == [("bob", types_pb2.DECISION_DENY)]
    assert list(now.signatures) == []


def _signed(m: Made) -> None:
    m.c.approve("alice", m.r)
    signed = m.c.approve("bob", m.r)
    assert signed.state == types_pb2.REQUEST_STATE_SIGNED
    m.signatures = list(signed.signatures)


def _still_signed_once(m: Made) -> None:
    now = m.c.get(m.r.id)
    assert now.state == types_pb2.REQUEST_STATE_SIGNED
    assert [a.approver for a in now.approvals] == ["alice", "bob"]
    assert list(now.signatures) == m.signatures


def _both_pending(m: Made) -> None:
    _assert_pending(m.c, m.r, [])
    _assert_pending(m.c, m.other, [])


def _tampered(m: Made) -> bytes:
    """alice's envelope for `r`, its payload edited to name `other` after signing."""
    good = json.loads(m.c.envelope("alice", m.r))
    stmt = json.loads(base64.b64decode(good["payload"]))
    stmt["request_id"] = m.other.id
    good["payload"] = base64.b64encode(canonical_json(stmt)).decode()
    return canonical_json(good)


def _statement(m: Made) -> Statement:
    r = m.r
    digests = tuple(Digest("sha256", d.value, d.artifact_name) for d in r.digests)
    return Statement(
        r.id, r.key_name, r.key_id, digests, "approve", "alice", dt.datetime.now(dt.UTC)
    )


def _mismatch(phrase: str, **fields: Any) -> Refusal:
    """alice's approval of `r` with statement fields changed (values made per request)."""

    def envelope(m: Made) -> bytes:
        made = {k: (v(m) if callable(v) else v) for k, v in fields.items()}
        return m.c.envelope("alice", m.r, **made)

    return Refusal(
        "alice", envelope, INVALID, "STATEMENT_MISMATCH", phrase, other=True, after=_both_pending
    )


def _malformed(phrase: str, envelope: Callable[[Made], bytes]) -> Refusal:
    return Refusal("alice", envelope, INVALID, "BAD_ENVELOPE", phrase)


def _mangled(how: str) -> Callable[[Made], bytes]:
    return lambda m: _mangle(m.c.envelope("alice", m.r), how)


def _other_digest(m: Made) -> tuple[Digest, ...]:
    return (Digest("sha256", hashlib.sha256(b"other").digest(), "artifact.bin"),)


def _renamed_digest(m: Made) -> tuple[Digest, ...]:
    d = m.r.digests[0]
    return (Digest("sha256", d.value, d.artifact_name + ".evil"),)


def _p384_key_id(m: Made) -> str:
    return _key_id(m.c, "k-ecdsa-p384")


_NOT_FRESH = "re-fetch the request and sign again"

REFUSALS: dict[str, Refusal] = {
    # who decides
    "same officer approves twice": Refusal(
        "alice",
        _envelope("alice"),
        PRECONDITION,
        "ALREADY_DECIDED",
        "each officer counts once",
        before=_approved_by_alice,
        after=_still_pending_with_alice,
    ),
    "same officer denies after approving": Refusal(
        "alice",
        _envelope("alice", decision="deny", reason="changed my mind"),
        PRECONDITION,
        "ALREADY_DECIDED",
        "each officer counts once",
        method=DENY,
        before=_approved_by_alice,
        after=_still_pending_with_alice,
    ),
    "approver not in the key's policy": Refusal(
        "dave",
        _envelope("dave"),
        DENIED,
        "NOT_AN_APPROVER",
        "'dave' is not an approver for key 'release'",
    ),
    "requester approves own request": Refusal(
        "carol",
        _envelope("carol"),
        DENIED,
        "REQUESTER_CANNOT_APPROVE",
        "cannot decide on it",
        requester="carol",
    ),
    # whose key signed
    "signed with another officer's key": Refusal(
        "alice",
        _envelope("alice", signer="bob"),
        INVALID,
        "BAD_APPROVAL_SIGNATURE",
        "does not verify with the approver's registered key",
    ),
    "another officer's envelope": Refusal(
        "alice",
        _envelope("bob"),
        INVALID,
        "BAD_APPROVAL_SIGNATURE",
        "does not verify with the approver's registered key",
    ),
    "payload edited after signing": Refusal(
        "alice",
        _tampered,
        INVALID,
        "BAD_APPROVAL_SIGNATURE",
        "does not verify",
        other=True,
        on_other=True,
        after=_both_pending,
    ),
    # what the statement binds
    "statement for another request": _mismatch(
        "request_id differ", request_id=lambda m: m.other.id
    ),
    "statement for another digest": _mismatch("digests differ", digests=_other_digest),
    "statement for a renamed artifact": _mismatch("digests differ", digests=_renamed_digest),
    "statement without digests": _mismatch("digests differ", digests=()),
    "statement for another key": _mismatch(
        "key_name, key_id differ", key_name="k-ecdsa-p384", key_id=_p384_key_id
    ),
    "statement for another key name": _mismatch("key_name differ", key_name="k-ecdsa-p384"),
    "statement for another key id": _mismatch("key_id differ", key_id=_p384_key_id),
    "statement for an unknown key id": _mismatch("key_id differ", key_id="0" * 64),
    "statement by another approver": _mismatch("approver differ", approver="bob"),
    "statement of a denial sent to Approve": _mismatch(
        "decision differ", decision="deny", reason="no"
    ),
    "statement issued in the future": _mismatch(
        "issued_at is in the future",
        issued_at=lambda m: dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    ),
    "statement issued before the request": _mismatch(
        "issued before the request existed",
        issued_at=lambda m: m.r.create_time.ToDatetime(dt.UTC) - dt.timedelta(hours=1),
    ),
    "statement of an approval sent to Deny": Refusal(
        "alice", _envelope("alice"), INVALID, "STATEMENT_MISMATCH", "decision differ", method=DENY
    ),
    # the envelope itself
    "empty envelope": _malformed("the approval envelope is empty", lambda m: b""),
    "envelope not JSON": _malformed("not valid DSSE JSON", lambda m: b"this is not json {"),
    "envelope a JSON list": _malformed("not valid DSSE JSON", lambda m: b"[]"),
    **{
        f"envelope with {how}": _malformed(phrase, _mangled(how))
        for how, phrase in (
            ("wrong payloadType", "payloadType must be application/vnd.signer.approval.v1+json"),
            ("two signatures", "exactly one signature"),
            ("no signatures", "exactly one signature"),
            ("bad base64 payload", "not valid DSSE JSON"),
            ("bad base64 sig", "not valid DSSE JSON"),
            ("missing payload", "not valid DSSE JSON"),
        )
    },
    "oversized envelope": _malformed(
        "is over 262144 bytes", lambda m: m.c.envelope("alice", m.r) + b" " * (256 * 1024)
    ),
    "statement not canonical JSON": _malformed(
        "not in canonical JSON form",
        lambda m: _signed_payload(
            m.c, "alice", json.dumps(_statement(m).as_dict(), indent=2).encode()
        ),
    ),
    "statement with an extra field": _malformed(
        "fields must be exactly",
        lambda m: _signed_payload(
            m.c, "alice", canonical_json({**_statement(m).as_dict(), "extra": 1})
        ),
    ),
    "statement not an object": _malformed(
        "must be a JSON object", lambda m: _signed_payload(m.c, "alice", b"[]")
    ),
    # the request's state
    "approval after a denial": Refusal(
        "alice",
        _envelope("alice"),
        PRECONDITION,
        "REQUEST_DENIED",
        "is DENIED; cannot approve it",
        before=_denied_by_bob,
        after=_still_denied_by_bob,
    ),
    "approval after signing": Refusal(
        "carol",
        _envelope("carol"),
        PRECONDITION,
        "REQUEST_SIGNED",
        "is SIGNED; cannot approve it",
        before=_signed,
        after=_still_signed_once,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_decision(shared: Running, case: str) -> None:
    """Each refused decision gets its status, reason and phrase, one audited rejection,
    and changes nothing: the request keeps its state, approvals and signatures."""
    refusal = REFUSALS[case]
    c = shared.clients
    made = Made(c, c.create(who=refusal.requester), c.create() if refusal.other else None)
    assert made.r.requester == refusal.requester
    refusal.before(made)
    target = made.other if refusal.on_other else made.r
    envelope = refusal.envelope(made)
    if refusal.method == APPROVE:
        call: Callable[[], Any] = _approve_call(c, refusal.officer, target.id, envelope)
    else:
        call = _deny_call(c, refusal.officer, target.id, envelope)
    err = _expect(
        shared.env,
        call,
        refusal.code,
        refusal.reason,
        refusal.phrase,
        actor=refusal.officer,
        method=refusal.method,
        request_id=target.id,
    )
    if refusal.reason == "STATEMENT_MISMATCH" and "issued" not in refusal.phrase:
        assert _NOT_FRESH in err.message
    refusal.after(made)


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
