"""Server config files for tests: a valid baseline, the files it names, and one-setting changes.

`root` (a fixture; `make_root` for any directory) is a directory with TLS
files from DevCA, officers' keys from approval_keys.generate and a 0600 PIN
file; `base_config()` is what every test config holds, `valid_config()` a
config that loads there, `write_config` writes one as TOML, and `set_value(*keys,
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

__all__ = [
    "OFFICERS",
    "PIN",
    "RELEASE",
    "base_config",
    "make_root",
    "root",
    "set_value",
    "valid_config",
    "write_config",
]

PIN = "pin-4242-very-secret"
OFFICERS = ("alice", "bob", "carol", "dave")


def base_config() -> dict[str, Any]:
    """What every test config holds: the listen address and TLS files, the token, the
    store and the audit key, all as `make_root` lays them out."""
    return {
        "server": {
            "listen": "127.0.0.1:7443",
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
    }


def valid_config() -> dict[str, Any]:
    cfg = base_config()
    cfg["server"]["max_wait"] = "60s"
    return {
        **cfg,
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
        "policy": {"officers": ["alice", "bob", "carol"], "threshold": 2},
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


def make_root(path: Path) -> Path:
    """TLS files, officers' keys (and an EC key that is not one) and a 0600 PIN file in
    `path`, where a config from `base_config` finds them; return `path`."""
    ca = DevCA("test CA")
    (path / "tls").mkdir()
    (path / "tls" / "ca.pem").write_bytes(ca.pem)
    cert, key = ca.issue("signer server", server_hosts=["127.0.0.1"])
    (path / "tls" / "server.pem").write_bytes(cert)
    write_private(path / "tls" / "server.key", key)
    for o in OFFICERS:
        approval_keys.generate(path / "approvers" / f"{o}.key")
    ec_pub = ec.generate_private_key(ec.SECP384R1()).public_key()  # of no approval kind
    (path / "approvers" / "ec.pub").write_bytes(
        ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    write_private(path / "secrets" / "token.pin", PIN.encode() + b"\n")
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory with TLS files, officers' keys and a 0600 PIN file (no config yet)."""
    return make_root(tmp_path)


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
