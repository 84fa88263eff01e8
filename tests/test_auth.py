"""Every RPC needs mutual TLS and an allowed role; identity comes only from the certificate.

Against the shared server: every RPC x every failing certificate or role gets
its status code and is audited; metadata never grants an identity; the access
rules cover every method; allowed calls succeed. The interceptor in process:
tests/test_auth_interceptor.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signer.server.auth import ANY, DEFAULT_RULES
from signer.v1 import (
    approval_pb2,
    approval_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
    types_pb2,
)
from testbed.clients import RPC_TIMEOUT
from testbed.env import Env
from testbed.process import Running
from tests.harness import audit_events, rpc_error

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "SigningService": signing_pb2_grpc.SigningServiceStub,
    "ApprovalService": approval_pb2_grpc.ApprovalServiceStub,
    "AuditService": audit_pb2_grpc.AuditServiceStub,
}
# (service, method, empty request, server-streaming?)
RPCS: list[tuple[str, str, type[Message], bool]] = [
    ("SigningService", "CreateSigningRequest", signing_pb2.CreateSigningRequestRequest, False),
    ("SigningService", "GetSigningRequest", signing_pb2.GetSigningRequestRequest, False),
    ("SigningService", "ListSigningRequests", signing_pb2.ListSigningRequestsRequest, False),
    ("SigningService", "WaitSigningRequest", signing_pb2.WaitSigningRequestRequest, False),
    ("SigningService", "CancelSigningRequest", signing_pb2.CancelSigningRequestRequest, False),
    ("SigningService", "GetPublicKey", signing_pb2.GetPublicKeyRequest, False),
    ("SigningService", "ListKeys", signing_pb2.ListKeysRequest, False),
    ("SigningService", "GetPolicyChain", signing_pb2.GetPolicyChainRequest, False),
    ("ApprovalService", "ListRequests", approval_pb2.ListRequestsRequest, False),
    ("ApprovalService", "GetRequest", approval_pb2.GetRequestRequest, False),
    ("ApprovalService", "ListRequestDigests", approval_pb2.ListRequestDigestsRequest, False),
    ("ApprovalService", "Approve", approval_pb2.ApproveRequest, False),
    ("ApprovalService", "Deny", approval_pb2.DenyRequest, False),
    ("ApprovalService", "WatchRequests", approval_pb2.WatchRequestsRequest, True),
    ("ApprovalService", "FreezeKey", approval_pb2.FreezeKeyRequest, False),
    ("ApprovalService", "ListPolicyProposals", approval_pb2.ListPolicyProposalsRequest, False),
    ("ApprovalService", "ApprovePolicy", approval_pb2.ApprovePolicyRequest, False),
    ("ApprovalService", "DenyPolicy", approval_pb2.DenyPolicyRequest, False),
    ("AuditService", "ListAuditEvents", audit_pb2.ListAuditEventsRequest, False),
    ("AuditService", "GetCheckpoint", audit_pb2.GetCheckpointRequest, False),
    ("AuditService", "GetEntries", audit_pb2.GetEntriesRequest, False),
    ("AuditService", "GetInclusionProof", audit_pb2.GetInclusionProofRequest, False),
    ("AuditService", "GetConsistencyProof", audit_pb2.GetConsistencyProofRequest, False),
]
_RPC_IDS = [f"{s}.{m}" for s, m, _, _ in RPCS]
# Identities that hold a role, but not one the method allows.
WRONG_ROLES: dict[str, tuple[str, ...]] = {
    "SigningService": ("auditor", "alice", "admin"),
    "ApprovalService": ("ci", "auditor", "admin"),
    "AuditService": ("alice", "ci", "admin"),
}
_READ_ANY_ROLE = {"GetPublicKey", "ListKeys", "GetPolicyChain"}  # every role may call these
WRONG_ROLE_CASES = [
    pytest.param(svc, m, req, stream, who, id=f"{svc}.{m}-{who}")
    for svc, m, req, stream in RPCS
    if m not in _READ_ANY_ROLE
    for who in WRONG_ROLES[svc]
]


def _invoke(
    channel: grpc.Channel,
    service: str,
    method: str,
    request: Message,
    stream: bool,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Any:
    """Call one RPC with a deadline; a server stream is consumed to its end."""
    fn = getattr(STUBS[service](channel), method)
    if stream:
        return list(fn(request, timeout=RPC_TIMEOUT, metadata=metadata))
    return fn(request, timeout=RPC_TIMEOUT, metadata=metadata)


def _rejections(env: Env, mark: int) -> list[dict[str, Any]]:
    return [e for e in audit_events(env)[mark:] if e["event"] == "call.rejected"]


@pytest.fixture(scope="module")
def bad_channels(shared: Running) -> Iterator[dict[str, grpc.Channel]]:
    """Channels that must fail the TLS handshake: no client certificate, another CA's."""
    ci = shared.env.profile("ci")
    no_cert = grpc.secure_channel(
        ci.server, grpc.ssl_channel_credentials(root_certificates=ci.ca.read_bytes())
    )
    outsider = shared.env.profile("outsider").channel()
    yield {"no certificate": no_cert, "outsider": outsider}
    no_cert.close()
    outsider.close()


# -- TLS: no certificate, or one from another CA ------------------------------------------


@pytest.mark.parametrize("who", ["no certificate", "outsider"])
@pytest.mark.parametrize(("service", "method", "request_cls", "stream"), RPCS, ids=_RPC_IDS)
def test_handshake_refused(
    shared: Running,
    bad_channels: dict[str, grpc.Channel],
    who: str,
    service: str,
    method: str,
    request_cls: type[Message],
    stream: bool,
) -> None:
    """Without a client certificate from the server's CA the TLS handshake fails: UNAVAILABLE."""
    mark = len(audit_events(shared.env))
    err = rpc_error(lambda: _invoke(bad_channels[who], service, method, request_cls(), stream))
    assert err.code == grpc.StatusCode.UNAVAILABLE, err
    assert "CERTIFICATE_VERIFY_FAILED" not in err.message  # the server refused, not the client
    assert _rejections(shared.env, mark) == []  # nothing reached the application


def test_outsider_certificate_is_really_from_another_ca(shared: Running) -> None:
    """The `outsider` profile's certificate names a real identity but another issuer."""
    p = shared.env.profile("outsider")
    assert p.cert is not None
    cert = x509.load_pem_x509_certificate(p.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(p.ca.read_bytes())
    assert p.identity == "outsider"
    assert cert.issuer != ca.subject


# -- valid certificate, no role ----------------------------------------------------------------


@pytest.mark.parametrize(("service", "method", "request_cls", "stream"), RPCS, ids=_RPC_IDS)
def test_no_role(
    shared: Running, service: str, method: str, request_cls: type[Message], stream: bool
) -> None:
    """A valid certificate whose identity has no role is PERMISSION_DENIED, and audited."""
    mark = len(audit_events(shared.env))
    ch = shared.clients.channel("nobody")
    err = rpc_error(lambda: _invoke(ch, service, method, request_cls(), stream))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"), err
    assert "'nobody' has no role in this server's config" in err.message
    [entry] = _rejections(shared.env, mark)
    assert entry["actor"] == "nobody"
    assert entry["details"]["method"] == f"/signer.v1.{service}/{method}"
    assert entry["details"]["reason"] == "ROLE_NOT_ALLOWED"


# -- a role the method does not allow -----------------------------------------------------------


@pytest.mark.parametrize(("service", "method", "request_cls", "stream", "who"), WRONG_ROLE_CASES)
def test_role_not_allowed(
    shared: Running,
    service: str,
    method: str,
    request_cls: type[Message],
    stream: bool,
    who: str,
) -> None:
    """A role the method's rule does not list is PERMISSION_DENIED ROLE_NOT_ALLOWED, audited."""
    mark = len(audit_events(shared.env))
    ch = shared.clients.channel(who)
    err = rpc_error(lambda: _invoke(ch, service, method, request_cls(), stream))
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"), err
    allowed = " or ".join(sorted(DEFAULT_RULES[f"/signer.v1.{service}/{method}"]))
    assert f"{method} needs role {allowed}; {who!r} has" in err.message, err.message
    [entry] = _rejections(shared.env, mark)
    assert entry["actor"] == who
    assert entry["request_id"] == ""
    assert entry["details"]["method"] == f"/signer.v1.{service}/{method}"
    assert entry["details"]["reason"] == "ROLE_NOT_ALLOWED"
    assert entry["details"]["message"] == err.message


# -- identity only from the certificate -----------------------------------------------------------

_SPOOF = (
    ("x-identity", "alice"),
    ("x-client-identity", "alice"),
    ("authorization", "Bearer alice"),
    ("x-forwarded-client-cert", "Subject=CN=alice"),
    ("x-ssl-client-cn", "alice"),
)


def test_metadata_does_not_grant_approver_rights(shared: Running) -> None:
    """`ci` claiming to be alice in metadata still cannot list or approve as alice."""
    c = shared.clients
    r = c.create()
    mark = len(audit_events(shared.env))
    ch = c.channel("ci")
    list_req = approval_pb2.ListRequestsRequest()
    approve_req = approval_pb2.ApproveRequest(id=r.id, envelope=c.envelope("alice", r))
    calls: list[Callable[[], Any]] = [
        lambda: _invoke(ch, "ApprovalService", "ListRequests", list_req, False, _SPOOF),
        lambda: _invoke(ch, "ApprovalService", "Approve", approve_req, False, _SPOOF),
    ]
    for call in calls:
        err = rpc_error(call)
        assert (err.code, err.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        ), err
        assert "'ci' has requester" in err.message
    assert [e["actor"] for e in _rejections(shared.env, mark)] == ["ci", "ci"]
    now = c.get(r.id)
    assert now.state == types_pb2.REQUEST_STATE_PENDING and list(now.approvals) == []


def test_metadata_does_not_change_the_requester(shared: Running) -> None:
    """A request made by `ci` with spoofing metadata is recorded as made by ci."""
    c = shared.clients
    req = signing_pb2.CreateSigningRequestRequest(
        key_name="release",
        digests=[
            types_pb2.Digest(
                algorithm=types_pb2.HASH_ALGORITHM_SHA256, value=b"\1" * 32, artifact_name="a"
            )
        ],
    )
    spoof = (*_SPOOF, ("x-identity", "carol"))
    r = c.signing("ci").CreateSigningRequest(req, timeout=RPC_TIMEOUT, metadata=spoof).request
    assert r.requester == "ci"
    created = [e for e in audit_events(shared.env) if e["request_id"] == r.id]
    assert created[0]["event"] == "request.created" and created[0]["actor"] == "ci"
    # carol (an officer) may now approve it: she is not the requester, whatever metadata said.
    assert c.approve("carol", r).approvals[0].approver == "carol"


def test_metadata_does_not_grant_auditor_rights(shared: Running) -> None:
    """An officer claiming the auditor identity in metadata cannot read the audit log."""
    ch = shared.clients.channel("alice")
    spoof = (("x-identity", "auditor"), ("authorization", "Bearer auditor"))
    err = rpc_error(
        lambda: _invoke(
            ch, "AuditService", "ListAuditEvents", audit_pb2.ListAuditEventsRequest(), False, spoof
        )
    )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


# -- rules cover every method --------------------------------------------------------------------


def test_default_rules_cover_every_method() -> None:
    """Every method of the three services has a rule naming real roles, none open to ANY."""
    methods = {
        f"/{svc.full_name}/{m.name}"
        for mod, name in (
            (signing_pb2, "SigningService"),
            (approval_pb2, "ApprovalService"),
            (audit_pb2, "AuditService"),
        )
        for svc in [mod.DESCRIPTOR.services_by_name[name]]
        for m in svc.methods
    }
    assert {f"/signer.v1.{s}/{m}" for s, m, _, _ in RPCS} == methods  # the table is complete
    missing = methods - DEFAULT_RULES.keys()
    assert not missing, f"methods without an access rule: {sorted(missing)}"
    for m in methods:
        assert DEFAULT_RULES[m], m
        assert ANY not in DEFAULT_RULES[m], m
        assert DEFAULT_RULES[m] <= {"requester", "approver", "auditor", "admin"}, m
    stale = {m for m in DEFAULT_RULES if m.startswith("/signer.v1.")} - methods
    assert not stale, f"rules for methods that do not exist: {sorted(stale)}"


# -- allowed calls succeed ------------------------------------------------------------------


def test_allowed_calls_succeed(shared: Running) -> None:
    """One allowed call per service succeeds: requester, approver and auditor."""
    c = shared.clients
    keys = c.signing("ci").ListKeys(signing_pb2.ListKeysRequest(), timeout=RPC_TIMEOUT)
    assert "release" in {k.name for k in keys.keys}
    r = c.create()
    listed = c.approval("alice").ListRequests(
        approval_pb2.ListRequestsRequest(page_size=500), timeout=RPC_TIMEOUT
    )
    assert listed.requests
    got = c.approval("alice").GetRequest(
        approval_pb2.GetRequestRequest(id=r.id), timeout=RPC_TIMEOUT
    )
    assert got.request.id == r.id
    events = c.audit("auditor").ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(request_id=r.id), timeout=RPC_TIMEOUT
    )
    assert [e.event for e in events.events] == ["request.created"]


@pytest.mark.parametrize("who", ["ci", "alice", "auditor", "admin"])
def test_public_keys_readable_by_every_role(shared: Running, who: str) -> None:
    """GetPublicKey, ListKeys and GetPolicyChain are open to every configured role."""
    stub = shared.clients.signing(who)
    pub = stub.GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name="release"), timeout=RPC_TIMEOUT
    )
    assert pub.key.public_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert stub.ListKeys(signing_pb2.ListKeysRequest(), timeout=RPC_TIMEOUT).keys
    chain = stub.GetPolicyChain(signing_pb2.GetPolicyChainRequest(), timeout=RPC_TIMEOUT)
    assert chain.versions and chain.versions[0].index >= 0


def test_watch_allowed_for_approver(shared: Running) -> None:
    """An approver's WatchRequests stream opens and delivers pending requests."""
    c = shared.clients
    r = c.create()
    stream = c.approval("alice").WatchRequests(approval_pb2.WatchRequestsRequest(), timeout=60)
    try:
        seen = set()
        for resp in stream:
            seen.add(resp.request.id)
            if r.id in seen:
                break
        assert r.id in seen
    finally:
        stream.cancel()


def test_health_open_to_any_certificate(shared: Running) -> None:
    """Health checks need a valid certificate but no role."""
    resp = health_pb2_grpc.HealthStub(shared.clients.channel("nobody")).Check(
        health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT
    )
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
