"""The throwaway OIDC identity provider (tests/idp.py) behaves like a real one."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.idp import IdP, SigningKey, b64url_decode
from tests.idp_servers import GitHubTokenEndpoint, JwksServer, make_tls

ISSUER = "https://token.actions.githubusercontent.com"


@pytest.fixture(scope="module")
def idp() -> IdP:
    return IdP(ISSUER)


def verify(token: str, jwks: dict[str, Any], audience: str = "signer") -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["RS256", "ES256"], audience=audience, issuer=ISSUER
    )
    return claims


def header_of(token: str) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(b64url_decode(token.split(".")[0]))
    return header


def fetch_json(url: str, ctx: ssl.SSLContext | None = None, **headers: str) -> Any:
    req = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) to localhost only
    with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
        return json.load(resp)


@pytest.mark.parametrize(("kid", "alg"), [("k1", "RS256"), ("k2", "ES256")])
def test_minted_tokens_verify_against_jwks(idp: IdP, kid: str, alg: str) -> None:
    """A token minted with k1 (RS256) or k2 (ES256) verifies against the JWKS."""
    key = idp.key(kid)
    assert key.alg == alg
    token = idp.mint(key=key)
    assert header_of(token) == {"alg": alg, "typ": "JWT", "kid": kid}
    claims = verify(token, idp.jwks())
    assert claims["repository"] == "org/app"
    assert claims["sub"] == "repo:org/app:environment:release"
    assert claims["exp"] - claims["iat"] == 300


def test_jwks_shape(idp: IdP) -> None:
    """The JWKS holds a 2048-bit RSA key and a P-256 key, in unpadded base64url."""
    rsa_jwk, ec_jwk = idp.jwks()["keys"]
    assert {k: rsa_jwk[k] for k in ("kty", "kid", "alg", "use", "e")} == {
        "kty": "RSA",
        "kid": "k1",
        "alg": "RS256",
        "use": "sig",
        "e": "AQAB",
    }
    assert len(b64url_decode(rsa_jwk["n"])) == 256
    assert (ec_jwk["kty"], ec_jwk["crv"], ec_jwk["alg"]) == ("EC", "P-256", "ES256")
    assert len(b64url_decode(ec_jwk["x"])) == len(b64url_decode(ec_jwk["y"])) == 32
    for jwk in (rsa_jwk, ec_jwk):
        assert not any("=" in str(v) for v in jwk.values())


def test_claim_overrides_and_kid(idp: IdP) -> None:
    """A claim overridden with None is dropped; the kid can be left out or replaced."""
    claims = idp.claims(aud="other", environment=None)
    assert claims["aud"] == "other" and "environment" not in claims
    assert "kid" not in header_of(idp.mint(claims, kid=None))
    assert header_of(idp.mint(claims, kid="nope", headers={"x": 1}))["kid"] == "nope"


def test_forged_tokens(idp: IdP) -> None:
    """alg=none, HS256 keyed with the public key and tampered tokens come out as asked,
    and PyJWT refuses each."""
    jwks = idp.jwks()

    unsigned = idp.mint_none(idp.claims())
    assert unsigned.endswith(".")
    assert header_of(unsigned) == {"alg": "none", "typ": "JWT", "kid": "k1"}
    with pytest.raises(jwt.InvalidTokenError):
        verify(unsigned, jwks)

    confused = idp.mint_hs256_with_public_key(idp.claims(), idp.key("k1"))
    assert header_of(confused) == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    assert confused.split(".")[2]
    with pytest.raises(jwt.InvalidTokenError):
        verify(confused, jwks)

    good = idp.mint()
    bad = idp.tamper(good)
    assert bad.split(".")[0] == good.split(".")[0]
    assert bad.split(".")[2] == good.split(".")[2]
    assert json.loads(b64url_decode(bad.split(".")[1]))["repository"] == "evil/app"
    with pytest.raises(jwt.InvalidSignatureError):
        verify(bad, jwks)


def test_write_jwks(idp: IdP, tmp_path: Path) -> None:
    """write_jwks writes the published JWKS as JSON."""
    path = idp.write_jwks(tmp_path / "jwks.json")
    assert json.loads(path.read_text()) == idp.jwks()


def test_jwks_server_over_https_with_rotation(tmp_path: Path) -> None:
    """The JWKS server serves the current keys over HTTPS, also rotated, counts hits,
    404s other paths, survives a client that does not trust it, and closes cleanly."""
    ca, cert, key = make_tls(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    ctx = ssl.create_default_context(cafile=str(ca))
    idp = IdP(ISSUER, [SigningKey.ec("old")])
    with JwksServer(idp, cert, key) as server:
        assert server.url == f"https://127.0.0.1:{server.port}/.well-known/jwks"
        assert [k["kid"] for k in fetch_json(server.url, ctx)["keys"]] == ["old"]
        assert server.hits == 1

        idp.rotate(SigningKey.ec("new"))
        jwks = fetch_json(server.url_for("localhost"), ctx)
        assert [k["kid"] for k in jwks["keys"]] == ["new"]
        verify(idp.mint(), jwks)
        idp.rotate(SigningKey.ec("newer"), keep_old=True)
        assert [k["kid"] for k in fetch_json(server.url, ctx)["keys"]] == ["newer", "new"]
        assert server.hits == 3

        with pytest.raises(urllib.error.HTTPError) as err:
            fetch_json(f"https://127.0.0.1:{server.port}/elsewhere", ctx)
        assert err.value.code == 404
        assert server.hits == 3

        # A client that does not trust the CA is refused, and the server survives.
        with pytest.raises(urllib.error.URLError):
            fetch_json(server.url, ssl.create_default_context())
        assert fetch_json(server.url, ctx)["keys"]
        thread = server.thread
        assert thread is not None and thread.is_alive()
    # Closed on exit: its thread has ended and its socket is released.
    assert not thread.is_alive()
    assert server.thread is None and server.closed


def test_github_token_endpoint(idp: IdP) -> None:
    """The runner token endpoint is 401 without the request token, else mints for the
    audience asked; it records every request."""
    with GitHubTokenEndpoint(idp) as endpoint:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/token?api-version=2.0"
        url = endpoint.url + "&audience=signer-prod"

        with pytest.raises(urllib.error.HTTPError) as err:
            fetch_json(url, Authorization="Bearer wrong")
        assert err.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as err:
            fetch_json(url)
        assert err.value.code == 401

        body = fetch_json(url, Authorization="bearer runner-secret")
        assert body["count"] == 1
        claims = verify(body["value"], idp.jwks(), audience="signer-prod")
        assert claims["aud"] == "signer-prod"

    assert endpoint.requests == [
        {"audience": "signer-prod", "authorization": "Bearer wrong"},
        {"audience": "signer-prod", "authorization": None},
        {"audience": "signer-prod", "authorization": "bearer runner-secret"},
    ]
