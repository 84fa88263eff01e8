"""A running server takes the version the officers adopted, without a restart
(docs/architecture.md §11).

The adopted document is the authority, not `signer.toml`: `config_under` rebuilds the
server's config with the document's policy (keys, identities, approval keys, access,
revocations, policy officers) and the file's operational settings, and refuses unless
the rebuilt policy hashes to exactly the adopted version. What a running server
cannot take on its own stays for a restart with the new file in place: a new audit
key, a new client CA (the TLS listener's trust), a change to the OIDC issuers
themselves. Until then the server signs nothing and takes no request (`Watch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from signer.approval import registry
from signer.approval.keys import ApprovalKey
from signer.core.policy import KeyPolicy, Revocation
from signer.errors import ConfigError, PolicyChainError
from signer.policy_chain import Officers, Version
from signer.server.config import Config

__all__ = ["config_under"]

# Document sections a running server cannot take on its own.
_AT_RESTART = ("audit_key", "tls")


def _oidc_without_claims(document: Mapping[str, Any]) -> Any:
    """The OIDC issuers, but for the claims they record (which follow the key rules)."""
    oidc = document.get("oidc")
    if not isinstance(oidc, dict):
        return oidc
    return {
        n: {k: v for k, v in i.items() if k != "recorded_claims"} if isinstance(i, dict) else i
        for n, i in oidc.items()
    }


def config_under(config: Config, version: Version) -> Config:
    """`config` with `version`'s policy; ConfigError naming why not (then it takes
    effect only at a restart with its `signer.toml` in place)."""
    document = version.document
    current = config.policy_document
    what = f"policy version {version.number}"
    for section in _AT_RESTART:
        if document.get(section) != current.get(section):
            raise ConfigError(
                f"{what} changes {section}, which takes effect only at a restart: put its "
                f"signer.toml in place of {config.path} and restart"
            )
    if _oidc_without_claims(document) != _oidc_without_claims(current):
        raise ConfigError(
            f"{what} changes the OIDC issuers, which take effect only at a restart: put its "
            f"signer.toml in place of {config.path} and restart"
        )
    try:
        keys = {n: KeyPolicy.from_dict(d, f"keys.{n}") for n, d in _table(document, "keys").items()}
        identities = {
            i: frozenset(_names(r, f"identities.{i}"))
            for i, r in _table(document, "identities").items()
        }
        approver_keys: dict[str, ApprovalKey] = {}
        for name, value in _table(document, "approver_keys").items():
            if not isinstance(value, str):
                raise ValueError(f"approver_keys.{name} must be a string")
            approver_keys[name] = registry.key_from_policy(value)
        access = {
            m: frozenset(_names(r, f"access.{m}")) for m, r in _table(document, "access").items()
        }
        revoked = document.get("revoked", [])
        if not isinstance(revoked, list):
            raise ValueError("revoked must be a list")
        revocations = tuple(Revocation.from_dict(r, f"revoked[{i}]") for i, r in enumerate(revoked))
        officers = Officers.of(document)
        issuers = {
            n: dataclasses.replace(
                i,
                recorded_claims=tuple(
                    _names(document["oidc"][n]["recorded_claims"], f"oidc.{n}.recorded_claims")
                ),
            )
            for n, i in config.issuers.items()
        }
    except (ValueError, TypeError, KeyError, PolicyChainError) as e:
        raise ConfigError(f"{what} cannot be read as a policy: {e}") from None
    rebuilt = dataclasses.replace(
        config,
        identities=identities,
        approver_keys=approver_keys,
        keys=keys,
        access=access,
        issuers=issuers,
        policy_officers=officers.names,
        policy_threshold=officers.threshold,
        revoked=revocations,
    )
    if rebuilt.policy_hash != version.sha256:
        raise ConfigError(
            f"{what} cannot be taken on by this server exactly as adopted (its rebuilt "
            f"policy hashes to {rebuilt.policy_hash[:16]}...): put its signer.toml in place "
            f"of {config.path} and restart"
        )
    return rebuilt


def _table(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a table")
    return value


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of names")
    return value
