"""One OIDC issuer for in-process tests: its IdP and JWKS file, verifiers, a config naming it.

`idp` (k1 RS256 and k2 ES256, published; never rotated) and `jwks_file` are
module fixtures; `issuer_config` and `verifier_for` build an `IssuerConfig` and
an `OidcVerifier` over that JWKS file with settings changed; `rejected` returns
the reason a token is refused for. `oidc_config()` is a server config with that
issuer and a claim rule for the `release` key, which loads in `config_root`;
`config_refused` returns the message of the ConfigError a config gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from signer.errors import ConfigError, UnauthenticatedError
from signer.server.config import load_config
from signer.server.oidc import OidcVerifier
from signer.server.policy_config import IssuerConfig
from tests.config_files import base_config, make_root, write_config
from tests.idp import IdP
from tests.oidc_env import ISSUER

__all__ = [
    "NAME",
    "SUB",
    "config_refused",
    "config_root",
    "idp",
    "issuer_config",
    "jwks_file",
    "oidc_config",
    "rejected",
    "verifier_for",
]

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


def rejected(verifier: OidcVerifier, token: str) -> str:
    """Verify `token`, which must be refused; return the reason."""
    with pytest.raises(UnauthenticatedError) as info:
        verifier.verify(token)
    assert str(info.value).startswith("OIDC token rejected")
    return info.value.reason


@pytest.fixture
def config_root(tmp_path: Path, jwks_file: Path) -> Path:
    """A directory where `oidc_config()` loads: `config_files.make_root` and the JWKS file."""
    make_root(tmp_path)
    (tmp_path / "jwks.json").write_bytes(jwks_file.read_bytes())
    return tmp_path


def oidc_config() -> dict[str, Any]:
    cfg = base_config()
    cfg["server"]["oidc_listen"] = "127.0.0.1:7444"
    return {
        **cfg,
        "identities": {o: ["approver"] for o in ("alice", "bob", "carol")},
        "approvers": {o: f"approvers/{o}.key.pub" for o in ("alice", "bob", "carol")},
        "policy": {"officers": ["alice", "bob", "carol"], "threshold": 2},
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


def config_refused(root: Path, cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(root, cfg))
    message = str(info.value)
    assert message.startswith(str((root / "signer.toml").resolve()))
    return message
