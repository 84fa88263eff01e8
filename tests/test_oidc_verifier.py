"""OidcVerifier, in process: a valid token gives its identity; a bad one is refused for its reason.

Tokens come from the throwaway IdP in tests/idp.py; the verifier reads the
issuer's keys from a JWKS file (tests/oidc_issuer.py). Expired or early tokens,
another audience or issuer, missing or unsafe claims, a wrong algorithm, key
or signature, and text that is not a token each get their reason. No server, no
network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from signer.model import TokenCaller
from signer.server.oidc import MAX_TOKEN_BYTES, OidcVerifier
from testbed.commands import wait_until
from tests.idp import IdP, SigningKey, b64url
from tests.oidc_env import ISSUER
from tests.oidc_issuer import NAME, SUB, rejected, verifier_for
from tests.oidc_issuer import idp as idp  # a fixture
from tests.oidc_issuer import jwks_file as jwks_file  # a fixture


@pytest.fixture(scope="module")
def verifier(jwks_file: Path) -> OidcVerifier:
    v = verifier_for(jwks_file)
    v.load()
    return v


# -- accepted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kid", "alg"), [("k1", "RS256"), ("k2", "ES256")])
def test_valid_token_is_accepted_with_identity_claims_and_barred_officer(
    verifier: OidcVerifier, idp: IdP, kid: str, alg: str
) -> None:
    """A valid RS256 or ES256 token gives its identity, recorded claims and actor; the
    actor and the officer it is mapped to are barred from approving."""
    key = idp.key(kid)
    assert key.alg == alg
    caller = verifier.verify(idp.mint(key=key))
    assert isinstance(caller, TokenCaller)
    assert caller.issuer == NAME
    assert caller.identity == f"oidc:{NAME}:{SUB}"
    assert caller.claims == {
        "sub": SUB,
        "repository": "org/app",
        "ref": "refs/tags/v1.0.0",
        "workflow": "release",
        "environment": "release",
        "actor": "octocat",
    }
    assert caller.actor == "octocat"
    # The actor itself and the officer it is mapped to may not approve.
    assert caller.barred == ("alice", "octocat")


def test_claims_not_configured_are_not_recorded(verifier: OidcVerifier, idp: IdP) -> None:
    """Claims not configured are not recorded; a recorded number becomes text."""
    caller = verifier.verify(idp.mint(idp.claims(secret_stuff="x", run_id=1234, debug=True)))
    assert "secret_stuff" not in caller.claims and "debug" not in caller.claims
    assert caller.claims["run_id"] == "1234"  # a recorded numeric claim becomes text


def test_unmapped_actor_bars_only_itself(verifier: OidcVerifier, idp: IdP) -> None:
    """An actor mapped to no officer bars only itself; with no actor, none is barred."""
    assert verifier.verify(idp.mint(idp.claims(actor="hubot"))).barred == ("hubot",)
    assert verifier.verify(idp.mint(idp.claims(actor=None))).barred == ()


# -- refused: time -----------------------------------------------------------------------------


def test_expired_token_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token that expired two minutes ago, past the 30 s leeway, is TOKEN_EXPIRED."""
    now = int(time.time())
    token = idp.mint(idp.claims(iat=now - 600, nbf=now - 600, exp=now - 120))
    assert rejected(verifier, token) == "TOKEN_EXPIRED"


def test_token_with_nbf_in_the_future_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token whose nbf is ten minutes ahead is TOKEN_NOT_YET_VALID."""
    now = int(time.time())
    token = idp.mint(idp.claims(nbf=now + 600, exp=now + 900))
    assert rejected(verifier, token) == "TOKEN_NOT_YET_VALID"


def test_token_with_iat_in_the_future_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token issued ten minutes in the future (iat, no nbf) is TOKEN_NOT_YET_VALID."""
    now = int(time.time())
    token = idp.mint(idp.claims(iat=now + 600, nbf=None, exp=now + 900))
    assert rejected(verifier, token) == "TOKEN_NOT_YET_VALID"


def test_token_replayed_after_expiry_is_refused(jwks_file: Path, idp: IdP) -> None:
    """With no leeway, a token accepted before its exp is TOKEN_EXPIRED after it."""
    v = verifier_for(jwks_file, leeway=dt.timedelta(0))
    now = int(time.time())
    token = idp.mint(idp.claims(iat=now, nbf=now, exp=now + 3))
    assert v.verify(token).identity == f"oidc:{NAME}:{SUB}"
    wait_until(lambda: time.time() > now + 3, timeout=30, step=0.05)  # PyJWT: expired at exp
    assert rejected(v, token) == "TOKEN_EXPIRED"


# -- refused: audience, issuer, claims ---------------------------------------------------------


def test_wrong_audience_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token for another audience is TOKEN_AUDIENCE; one with no aud, TOKEN_CLAIMS."""
    assert rejected(verifier, idp.mint(idp.claims(aud="https://github.com/org"))) == (
        "TOKEN_AUDIENCE"
    )
    assert rejected(verifier, idp.mint(idp.claims(aud=None))) == "TOKEN_CLAIMS"


def test_unconfigured_issuer_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """An untrusted iss (another issuer on a published key, a trailing slash, none at
    all) is TOKEN_ISSUER."""
    # Signed with a published key, but the iss is not one this server trusts.
    other = IdP("https://gitlab.example.com", keys=idp.keys)
    assert rejected(verifier, other.mint()) == "TOKEN_ISSUER"
    assert rejected(verifier, idp.mint(idp.claims(iss=ISSUER + "/"))) == "TOKEN_ISSUER"
    assert rejected(verifier, idp.mint(idp.claims(iss=None))) == "TOKEN_ISSUER"


def test_missing_exp_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token without exp is TOKEN_CLAIMS."""
    assert rejected(verifier, idp.mint(idp.claims(exp=None))) == "TOKEN_CLAIMS"


def test_missing_sub_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token with no sub, or an empty one, is TOKEN_CLAIMS."""
    assert rejected(verifier, idp.mint(idp.claims(sub=None))) == "TOKEN_CLAIMS"
    assert rejected(verifier, idp.mint(idp.claims(sub=""))) == "TOKEN_CLAIMS"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("repository", "org/app\nforged: line"),
        ("ref", "refs/tags/v1\x1b[2J"),
        ("workflow", "release\u202egnp.exe"),
        ("sub", "repo:org/app\x00"),
        ("environment", "x" * 1025),
        ("actor", ["octocat"]),
        ("actor", "octo\u200bcat"),
        ("environment", "\ufeffproduction"),
        ("ref", "refs/tags/v1\u2028"),
        ("workflow", "release\x9b2J"),
    ],
    ids=[
        "newline",
        "escape",
        "bidi",
        "nul",
        "too-long",
        "not-a-string",
        "zero-width",
        "bom",
        "line-separator",
        "c1-csi",
    ],
)
def test_unsafe_recorded_claim_is_refused(
    verifier: OidcVerifier, idp: IdP, claim: str, value: Any
) -> None:
    """A recorded claim breaking the displayable-text rule, too long or not a string is refused."""
    assert rejected(verifier, idp.mint(idp.claims(**{claim: value}))) == "TOKEN_CLAIMS"


# -- refused: algorithm, key, signature --------------------------------------------------------


def test_alg_none_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """An unsigned alg=none token is TOKEN_ALGORITHM."""
    assert rejected(verifier, idp.mint_none()) == "TOKEN_ALGORITHM"


def test_hs256_keyed_with_the_rsa_public_key_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """An HS256 token keyed with the RSA public key is TOKEN_ALGORITHM."""
    token = idp.mint_hs256_with_public_key(key=idp.key("k1"))
    assert rejected(verifier, token) == "TOKEN_ALGORITHM"


def test_es256_header_naming_the_rsa_key_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """An ES256 token whose kid names the RSA key is TOKEN_ALGORITHM."""
    token = idp.mint(key=SigningKey.ec("k1"))  # ES256 token whose kid is the RSA key's
    assert rejected(verifier, token) == "TOKEN_ALGORITHM"


def test_algorithm_not_allowed_for_the_issuer_is_refused(jwks_file: Path, idp: IdP) -> None:
    """An issuer allowing only RS256 accepts it; an ES256 token is TOKEN_ALGORITHM."""
    v = verifier_for(jwks_file, algorithms=("RS256",))
    assert v.verify(idp.mint(key=idp.key("k1"))).actor == "octocat"
    assert rejected(v, idp.mint(key=idp.key("k2"))) == "TOKEN_ALGORITHM"


def test_unknown_kid_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A kid not in the JWKS, or no kid at all, is TOKEN_UNKNOWN_KEY."""
    assert rejected(verifier, idp.mint(key=SigningKey.rsa("k9"))) == "TOKEN_UNKNOWN_KEY"
    assert rejected(verifier, idp.mint(kid=None)) == "TOKEN_UNKNOWN_KEY"


def test_tampered_payload_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token whose payload was edited after signing is TOKEN_SIGNATURE."""
    token = IdP.tamper(idp.mint(), "repository", "evil/app")
    assert rejected(verifier, token) == "TOKEN_SIGNATURE"


def test_foreign_key_reusing_a_published_kid_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A foreign RSA or EC key signing under a published kid is TOKEN_SIGNATURE."""
    assert rejected(verifier, idp.mint(key=SigningKey.rsa("k1"))) == "TOKEN_SIGNATURE"
    assert rejected(verifier, idp.mint(key=SigningKey.ec("k2"))) == "TOKEN_SIGNATURE"


# -- refused: not a token ----------------------------------------------------------------------


def test_token_over_16_kib_is_refused(verifier: OidcVerifier, idp: IdP) -> None:
    """A token over 16 KiB is TOKEN_MALFORMED."""
    token = idp.mint(idp.claims(padding="p" * MAX_TOKEN_BYTES))
    assert len(token) > 16 * 1024
    assert rejected(verifier, token) == "TOKEN_MALFORMED"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "garbage",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.%%%.sig",
        "W10.e30.c2ln",
        "....",
        "\u00e9.\u00e9",
    ],
)
def test_garbage_is_refused(verifier: OidcVerifier, garbage: str) -> None:
    """Empty, unstructured or undecodable token text is TOKEN_MALFORMED."""
    assert rejected(verifier, garbage) == "TOKEN_MALFORMED"


@pytest.mark.parametrize(
    "header",
    [{"alg": "RS256", "kid": 7}, {"alg": "RS256", "kid": "k1", "crit": ["x"], "x": 1}],
    ids=["int-kid", "crit"],
)
def test_malformed_header_is_refused_as_malformed(
    verifier: OidcVerifier, idp: IdP, header: dict[str, Any]
) -> None:
    """A header with a non-string kid or a crit extension is TOKEN_MALFORMED."""
    _, payload, signature = idp.mint().split(".")
    token = f"{b64url(json.dumps(header).encode())}.{payload}.{signature}"
    assert rejected(verifier, token) == "TOKEN_MALFORMED"


def test_a_jwks_file_changed_under_the_server_is_not_read(tmp_path: Path) -> None:
    """The policy records the JWKS file by its SHA-256: a key set swapped into the file
    while the server runs (someone minting their own tokens) is refused at the refetch a
    new kid triggers, and only the keys loaded from the recorded file verify."""
    honest = IdP(ISSUER)
    path = honest.write_jwks(tmp_path / "jwks.json")
    pinned = hashlib.sha256(path.read_bytes()).hexdigest()
    v = verifier_for(path, jwks_file_sha256=pinned, jwks_refresh=dt.timedelta(0))
    v.load()
    assert v.verify(honest.mint()).identity
    forger = IdP(ISSUER, [SigningKey.ec("evil")])
    forger.write_jwks(path)
    assert rejected(v, forger.mint(key=forger.key("evil"))) == "TOKEN_UNKNOWN_KEY"
    assert v.verify(honest.mint()).identity
