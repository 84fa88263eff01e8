"""Officers' Ed25519 approval keys in files (PEM, PKCS#8, optionally encrypted).

Passphrases come from a file or an environment variable, or an interactive
prompt; never from argv (invariant 7). Private key files are written 0600.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.errors import ConfigError
from signer.tls import write_private

__all__ = ["generate", "load_private", "public_pem"]


def public_pem(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate(path: Path, passphrase: str | None = None) -> ed25519.Ed25519PrivateKey:
    """Write a new key to `path` (0600) and its public key to `path`.pub."""
    key = ed25519.Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        ),
    )
    path.with_name(path.name + ".pub").write_bytes(public_pem(key.public_key()))
    return key


def load_private(path: Path, passphrase: str | None) -> ed25519.Ed25519PrivateKey:
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
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"approval key {path} is not an Ed25519 key")
    return key
