"""Refused approvals and denials: each gets its status, reason and phrase, one audit entry.

One table (`REFUSALS`): who decides, whose key signed, what the statement binds,
the envelope itself and the request's state; each refused decision leaves the
request with its state, approvals and signatures (tests/bad_input.py checks each
refusal).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from signer.dsse import PAYLOAD_TYPE, Statement, pae
from signer.encoding import canonical_json
from signer.model import Digest
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients
from testbed.process import Running
from tests.bad_input import (
    APPROVE,
    DENIED,
    DENY,
    INVALID,
    PRECONDITION,
    approve_call,
    assert_pending,
    deny_call,
    expect_refused,
)


def _key_id(clients: Clients, key: str) -> str:
    resp = clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name=key), timeout=RPC_TIMEOUT
    )
    return str(resp.key.key_id)


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
    after: Callable[[Made], None] = lambda m: assert_pending(m.c, m.r, [], who=m.r.requester)


def _envelope(officer: str, **fields: Any) -> Callable[[Made], bytes]:
    return lambda m: m.c.envelope(officer, m.r, **fields)


def _approved_by_alice(m: Made) -> None:
    m.c.approve("alice", m.r)


def _still_pending_with_alice(m: Made) -> None:
    assert_pending(m.c, m.r, ["alice"])


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
    assert_pending(m.c, m.r, [])
    assert_pending(m.c, m.other, [])


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
        call: Callable[[], Any] = approve_call(c, refusal.officer, target.id, envelope)
    else:
        call = deny_call(c, refusal.officer, target.id, envelope)
    err = expect_refused(
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
