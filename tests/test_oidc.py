"""OIDC requesters end to end: a real server, real TLS, the real `signer` command.

A CI job with no long-lived secret at all signs with its CI system's ID
token; the key's claim rules, not a requester list, decide; the pipeline's
actor (mapped to an officer) cannot approve; every bad token is refused with
its reason; tokens grant nothing but requesting, count for nothing on the
mutual-TLS port, and are never written to a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
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
from tests.harness import audit_events, rpc_error
from tests.idp import IdP, SigningKey
from tests.idp_servers import GitHubTokenEndpoint
from tests.oidc_env import IDENTITY, ISSUER_NAME, SUBJECT, OidcRunning, bearer

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


def assert_pipeline_caller(caller: types_pb2.TokenCaller, **claims: str) -> None:
    assert caller.issuer == ISSUER_NAME
    expected = {
        "sub": SUBJECT,
        "repository": "org/app",
        "ref": "refs/tags/v1.0.0",
        "workflow": "release",
        "environment": "release",
        "actor": "octocat",
        **claims,
    }
    assert dict(caller.claims) == expected
    assert caller.actor == expected["actor"]


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
    proc = subprocess.Popen(
        [
            *SIGNER,
            "sign",
            "--profile",
            str(o.pipeline_profile),
            "--key-name",
            "release",
            "--file",
            str(artifact),
            "--format",
            "bundle",
            "--timeout",
            "60s",
        ],
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
    CLAIMS_NOT_ALLOWED, logged once as call.rejected with its claims."""
    o = oidc.oidc
    sub = f"repo:org/app:{claim}-{value}"
    err = rpc_error(lambda: o.create(o.mint(sub=sub, **{claim: value})))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "CLAIMS_NOT_ALLOWED"
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


# -- bad tokens over real gRPC -----------------------------------------------------------------


def _now() -> int:
    return int(time.time())


BAD_TOKENS: dict[str, tuple[str, Any]] = {
    "expired": (
        "TOKEN_EXPIRED",
        lambda idp: idp.mint(idp.claims(iat=_now() - 900, nbf=_now() - 900, exp=_now() - 60)),
    ),
    "wrong-audience": ("TOKEN_AUDIENCE", lambda idp: idp.mint(idp.claims(aud="other"))),
    "wrong-issuer": (
        "TOKEN_ISSUER",
        lambda idp: idp.mint(idp.claims(iss="https://gitlab.example.com")),
    ),
    "unknown-kid": ("TOKEN_UNKNOWN_KEY", lambda idp: idp.mint(key=SigningKey.ec("k9"))),
    "alg-none": ("TOKEN_ALGORITHM", lambda idp: idp.mint_none()),
    "hs256-public-key": ("TOKEN_ALGORITHM", lambda idp: idp.mint_hs256_with_public_key()),
    "es256-on-rsa-kid": ("TOKEN_ALGORITHM", lambda idp: idp.mint(key=SigningKey.ec("k1"))),
    "tampered": ("TOKEN_SIGNATURE", lambda idp: IdP.tamper(idp.mint(), "ref", "refs/tags/v9")),
    "foreign-key-same-kid": ("TOKEN_SIGNATURE", lambda idp: idp.mint(key=SigningKey.ec("k2"))),
    "not-yet-valid": (
        "TOKEN_NOT_YET_VALID",
        lambda idp: idp.mint(idp.claims(nbf=_now() + 600, exp=_now() + 900)),
    ),
    "no-sub": ("TOKEN_CLAIMS", lambda idp: idp.mint(idp.claims(sub=None))),
    "control-character": ("TOKEN_CLAIMS", lambda idp: idp.mint(idp.claims(ref="v1\nx: y"))),
    "garbage": ("TOKEN_MALFORMED", lambda idp: "garbage"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_is_unauthenticated_with_its_reason(oidc: OidcRunning, case: str) -> None:
    """Each bad token sent over gRPC is UNAUTHENTICATED with the verifier's reason."""
    o = oidc.oidc
    reason, make = BAD_TOKENS[case]
    token = o.remember(make(o.idp))
    err = rpc_error(lambda: o.create(token))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert err.reason == reason
    assert err.message.startswith("OIDC token rejected")


@pytest.mark.parametrize(
    "value",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token-without-scheme"],
)
def test_authorization_that_is_not_one_bearer_token_is_malformed(
    oidc: OidcRunning, value: str
) -> None:
    """An authorization header other than `Bearer TOKEN` is TOKEN_MALFORMED."""
    o = oidc.oidc
    with o.channel() as ch:
        err = rpc_error(
            lambda: signing_pb2_grpc.SigningServiceStub(ch).ListKeys(
                signing_pb2.ListKeysRequest(),
                timeout=RPC_TIMEOUT,
                metadata=(("authorization", value),),
            )
        )
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MALFORMED")


def test_two_bearer_tokens_are_malformed(oidc: OidcRunning) -> None:
    """Two authorization headers, even with one valid token, are TOKEN_MALFORMED."""
    o = oidc.oidc
    token = o.mint()
    with o.channel() as ch:
        err = rpc_error(
            lambda: signing_pb2_grpc.SigningServiceStub(ch).ListKeys(
                signing_pb2.ListKeysRequest(),
                timeout=RPC_TIMEOUT,
                metadata=(*bearer(token), *bearer(token)),
            )
        )
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MALFORMED")


def test_no_token_on_the_oidc_port_is_no_credentials(oidc: OidcRunning) -> None:
    """A call on the OIDC port with no token is UNAUTHENTICATED NO_CREDENTIALS."""
    o = oidc.oidc
    with o.channel() as ch:
        err = rpc_error(
            lambda: signing_pb2_grpc.SigningServiceStub(ch).CreateSigningRequest(
                signing_pb2.CreateSigningRequestRequest(
                    key_name="release", digests=[sha256_digest(b"x")]
                ),
                timeout=RPC_TIMEOUT,
            )
        )
    assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "NO_CREDENTIALS")


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


# -- the command line's token sources ----------------------------------------------------------


def test_oidc_token_file_flag_is_used(oidc: OidcRunning, tmp_path: Path) -> None:
    """`--oidc-token-file` wins over SIGNER_OIDC_TOKEN, for sign and status alike."""
    o = oidc.oidc
    artifact = tmp_path / "app.bin"
    artifact.write_bytes(os.urandom(64))
    token_file = tmp_path / "id-token"
    token_file.write_text(o.mint(sub="repo:org/app:ref:refs/tags/v2") + "\n")
    # The file wins over the environment variable (which would be refused).
    env = o.cli_env(SIGNER_OIDC_TOKEN="garbage")
    profile = str(o.pipeline_profile)
    made = o.signer(
        "sign",
        "--profile",
        profile,
        "--key-name",
        "release",
        "--file",
        str(artifact),
        "--no-wait",
        "--oidc-token-file",
        str(token_file),
        env=env,
    )
    request_id = made.stdout.strip()
    request = oidc.request(request_id)
    assert request.requester == f"oidc:{ISSUER_NAME}:repo:org/app:ref:refs/tags/v2"
    assert request.caller.claims["repository"] == "org/app"
    shown = o.signer(
        "status",
        request_id,
        "--profile",
        profile,
        "--oidc-token-file",
        str(token_file),
        "--json",
        env=env,
    )
    assert json.loads(shown.stdout)["state"] == "PENDING"
    # Without the file, the (bad) variable is what is sent.
    refused = o.signer("status", request_id, "--profile", profile, env=env, check=False)
    assert refused.returncode == 1
    assert "TOKEN_MALFORMED" in refused.stderr


def test_github_actions_runner_token_is_fetched_for_the_profile_audience(
    oidc: OidcRunning, tmp_path: Path
) -> None:
    """On a GitHub Actions runner the CLI fetches a token for the profile's audience."""
    o = oidc.oidc
    artifact = tmp_path / "app.bin"
    artifact.write_bytes(os.urandom(64))
    with GitHubTokenEndpoint(o.idp) as endpoint:
        made = o.signer(
            "sign",
            "--profile",
            str(o.pipeline_profile),
            "--key-name",
            "release",
            "--file",
            str(artifact),
            "--no-wait",
            env=o.cli_env(
                ACTIONS_ID_TOKEN_REQUEST_URL=endpoint.url,
                ACTIONS_ID_TOKEN_REQUEST_TOKEN=endpoint.request_token,
            ),
        )
        seen = list(endpoint.requests)
    assert seen, "the runner's token endpoint was never asked"
    assert {r["audience"] for r in seen} == {"signer"}
    assert {r["authorization"] for r in seen} == {f"Bearer {endpoint.request_token}"}
    request = oidc.request(made.stdout.strip())
    assert request.requester == IDENTITY
    assert_pipeline_caller(request.caller)


def test_missing_token_exits_2_naming_the_variable(oidc: OidcRunning, tmp_path: Path) -> None:
    """An OIDC profile and no token: `signer sign` exits 2 naming SIGNER_OIDC_TOKEN."""
    o = oidc.oidc
    artifact = tmp_path / "app.bin"
    artifact.write_bytes(b"x")
    p = o.signer(
        "sign",
        "--profile",
        str(o.pipeline_profile),
        "--key-name",
        "release",
        "--file",
        str(artifact),
        "--no-wait",
        env=o.cli_env(),
        check=False,
    )
    assert p.returncode == 2, p.stderr
    assert "SIGNER_OIDC_TOKEN" in p.stderr
    assert p.stdout == ""


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
