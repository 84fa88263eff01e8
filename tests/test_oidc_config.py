"""The OIDC settings of the server config: issuers and claim rules load, mistakes are refused.

A claim rule needs a condition, no pattern may match anything, rules name
configured issuers, issuers need server.oidc_listen and an https:// JWKS URL,
and `oidc:` identities are reserved (tests/oidc_issuer.py).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from signer.server.config import load_config
from tests.config_files import write_config
from tests.oidc_env import ISSUER
from tests.oidc_issuer import config_refused, oidc_config
from tests.oidc_issuer import config_root as config_root  # fixtures
from tests.oidc_issuer import idp as idp
from tests.oidc_issuer import jwks_file as jwks_file


def rule(cfg: dict[str, Any]) -> dict[str, Any]:
    rules: list[dict[str, Any]] = cfg["keys"]["release"]["oidc"]
    return rules[0]


def test_valid_oidc_config_loads(config_root: Path) -> None:
    """An OIDC issuer and claim rule load as written; the rule admits only its issuer's
    tag builds."""
    cfg = load_config(write_config(config_root, oidc_config()))
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
    message = config_refused(config_root, cfg)
    assert "keys.release.oidc[0].issuer" in message
    assert "at least one claim condition" in message


@pytest.mark.parametrize("pattern", ["*", "**", ["refs/tags/v*", "*"]])
def test_match_anything_pattern_is_refused(config_root: Path, pattern: Any) -> None:
    """A claim pattern matching anything (`*`, `**`, or in a list) is a ConfigError."""
    cfg = oidc_config()
    rule(cfg)["ref"] = pattern
    message = config_refused(config_root, cfg)
    assert "keys.release.oidc[0].ref" in message and "matches anything" in message


def test_rule_naming_an_unknown_issuer_is_refused(config_root: Path) -> None:
    """A claim rule naming an issuer not configured is a ConfigError naming it."""
    cfg = oidc_config()
    rule(cfg)["issuer"] = "gitlab"
    message = config_refused(config_root, cfg)
    assert "keys.release.oidc[0].issuer" in message and "'gitlab'" in message


def test_oidc_issuers_without_oidc_listen_are_refused(config_root: Path) -> None:
    """OIDC issuers without server.oidc_listen are a ConfigError: it is missing."""
    cfg = oidc_config()
    del cfg["server"]["oidc_listen"]
    assert "server.oidc_listen: missing" in config_refused(config_root, cfg)


def test_http_jwks_url_is_refused(config_root: Path) -> None:
    """A jwks_url over plain http:// is a ConfigError asking for https://."""
    cfg = oidc_config()
    issuer = cfg["oidc"]["ci-idp"]
    del issuer["jwks_file"]
    issuer["jwks_url"] = "http://127.0.0.1:8080/jwks"
    message = config_refused(config_root, cfg)
    assert "oidc.ci-idp.jwks_url" in message and "https://" in message


def test_identity_starting_with_oidc_is_refused(config_root: Path) -> None:
    """An identity starting `oidc:` in the config is a ConfigError: it is reserved."""
    cfg = oidc_config()
    cfg["identities"]["oidc:ci-idp:repo:org/app:environment:release"] = ["requester", "approver"]
    message = config_refused(config_root, cfg)
    assert "identities.oidc:ci-idp" in message and "reserved" in message
