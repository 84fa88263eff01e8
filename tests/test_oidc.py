"""OIDC requesters end to end: a real server, real TLS, the real `signer` command.

A CI job with no long-lived secret at all signs with its CI system's ID
token; the key's claim rules, not a requester list, decide; the pipeline's
actor (mapped to an officer) cannot approve; tokens grant nothing but
requesting, count for nothing on the mutual-TLS port, and are never written to
a log (tests/oidc_env.py). Bad tokens: tests/test_oidc_tokens.py; where the
CLI finds its token: tests/test_oidc_cli.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from signer.v1 import (
    approval_pb2,
    approval_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
    types_pb2,
)
from testbed.clients import RPC_TIMEOUT, sha256_digest
from testbed.commands import SIGNER, wait_until
from tests.harness import audit_events, rpc_error, sign_args
from tests.idp import IdP
from tests.oidc_env import (
    IDENTITY,
    ISSUER_NAME,
    OidcRunning,
    assert_pipeline_caller,
    bearer,
)

SIGNED = types_pb2.REQUEST_STATE_SIGNED
PENDING = types_pb2.REQUEST_STATE_PENDING


def created_entry(running: OidcRunning, request_id: str) -> dict[str, Any]:
    entries = [
        e
        for e in audit_events(running.oidc.env)
        if e["event"] == "request.created" and e["request_id"] == request_id
    ]
    assert len(entries) == 1
    return entries[0]


# -- the pipeline that holds no secret ---------------------------------------------------------


def test_pipeline_without_any_secret_signs_and_its_bundle_verifies(
    oidc: OidcRunning, tmp_path: Path
) -> None:
    """A pipeline holding only an ID token signs after two approvals and its bundle
    verifies; the request and its audit entry record the claims, actor and barred
    officers."""
    o, clients = oidc.oidc, oidc.running.clients
    artifact = tmp_path / "app-1.0.0.tar.gz"
    artifact.write_bytes(os.urandom(4096))
    token = o.mint()
    sign = sign_args(o.pipeline_profile, artifact, "--format", "bundle", "--timeout", "60s")
    proc = subprocess.Popen(
        [*SIGNER, *sign],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=o.cli_env(SIGNER_OIDC_TOKEN=token),
    )
    try:
        assert proc.stdout is not None
        request_id = proc.stdout.readline().strip()
        assert request_id, proc.communicate(timeout=30)
        request = oidc.request(request_id)
        assert request.requester == IDENTITY
        assert request.state == PENDING
        clients.approve("bob", request)
        clients.approve("carol", request)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    bundle = artifact.with_name(artifact.name + ".bundle.json")
    assert bundle.is_file()
    verified = o.signer(
        "verify",
        "--bundle",
        str(bundle),
        "--file",
        str(artifact),
        "--trust",
        str(o.env.root / "trust" / "release.toml"),
        "--json",
        env=o.cli_env(),
    )
    assert json.loads(verified.stdout)["request_id"] == request_id

    # The request carries who asked: the verified claims, the actor, who is barred.
    signed = oidc.request(request_id)
    assert signed.state == SIGNED
    assert_pipeline_caller(signed.caller)
    assert list(signed.caller.barred_approvers) == ["alice", "octocat"]
    # ...and so does its audit entry.
    entry = created_entry(oidc, request_id)
    assert entry["actor"] == IDENTITY
    assert entry["details"]["requester"] == IDENTITY
    caller = entry["details"]["caller"]
    assert caller["issuer"] == ISSUER_NAME and caller["identity"] == IDENTITY
    assert caller["claims"] == dict(signed.caller.claims)
    assert caller["actor"] == "octocat"
    assert caller["barred_approvers"] == ["alice", "octocat"]


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("ref", "refs/heads/main"),
        ("repository", "org/other"),
        ("environment", "staging"),
    ],
)
def test_claims_outside_the_key_policy_are_refused_and_audited(
    oidc: OidcRunning, claim: str, value: str
) -> None:
    """A token whose ref, repository or environment no rule admits is
    CLAIMS_NOT_ALLOWED, naming the condition that failed, and logged once as
    call.rejected with its claims."""
    o = oidc.oidc
    sub = f"repo:org/app:{claim}-{value}"
    err = rpc_error(lambda: o.create(o.mint(sub=sub, **{claim: value})))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "CLAIMS_NOT_ALLOWED"
    assert f"{claim} is {value!r}, which matches none of" in err.message  # the failed one
    rejected = [
        e
        for e in audit_events(o.env)
        if e["event"] == "call.rejected" and e["actor"] == f"oidc:{ISSUER_NAME}:{sub}"
    ]
    assert len(rejected) == 1
    details = rejected[0]["details"]
    assert details["reason"] == "CLAIMS_NOT_ALLOWED"
    assert details["method"] == "/signer.v1.SigningService/CreateSigningRequest"
    assert details["issuer"] == ISSUER_NAME
    assert details["claims"][claim] == value
    assert details["claims"]["sub"] == sub


def test_pipeline_actor_mapped_to_an_officer_cannot_approve(oidc: OidcRunning) -> None:
    """The officer mapped to the pipeline's actor cannot approve; two others sign it."""
    o, clients = oidc.oidc, oidc.running.clients
    created = o.create(o.mint())  # actor octocat, mapped to alice
    request = oidc.request(created.id)
    assert "alice" in request.caller.barred_approvers
    err = rpc_error(lambda: clients.approve("alice", request))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "REQUESTER_CANNOT_APPROVE"
    assert clients.approve("bob", request).state == PENDING  # alice did not count
    clients.approve("carol", request)
    wait_until(lambda: oidc.request(created.id).state == SIGNED)
    final = oidc.request(created.id)
    assert [a.approver for a in final.approvals] == ["bob", "carol"]
    assert not [
        e
        for e in audit_events(o.env)
        if e["request_id"] == created.id and e["actor"] == "alice"
        if e["event"] in ("request.approved", "request.denied")
    ]


def test_officer_not_mapped_to_the_actor_may_approve(oidc: OidcRunning) -> None:
    """With an actor mapped to no officer, only the actor is barred: alice approves."""
    o, clients = oidc.oidc, oidc.running.clients
    created = o.create(o.mint(actor="hubot"))
    request = oidc.request(created.id)
    assert list(request.caller.barred_approvers) == ["hubot"]
    clients.approve("alice", request)
    clients.approve("bob", request)
    wait_until(lambda: oidc.request(created.id).state == SIGNED)


# -- what a token grants, and where ------------------------------------------------------------


def test_token_caller_cannot_use_approval_or_audit_services(oidc: OidcRunning) -> None:
    """A token grants no approval or audit call (ROLE_NOT_ALLOWED); it may list keys."""
    o = oidc.oidc
    md = bearer(o.mint())
    with o.channel() as ch:
        calls = [
            lambda: approval_pb2_grpc.ApprovalServiceStub(ch).ListRequests(
                approval_pb2.ListRequestsRequest(), timeout=RPC_TIMEOUT, metadata=md
            ),
            lambda: audit_pb2_grpc.AuditServiceStub(ch).GetCheckpoint(
                audit_pb2.GetCheckpointRequest(), timeout=RPC_TIMEOUT, metadata=md
            ),
            lambda: audit_pb2_grpc.AuditServiceStub(ch).ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(), timeout=RPC_TIMEOUT, metadata=md
            ),
        ]
        for call in calls:
            err = rpc_error(call)
            assert (err.code, err.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "ROLE_NOT_ALLOWED",
            )
        # What a requester may do, it may.
        keys = signing_pb2_grpc.SigningServiceStub(ch).ListKeys(
            signing_pb2.ListKeysRequest(), timeout=RPC_TIMEOUT, metadata=md
        )
    assert "release" in [k.name for k in keys.keys]


def test_bearer_token_on_the_mutual_tls_port_is_ignored(oidc: OidcRunning) -> None:
    """On the mutual-TLS port a valid token counts for nothing: the certificate is the
    requester, and one without the requester role still may not request."""
    o, clients = oidc.oidc, oidc.running.clients
    md = bearer(o.mint())
    request = signing_pb2.CreateSigningRequestRequest(
        key_name="release", digests=[sha256_digest(os.urandom(16))]
    )
    made = clients.signing("ci").CreateSigningRequest(request, timeout=RPC_TIMEOUT, metadata=md)
    assert made.request.requester == "ci"  # the certificate's identity, not the token's
    assert not made.request.HasField("caller")
    assert "caller" not in created_entry(oidc, made.request.id)["details"]
    # A certificate with no requester role gains nothing from a valid token.
    err = rpc_error(
        lambda: clients.signing("auditor").CreateSigningRequest(
            request, timeout=RPC_TIMEOUT, metadata=md
        )
    )
    assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


# -- secrecy -----------------------------------------------------------------------------------


def test_tokens_never_reach_the_server_log_or_the_audit_log(oidc: OidcRunning) -> None:
    """No token or its signature reaches the server log or the audit log, and the server
    log never says `Bearer`."""
    o = oidc.oidc
    # Some traffic of its own, so this holds even when run alone.
    o.create(o.mint())
    rpc_error(lambda: o.create(o.mint(ref="refs/heads/main")))
    rpc_error(lambda: o.create(o.remember(IdP.tamper(o.mint()))))
    log = o.env.root / "server.log"
    wait_until(lambda: "token rejected" in log.read_text(errors="replace"), timeout=30)
    server_log = oidc.running.server.output()
    audit = json.dumps(audit_events(o.env))
    assert o.minted
    for token in o.minted:
        secrets = [token] + [s for s in token.split(".")[2:] if len(s) >= 16]
        for s in secrets:
            assert s not in server_log
            assert s not in audit
    assert "Bearer" not in server_log


def test_a_pipeline_lists_only_requests_its_claims_are_admitted_to(oidc: OidcRunning) -> None:
    """Two pipelines whose tokens name one identity (the same sub), one admitted to the
    key and one not: the admitted one lists its request, the other sees none of it."""
    o = oidc.oidc
    sub = "repo:org/app:shared-identity"
    made = o.create(o.mint(sub=sub))
    listing = signing_pb2.ListSigningRequestsRequest(state=types_pb2.REQUEST_STATE_PENDING)

    def listed(token: str) -> set[str]:
        with o.channel() as ch:
            resp = signing_pb2_grpc.SigningServiceStub(ch).ListSigningRequests(
                listing, timeout=RPC_TIMEOUT, metadata=bearer(token)
            )
        return {r.id for r in resp.requests}

    assert made.id in listed(o.mint(sub=sub))
    assert made.id not in listed(o.mint(sub=sub, ref="refs/heads/feature"))
