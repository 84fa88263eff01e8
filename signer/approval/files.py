"""Officers' approval keys in files (PEM; private keys PKCS#8, optionally encrypted).

Whatever the key's kind: `signer.approval.registry` says which kind a loaded
key is, and refuses a key of none. Passphrases come from a file or an
environment variable, or an interactive prompt; never from argv (invariant 7).
Private key files are written 0600.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization

from signer.approval import registry
from signer.approval.keys import ApprovalSigner
from signer.errors import ConfigError

__all__ = ["generate", "load_signer"]


def generate(path: Path, passphrase: str | None = None) -> ApprovalSigner:
    """Write a new key to `path` (0600) and its public key to `path`.pub."""
    return registry.KEYGEN(path, passphrase)


def load_signer(path: Path, passphrase: str | None) -> ApprovalSigner:
    """The officer's signer from their private key file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read approval key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
    except TypeError:
        raise ConfigError(
            f"approval key {path} is encrypted: set approval_key_passphrase_file or "
            "approval_key_passphrase_env in the profile, or run in a terminal to be asked"
        ) from None
    except ValueError:
        raise ConfigError(
            f"cannot decrypt or parse approval key {path} (wrong passphrase or not a PEM key)"
        ) from None
    signer = registry.signer_for(key)
    if signer is None:
        raise ConfigError(f"approval key {path} is not an {registry.supported()} key")
    return signer
