"""Where `signer` finds its ID token: a token file, the environment, a GitHub Actions runner.

`--oidc-token-file` wins over SIGNER_OIDC_TOKEN; on a runner the CLI fetches a
token for the profile's audience; with no token an OIDC profile exits 2 naming
the variable (tests/oidc_env.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.harness import sign_args
from tests.idp_servers import GitHubTokenEndpoint
from tests.oidc_env import (
    IDENTITY,
    ISSUER_NAME,
    OidcRunning,
    assert_pipeline_caller,
)


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
        *sign_args(o.pipeline_profile, artifact, "--no-wait", "--oidc-token-file", str(token_file)),
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
            *sign_args(o.pipeline_profile, artifact, "--no-wait"),
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
        *sign_args(o.pipeline_profile, artifact, "--no-wait"),
        env=o.cli_env(),
        check=False,
    )
    assert p.returncode == 2, p.stderr
    assert "SIGNER_OIDC_TOKEN" in p.stderr
    assert p.stdout == ""
