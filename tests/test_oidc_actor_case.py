"""A pipeline's actor is barred however its issuer spells the login (GitHub ignores case).

In process: tokens from the test IdP, verified by OidcVerifier with the
issuer's `actor_case` (default insensitive), show which officers are barred.
End to end: the OIDC environment maps the actor `octocat` to `alice`; a
pipeline started by `OctoCat` (the same GitHub account) is created on the real
server, alice's approval is refused and an officer named like the actor is
barred too.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from signer.server.config import load_config
from signer.server.oidc import OidcVerifier
from testbed.commands import wait_until
from tests.config_files import write_config
from tests.harness import rpc_error
from tests.idp import IdP
from tests.oidc_env import OidcRunning
from tests.oidc_issuer import NAME, config_refused, issuer_config, oidc_config
from tests.oidc_issuer import config_root as config_root  # fixtures
from tests.oidc_issuer import idp as idp
from tests.oidc_issuer import jwks_file as jwks_file

OFFICERS = ("alice", "bob", "carol")


def _verifier(jwks_file: Path, **overrides: str) -> OidcVerifier:
    v = OidcVerifier({NAME: issuer_config(jwks_file, **overrides)}, officers=OFFICERS)
    v.load()
    return v


@pytest.mark.parametrize("actor", ["octocat", "OctoCat", "OCTOCAT"])
def test_mapped_officer_is_barred_whatever_the_case(jwks_file: Path, idp: IdP, actor: str) -> None:
    """`octocat = "alice"` bars alice from pipelines of OctoCat and OCTOCAT too (default)."""
    caller = _verifier(jwks_file).verify(idp.mint(idp.claims(actor=actor)))
    assert caller.barred == tuple(sorted(("alice", actor)))


def test_officer_named_like_the_actor_is_barred_whatever_the_case(
    jwks_file: Path, idp: IdP
) -> None:
    """A pipeline started by `BOB` bars the officer `bob`, though no mapping names him."""
    caller = _verifier(jwks_file).verify(idp.mint(idp.claims(actor="BOB")))
    assert caller.barred == ("BOB", "bob")


def test_case_sensitive_issuer_compares_exactly(jwks_file: Path, idp: IdP) -> None:
    """With actor_case = "sensitive", only the exact login maps or names an officer."""
    v = _verifier(jwks_file, actor_case="sensitive")
    assert v.verify(idp.mint(idp.claims(actor="OctoCat"))).barred == ("OctoCat",)
    assert v.verify(idp.mint(idp.claims(actor="BOB"))).barred == ("BOB",)
    assert v.verify(idp.mint(idp.claims(actor="octocat"))).barred == ("alice", "octocat")


def test_actor_case_config_defaults_to_insensitive_and_is_recorded(config_root: Path) -> None:
    """actor_case is insensitive unless set; sensitive loads; another value names the key;
    the setting is part of the policy recorded in the audit log."""
    cfg = oidc_config()
    assert load_config(write_config(config_root, cfg)).issuers["ci-idp"].actor_case == "insensitive"
    cfg["oidc"]["ci-idp"]["actor_case"] = "sensitive"
    loaded = load_config(write_config(config_root, cfg))
    assert loaded.policy_document["oidc"]["ci-idp"]["actor_case"] == "sensitive"
    cfg["oidc"]["ci-idp"]["actor_case"] = "lower"
    message = config_refused(config_root, cfg)
    assert "oidc.ci-idp.actor_case: 'lower': must be insensitive" in message


def test_pipeline_of_the_actor_in_other_case_cannot_be_approved_by_its_officer(
    oidc: OidcRunning,
) -> None:
    """On the real server, OctoCat's pipeline bars alice (mapped from octocat): her approval
    is PERMISSION_DENIED and two other officers sign it."""
    o, clients = oidc.oidc, oidc.running.clients
    created = o.create(o.mint(actor="OctoCat"))
    request = oidc.request(created.id)
    assert "alice" in request.caller.barred_approvers
    err = rpc_error(lambda: clients.approve("alice", request))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert err.reason == "REQUESTER_CANNOT_APPROVE"
    clients.approve("bob", request)
    clients.approve("carol", request)
    wait_until(lambda: [a.approver for a in oidc.request(created.id).approvals] == ["bob", "carol"])


def test_pipeline_of_an_officers_login_in_other_case_bars_that_officer(
    oidc: OidcRunning,
) -> None:
    """A pipeline started by `Bob` bars the officer bob on the real server."""
    o, clients = oidc.oidc, oidc.running.clients
    request = oidc.request(o.create(o.mint(actor="Bob")).id)
    assert list(request.caller.barred_approvers) == ["Bob", "bob"]
    err = rpc_error(lambda: clients.approve("bob", request))
    assert err.reason == "REQUESTER_CANNOT_APPROVE"
