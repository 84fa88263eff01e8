"""An OIDC-enabled environment: a `signer init` directory plus a CI issuer and its pipeline.

On top of `make_env`: a second port (`oidc_listen`, server-authenticated TLS
only) for requesters that come with an ID token; the issuer `ci-idp` (a
throwaway `tests.idp.IdP`, its JWKS written into the environment) with a
5 s leeway and the actor `octocat` mapped to the officer `alice`; a claim
rule admitting tag builds of org/app in the `release` environment to the
`release` key; and `profiles/pipeline.toml`, an OIDC profile with no secret
at all. Every token minted through `OidcEnv.mint` is remembered, so a test
can check that none of them ever reached a log or the audit log.

The fixtures are re-exported by tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from signer.v1 import approval_pb2, signing_pb2, signing_pb2_grpc, types_pb2
from testbed.clients import RPC_TIMEOUT, sha256_digest
from testbed.commands import SIGNER, free_port
from testbed.env import Db, Env, make_env
from testbed.pg import PgServer
from testbed.process import Running, running
from tests.idp import IdP

__all__ = [
    "IDENTITY",
    "ISSUER",
    "ISSUER_NAME",
    "SUBJECT",
    "OidcEnv",
    "OidcRunning",
    "assert_pipeline_caller",
    "bearer",
    "make_oidc_env",
    "oidc",
    "oidc_env",
]

ISSUER = "https://token.actions.githubusercontent.com"
ISSUER_NAME = "ci-idp"
SUBJECT = "repo:org/app:environment:release"  # the IdP's default sub
IDENTITY = f"oidc:{ISSUER_NAME}:{SUBJECT}"
TOKEN_VARIABLES = (
    "SIGNER_OIDC_TOKEN",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
)


@dataclass
class OidcEnv:
    env: Env
    idp: IdP
    oidc_port: int
    minted: list[str] = field(default_factory=list)

    @property
    def oidc_address(self) -> str:
        return f"127.0.0.1:{self.oidc_port}"

    @property
    def pipeline_profile(self) -> Path:
        return self.env.profile_path("pipeline")

    def mint(self, **claims: Any) -> str:
        """A valid token from the CI issuer (claim overrides as `IdP.claims`); remembered."""
        return self.remember(self.idp.mint(self.idp.claims(**claims)))

    def remember(self, token: str) -> str:
        self.minted.append(token)
        return token

    def channel(self) -> grpc.Channel:
        """Server-authenticated TLS to the OIDC port; no client certificate."""
        ca = (self.env.root / "tls" / "ca.pem").read_bytes()
        return grpc.secure_channel(
            self.oidc_address, grpc.ssl_channel_credentials(root_certificates=ca)
        )

    def create(
        self, token: str, *, key: str = "release", data: bytes | None = None
    ) -> types_pb2.SigningRequest:
        """CreateSigningRequest on the OIDC port with `token` as the bearer."""
        request = signing_pb2.CreateSigningRequestRequest(
            key_name=key, digests=[sha256_digest(data if data is not None else os.urandom(16))]
        )
        with self.channel() as ch:
            resp = signing_pb2_grpc.SigningServiceStub(ch).CreateSigningRequest(
                request, timeout=RPC_TIMEOUT, metadata=bearer(token)
            )
        return resp.request

    def cli_env(self, **variables: str) -> dict[str, str]:
        """The environment for a `signer` subprocess: the test's, minus any CI token source."""
        base = {k: v for k, v in os.environ.items() if k not in TOKEN_VARIABLES}
        return {**base, **variables}

    def signer(
        self, *args: str, env: Mapping[str, str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `signer ARGS` with exactly `env` (see `cli_env`)."""
        p = subprocess.run(
            [*SIGNER, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env),
            check=False,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"signer {' '.join(args)} exited {p.returncode}\n"
                f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
            )
        return p


@dataclass
class OidcRunning:
    oidc: OidcEnv
    running: Running

    def request(self, request_id: str, officer: str = "bob") -> types_pb2.SigningRequest:
        """The request as an officer sees it (a token requester's is not `ci`'s to read)."""
        return (
            self.running.clients.approval(officer)
            .GetRequest(approval_pb2.GetRequestRequest(id=request_id), timeout=RPC_TIMEOUT)
            .request
        )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def assert_pipeline_caller(caller: types_pb2.TokenCaller, **claims: str) -> None:
    """The caller is the pipeline of a default token from the CI issuer (claims as changed)."""
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


def make_oidc_env(root: Path, db: Db | None = None) -> OidcEnv:
    env = make_env(root, db)
    idp = IdP(ISSUER)
    idp.write_jwks(env.root / "ci-idp.jwks.json")
    oidc_port = free_port()
    while oidc_port == env.port:
        oidc_port = free_port()
    cfg = env.read_config()
    cfg["server"]["oidc_listen"] = f"127.0.0.1:{oidc_port}"
    cfg["oidc"] = {
        ISSUER_NAME: {
            "issuer": ISSUER,
            "audience": "signer",
            "jwks_file": "ci-idp.jwks.json",
            "leeway": "5s",
            "officers": {"octocat": "alice"},
        }
    }
    cfg["keys"]["release"]["oidc"] = [
        {
            "issuer": ISSUER_NAME,
            "repository": "org/app",
            "ref": "refs/tags/v*",
            "environment": "release",
        }
    ]
    env.write_config(cfg)
    verifier = env.profile("ci").audit_verifier
    env.profile_path("pipeline").write_text(
        "# a CI job with no secret: its CI system's OIDC ID token says who it is\n"
        f'server = "127.0.0.1:{oidc_port}"\n'
        'ca = "../tls/ca.pem"\n'
        'oidc_audience = "signer"\n'
        f'audit_verifier = "{verifier}"\n'
    )
    return OidcEnv(env, idp, oidc_port)


@pytest.fixture(scope="session")
def oidc_env(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> OidcEnv:
    db = None
    if backend == "postgresql":
        pg: PgServer = request.getfixturevalue("pg")
        db = Db(pg.database(), pg.password_file)
    return make_oidc_env(tmp_path_factory.mktemp(f"oidc-{backend}") / "env", db)


@pytest.fixture(scope="session")
def oidc(oidc_env: OidcEnv) -> Iterator[OidcRunning]:
    """The OIDC-enabled server, running for the session (started on first use)."""
    for r in running(oidc_env.env):
        yield OidcRunning(oidc_env, r)
