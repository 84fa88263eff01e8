"""OidcVerifier and the OIDC config, in process: every bad token is refused for its reason.

Tokens come from the throwaway IdP in tests/idp.py; the verifier reads the
issuer's keys from a JWKS file, or live from a JwksServer over HTTPS (for
refresh, rate limiting and a failing endpoint). No server, no network beyond
127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from signer.approval import files as approval_keys
from signer.errors import ConfigError, UnauthenticatedError
from signer.model import TokenCaller
from signer.server.config import IssuerConfig, load_config
from signer.server.oidc import MAX_TOKEN_BYTES, OidcVerifier
from signer.tls import DevCA, write_private
from testbed.commands import wait_until
from tests.idp import IdP, SigningKey, b64url
from tests.idp_servers import JwksServer, make_tls

ISSUER = "https://token.actions.githubusercontent.com"
NAME = "gh"
SUB = "repo:org/app:environment:release"


@pytest.fixture(scope="module")
def idp() -> IdP:
    """k1 (RS256) and k2 (ES256), published; shared, never rotated."""
    return IdP(ISSUER)


@pytest.fixture(scope="module")
def jwks_file(idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return idp.write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json")


def issuer_config(jwks_file: Path | None = None, **overrides: Any) -> IssuerConfig:
    fields: dict[str, Any] = {
        "name": NAME,
        "issuer": ISSUER,
        "audience": "signer",
        "jwks_file": jwks_file,
        "jwks_url": None,
        "officers": {"octocat": "alice"},
        **overrides,
    }
    return IssuerConfig(**fields)


def verifier_for(jwks_file: Path, **overrides: Any) -> OidcVerifier:
    return OidcVerifier({NAME: issuer_config(jwks_file, **overrides)})


@pytest.fixture(scope="module")
def verifier(jwks_file: Path) -> OidcVerifier:
    v = verifier_for(jwks_file)
    v.load()
    return v


def rejected(verifier: OidcVerifier, token: str) -> str:
    """Verify `token`, which must be refused; return the reason."""
    with pytest.raises(UnauthenticatedError) as info:
        verifier.verify(token)
    assert str(info.value).startswith("OIDC token rejected")
    return info.value.reason


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


# -- the JWKS over HTTPS: refresh, rate limit, failure -----------------------------------------


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


# -- config ------------------------------------------------------------------------------------


@pytest.fixture
def config_root(tmp_path: Path, jwks_file: Path) -> Path:
    ca = DevCA("test CA")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_bytes(ca.pem)
    cert, key = ca.issue("signer server", server_hosts=["127.0.0.1"])
    (tmp_path / "tls" / "server.pem").write_bytes(cert)
    write_private(tmp_path / "tls" / "server.key", key)
    for o in ("alice", "bob", "carol"):
        approval_keys.generate(tmp_path / "approvers" / f"{o}.key")
    write_private(tmp_path / "secrets" / "token.pin", b"1234\n")
    (tmp_path / "jwks.json").write_bytes(jwks_file.read_bytes())
    return tmp_path


def oidc_config() -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:7443",
            "oidc_listen": "127.0.0.1:7444",
            "tls_cert": "tls/server.pem",
            "tls_key": "tls/server.key",
            "client_ca": "tls/ca.pem",
        },
        "token": {
            "module": "/usr/lib/softhsm/libsofthsm2.so",
            "label": "signer-test",
            "pin_file": "secrets/token.pin",
        },
        "store": {"url": "sqlite:///signer.db"},
        "audit": {"key": "audit"},
        "identities": {o: ["approver"] for o in ("alice", "bob", "carol")},
        "approvers": {o: f"approvers/{o}.key.pub" for o in ("alice", "bob", "carol")},
        "oidc": {
            "ci-idp": {
                "issuer": ISSUER,
                "audience": "signer",
                "jwks_file": "jwks.json",
                "leeway": "5s",
                "officers": {"octocat": "alice"},
            }
        },
        "keys": {
            "release": {
                "algorithm": "ecdsa-p256",
                "approvers": ["alice", "bob", "carol"],
                "threshold": 2,
                "requesters": [],
                "oidc": [
                    {
                        "issuer": "ci-idp",
                        "repository": "org/app",
                        "ref": ["refs/tags/v*"],
                        "environment": "release",
                    }
                ],
            }
        },
    }


def write(root: Path, cfg: dict[str, Any]) -> Path:
    path = root / "signer.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def refused(root: Path, cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(root, cfg))
    message = str(info.value)
    assert message.startswith(str((root / "signer.toml").resolve()))
    return message


def rule(cfg: dict[str, Any]) -> dict[str, Any]:
    rules: list[dict[str, Any]] = cfg["keys"]["release"]["oidc"]
    return rules[0]


def test_valid_oidc_config_loads(config_root: Path) -> None:
    """An OIDC issuer and claim rule load as written; the rule admits only its issuer's
    tag builds."""
    cfg = load_config(write(config_root, oidc_config()))
    assert cfg.server.oidc_listen == "127.0.0.1:7444"
    issuer = cfg.issuers["ci-idp"]
    assert (issuer.issuer, issuer.audience, issuer.jwks_file) == (
        ISSUER,
        "signer",
        (config_root / "jwks.json").resolve(),
    )
    assert issuer.leeway == dt.timedelta(seconds=5)
    assert dict(issuer.officers) == {"octocat": "alice"}
    policy = cfg.keys["release"]
    assert policy.requesters == ()
    assert policy.admits(
        "ci-idp", {"repository": "org/app", "ref": "refs/tags/v2.1", "environment": "release"}
    )
    assert not policy.admits(
        "ci-idp", {"repository": "org/app", "ref": "refs/heads/main", "environment": "release"}
    )
    assert not policy.admits("other", {"repository": "org/app", "ref": "refs/tags/v2.1"})
    assert "oidc" in cfg.policy_document


def test_rule_without_conditions_is_refused(config_root: Path) -> None:
    """A claim rule naming only an issuer, with no claim condition, is a ConfigError."""
    cfg = oidc_config()
    cfg["keys"]["release"]["oidc"] = [{"issuer": "ci-idp"}]
    message = refused(config_root, cfg)
    assert "keys.release.oidc[0].issuer" in message
    assert "at least one claim condition" in message


@pytest.mark.parametrize("pattern", ["*", "**", ["refs/tags/v*", "*"]])
def test_match_anything_pattern_is_refused(config_root: Path, pattern: Any) -> None:
    """A claim pattern matching anything (`*`, `**`, or in a list) is a ConfigError."""
    cfg = oidc_config()
    rule(cfg)["ref"] = pattern
    message = refused(config_root, cfg)
    assert "keys.release.oidc[0].ref" in message and "matches anything" in message


def test_rule_naming_an_unknown_issuer_is_refused(config_root: Path) -> None:
    """A claim rule naming an issuer not configured is a ConfigError naming it."""
    cfg = oidc_config()
    rule(cfg)["issuer"] = "gitlab"
    message = refused(config_root, cfg)
    assert "keys.release.oidc[0].issuer" in message and "'gitlab'" in message


def test_oidc_issuers_without_oidc_listen_are_refused(config_root: Path) -> None:
    """OIDC issuers without server.oidc_listen are a ConfigError: it is missing."""
    cfg = oidc_config()
    del cfg["server"]["oidc_listen"]
    assert "server.oidc_listen: missing" in refused(config_root, cfg)


def test_http_jwks_url_is_refused(config_root: Path) -> None:
    """A jwks_url over plain http:// is a ConfigError asking for https://."""
    cfg = oidc_config()
    issuer = cfg["oidc"]["ci-idp"]
    del issuer["jwks_file"]
    issuer["jwks_url"] = "http://127.0.0.1:8080/jwks"
    message = refused(config_root, cfg)
    assert "oidc.ci-idp.jwks_url" in message and "https://" in message


def test_identity_starting_with_oidc_is_refused(config_root: Path) -> None:
    """An identity starting `oidc:` in the config is a ConfigError: it is reserved."""
    cfg = oidc_config()
    cfg["identities"]["oidc:ci-idp:repo:org/app:environment:release"] = ["requester", "approver"]
    message = refused(config_root, cfg)
    assert "identities.oidc:ci-idp" in message and "reserved" in message
