"""OidcVerifier reading the issuer's keys live over HTTPS: refresh, rate limit, failure.

A fresh IdP (tests/idp.py) served by a JwksServer on 127.0.0.1 with a throwaway
CA: a new kid after rotation refetches once, unknown kids within jwks_refresh
refetch nothing, a failing or untrusted endpoint keeps or gives no keys.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signer.server.oidc import OidcVerifier
from tests.idp import IdP, SigningKey
from tests.idp_servers import JwksServer, make_tls
from tests.oidc_env import ISSUER
from tests.oidc_issuer import NAME, SUB, issuer_config, rejected


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[IdP, JwksServer, Path]]:
    """A fresh IdP served live over HTTPS, with the CA to trust it."""
    ca, cert, key = make_tls(tmp_path)
    idp = IdP(ISSUER)
    with JwksServer(idp, cert, key) as server:
        yield idp, server, ca


def live_verifier(server: JwksServer, ca: Path, **overrides: Any) -> OidcVerifier:
    v = OidcVerifier(
        {NAME: issuer_config(None, jwks_url=server.url, jwks_ca=ca, **overrides)},
    )
    v.load()
    return v


def test_jwks_is_refetched_for_an_unknown_kid_after_rotation(
    live: tuple[IdP, JwksServer, Path],
) -> None:
    """A known kid is served from the cache; a new kid after rotation refetches once."""
    idp, server, ca = live
    v = live_verifier(server, ca, jwks_refresh=dt.timedelta(0))
    assert server.hits == 1
    assert v.verify(idp.mint()).identity == f"oidc:{NAME}:{SUB}"
    assert server.hits == 1  # a known kid is served from the cache
    idp.rotate(SigningKey.ec("k3"))
    assert v.verify(idp.mint()).identity == f"oidc:{NAME}:{SUB}"
    assert server.hits == 2


def test_jwks_refetch_is_rate_limited(live: tuple[IdP, JwksServer, Path]) -> None:
    """Within jwks_refresh, unknown kids refetch nothing and are TOKEN_UNKNOWN_KEY."""
    idp, server, ca = live
    v = live_verifier(server, ca, jwks_refresh=dt.timedelta(hours=1))
    assert server.hits == 1
    idp.rotate(SigningKey.ec("k3"))
    token = idp.mint()
    for _ in range(3):
        assert rejected(v, token) == "TOKEN_UNKNOWN_KEY"
    assert server.hits == 1  # no refetch within jwks_refresh, however many unknown kids


def test_failing_jwks_endpoint_keeps_the_old_keys(live: tuple[IdP, JwksServer, Path]) -> None:
    """While every JWKS refetch fails (503), the keys already held still verify."""
    idp, server, ca = live
    # max_age 0: every verification tries to refetch, and every refetch fails.
    v = live_verifier(server, ca, jwks_refresh=dt.timedelta(0), jwks_max_age=dt.timedelta(0))
    assert server.hits == 1
    server.fail_status = 503
    for _ in range(2):
        assert v.verify(idp.mint()).identity == f"oidc:{NAME}:{SUB}"
    assert server.hits == 3  # it did try, and kept what it had
    assert rejected(v, idp.mint(key=SigningKey.rsa("k9"))) == "TOKEN_UNKNOWN_KEY"


def test_jwks_unreachable_at_start_is_fetched_on_first_token(
    live: tuple[IdP, JwksServer, Path],
) -> None:
    """A JWKS endpoint down at load is no error: tokens are TOKEN_UNKNOWN_KEY until it
    answers, then the next token fetches the keys and verifies."""
    idp, server, ca = live
    server.fail_status = 503
    v = live_verifier(server, ca, jwks_refresh=dt.timedelta(0))  # load() logs, does not raise
    assert rejected(v, idp.mint()) == "TOKEN_UNKNOWN_KEY"
    server.fail_status = None
    assert v.verify(idp.mint()).identity == f"oidc:{NAME}:{SUB}"


def test_jwks_server_with_an_untrusted_certificate_gives_no_keys(
    live: tuple[IdP, JwksServer, Path], tmp_path: Path
) -> None:
    """A JWKS server with a certificate from another CA is never read: no keys."""
    idp, server, _ = live
    (tmp_path / "other").mkdir()
    other_ca, _, _ = make_tls(tmp_path / "other")  # not the CA that issued the server's cert
    v = live_verifier(server, other_ca, jwks_refresh=dt.timedelta(0))
    assert rejected(v, idp.mint()) == "TOKEN_UNKNOWN_KEY"
    assert server.hits == 0
