"""The policy a core enforces: one snapshot of one version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from signer.approval.keys import ApprovalKey
from signer.core.policy import KeyPolicy
from signer.model import KeySpec

__all__ = ["Enforced"]


@dataclass(frozen=True)
class Enforced:
    """The policy a core enforces, swapped whole when a new version is in force (a call
    reads it once, never half of one version and half of the next)."""

    keys: Mapping[str, KeySpec]
    policies: Mapping[str, KeyPolicy]
    approver_keys: Mapping[str, ApprovalKey]
    officers: tuple[str, ...] = ()
    sha256: str = ""  # the version in force ("": none)
    number: int = 0
