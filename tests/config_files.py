"""Server config files for tests: a valid baseline, the files it names, and one-setting changes.

`root` (a fixture) is a directory with TLS files from DevCA, officers' keys
from approval_keys.generate and a 0600 PIN file; `valid_config()` is a config
that loads there, `write_config` writes one as TOML, and `set_value(*keys,
value=...)` is a change that sets one setting.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.approval import files as approval_keys
from signer.tls import DevCA, write_private

__all__ = ["OFFICERS", "PIN", "RELEASE", "root", "set_value", "valid_config", "write_config"]

PIN = "pin-4242-very-secret"
OFFICERS = ("alice", "bob", "carol", "dave")


def valid_config() -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:7443",
            "tls_cert": "tls/server.pem",
            "tls_key": "tls/server.key",
            "client_ca": "tls/ca.pem",
            "max_wait": "60s",
        },
        "token": {
            "module": "/usr/lib/softhsm/libsofthsm2.so",
            "label": "signer-test",
            "pin_file": "secrets/token.pin",
        },
        "store": {"url": "sqlite:///signer.db"},
        "audit": {"key": "audit"},
        "log": {"format": "auto"},
        "identities": {
            "ci": ["requester"],
            "alice": ["approver"],
            "bob": ["approver"],
            "carol": ["approver", "requester"],
            "dave": ["approver"],
            "auditor": ["auditor"],
        },
        "approvers": {o: f"approvers/{o}.key.pub" for o in ("alice", "bob", "carol")},
        "keys": {
            "release": {
                "algorithm": "ecdsa-p256",
                "approvers": ["alice", "bob", "carol"],
                "threshold": 2,
                "requesters": ["ci", "carol"],
                "max_ttl": "1h",
            }
        },
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory with TLS files, officers' keys and a 0600 PIN file (no config yet)."""
    ca = DevCA("test CA")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_bytes(ca.pem)
    cert, key = ca.issue("signer server", server_hosts=["127.0.0.1"])
    (tmp_path / "tls" / "server.pem").write_bytes(cert)
    write_private(tmp_path / "tls" / "server.key", key)
    for o in OFFICERS:
        approval_keys.generate(tmp_path / "approvers" / f"{o}.key")
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "approvers" / "ec.pub").write_bytes(
        ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    write_private(tmp_path / "secrets" / "token.pin", PIN.encode() + b"\n")
    return tmp_path


def write_config(root: Path, cfg: dict[str, Any], name: str = "signer.toml") -> Path:
    path = root / name
    path.write_text(tomli_w.dumps(cfg))
    return path


def set_value(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        table = cfg
        for k in keys[:-1]:
            table = table[k]
        table[keys[-1]] = value

    return change


RELEASE = ("keys", "release")
