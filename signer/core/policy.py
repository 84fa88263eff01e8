"""The signing policy: who may request a signature with each key, and who must approve.

Loaded from the server's config file (`signer.server.config` builds it and hashes it
into the audit log at start-up); the core decides with it alone.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from signer.algorithms import KeyAlgorithm

__all__ = ["ClaimRule", "KeyPolicy"]


@dataclass(frozen=True)
class ClaimRule:
    """Admits an OIDC requester to a key when every condition holds (globs, case-sensitive)."""

    issuer: str
    conditions: tuple[tuple[str, tuple[str, ...]], ...]  # claim -> any of these patterns

    def matches(self, issuer: str, claims: Mapping[str, str]) -> bool:
        if issuer != self.issuer:
            return False
        for claim, patterns in self.conditions:
            value = claims.get(claim)
            if value is None or not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                return False
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"issuer": self.issuer, **{c: list(p) for c, p in self.conditions}}


@dataclass(frozen=True)
class KeyPolicy:
    """Who may request and who must approve signatures with one key."""

    name: str
    algorithm: KeyAlgorithm | None
    approvers: tuple[str, ...]
    threshold: int
    requesters: tuple[str, ...]
    max_ttl: dt.timedelta
    oidc: tuple[ClaimRule, ...] = ()

    def admits(self, issuer: str, claims: Mapping[str, str]) -> bool:
        """Whether an OIDC requester with these verified claims may use this key."""
        return any(rule.matches(issuer, claims) for rule in self.oidc)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "algorithm": self.algorithm.name if self.algorithm else None,
            "approvers": sorted(self.approvers),
            "threshold": self.threshold,
            "requesters": sorted(self.requesters),
            "max_ttl_seconds": int(self.max_ttl.total_seconds()),
            "oidc": [r.as_dict() for r in self.oidc],
        }
