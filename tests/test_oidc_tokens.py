"""Bad ID tokens over real gRPC: UNAUTHENTICATED with the verifier's reason.

Expired, early, for another audience or issuer, an unknown key, a wrong
algorithm, tampered, with bad claims or not a token at all; an authorization
header that is not one bearer token; no token on the OIDC port (tests/oidc_env.py).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from signer.v1 import (
    signing_pb2,
    signing_pb2_grpc,
)
from testbed.clients import RPC_TIMEOUT, sha256_digest
from tests.harness import rpc_error
from tests.idp import IdP, SigningKey
from tests.oidc_env import OidcRunning, bearer


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
