"""The policy hash: stable across loads and non-policy settings, changed by any policy change.

Who may request, approve or read, with which key, threshold and TTL, is the
policy the audit log records by its hash (tests/config_files.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signer.server.config import load_config
from tests.config_files import RELEASE, set_value, valid_config, write_config
from tests.config_files import root as root  # a fixture


def _hash(root: Path, change: Callable[[dict[str, Any]], None] | None = None) -> str:
    cfg = valid_config()
    if change is not None:
        change(cfg)
    return load_config(write_config(root, cfg, f"c{len(os.listdir(root))}.toml")).policy_hash


def test_policy_hash_is_stable(root: Path) -> None:
    """The same policy hashes the same, across loads and non-policy settings."""
    base = _hash(root)
    assert len(base) == 64 and base == _hash(root)
    for change in (
        set_value("server", "listen", value="0.0.0.0:9999"),
        set_value("log", "format", value="json"),
        set_value("token", "label", value="other"),
        set_value("server", "max_wait", value="30s"),
        set_value(*RELEASE, "approvers", value=["carol", "alice", "bob"]),  # order is not policy
        set_value(*RELEASE, "requesters", value=["carol", "ci"]),
    ):
        assert _hash(root, change) == base


@pytest.mark.parametrize(
    "change",
    [
        set_value(*RELEASE, "threshold", value=3),
        set_value(*RELEASE, "approvers", value=["alice", "bob"]),
        set_value(*RELEASE, "requesters", value=["ci"]),
        set_value(*RELEASE, "max_ttl", value="2h"),
        set_value(*RELEASE, "algorithm", value="ecdsa-p384"),
        set_value("approvers", "alice", value="approvers/dave.key.pub"),
        set_value("identities", "auditor", value=["auditor", "admin"]),
        set_value("audit", "key", value="audit2"),
        set_value("access", value={"/signer.v1.AuditService/ListAuditEvents": ["*"]}),
        set_value(
            "keys",
            "staging",
            value={"approvers": ["alice"], "threshold": 1, "requesters": ["ci"]},
        ),
    ],
    ids=[
        "threshold",
        "approvers",
        "requesters",
        "max_ttl",
        "algorithm",
        "approver-key",
        "roles",
        "audit-key",
        "access",
        "new-key",
    ],
)
def test_policy_hash_changes_with_policy(
    root: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    """Any change to who may request, approve or read changes the policy hash."""
    assert _hash(root, change) != _hash(root)
