"""The registry of approval key kinds: which kind a PEM key or a policy value is.

`KINDS` lists every kind this build knows, each an `ApprovalKey` subclass in
a module of its own; adding a kind is that module and one more entry here.
The server's config, trust files and the approver's key file go through
`key_for` / `signer_for` (a key of no known kind is refused, naming the kinds
that are: `supported()`); the offline audit verifier reads a recorded policy
through `key_from_policy`, which picks the kind by the value's `KIND:` prefix,
and takes a value without one for Ed25519 (every log before there were kinds).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from signer.approval import ecdsa_p256, ed25519, sk_ed25519
from signer.approval.keys import ApprovalKey, ApprovalSigner

__all__ = [
    "KEYGEN",
    "KINDS",
    "is_openssh",
    "key_for",
    "key_from_openssh",
    "key_from_policy",
    "signer_for",
    "supported",
]

KINDS: list[type[ApprovalKey]] = [
    ed25519.Ed25519Key,
    ecdsa_p256.EcdsaP256Key,
    sk_ed25519.SkEd25519Key,
]

# The kind a policy value without a `KIND:` prefix is.
_UNPREFIXED: type[ApprovalKey] = ed25519.Ed25519Key

# What `approver keygen` and `signer init` make: a new key written to a path (0600),
# with an optional passphrase, its public key beside it as PATH.pub.
KEYGEN: Callable[[Path, str | None], ApprovalSigner] = ed25519.generate


def supported() -> str:
    """The known kinds, for messages: "Ed25519", "Ed25519 or X", "Ed25519, X or Y"."""
    labels = [k.label for k in KINDS]
    return " or ".join([", ".join(labels[:-1]), labels[-1]] if len(labels) > 1 else labels)


def key_for(public_key: PublicKeyTypes) -> ApprovalKey | None:
    """The approval key for a public key loaded from PEM; None if it is of no known kind."""
    for kind in KINDS:
        key = kind.from_public_key(public_key)
        if key is not None:
            return key
    return None


def key_from_openssh(line: bytes) -> ApprovalKey | None:
    """The approval key of an OpenSSH public key line (a `.pub` file of a key the officer
    keeps in ssh-agent); None if of no known kind; ValueError if it is no key."""
    sk = sk_ed25519.SkEd25519Key.from_openssh(line)
    if sk is not None:
        return sk
    try:
        loaded = serialization.load_ssh_public_key(line.strip())
    except (TypeError, NotImplementedError, ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not an OpenSSH public key of a known type: {e}") from None
    return key_for(loaded)


def is_openssh(data: bytes) -> bool:
    """Whether a public key file holds an OpenSSH line rather than PEM."""
    return data.lstrip().startswith((b"ssh-", b"ecdsa-", b"sk-"))


def signer_for(private_key: PrivateKeyTypes) -> ApprovalSigner | None:
    """The signer for a private key loaded from a PEM file; None if of no known kind."""
    for kind in KINDS:
        signer = kind.signer_for(private_key)
        if signer is not None:
            return signer
    return None


def key_from_policy(value: str) -> ApprovalKey:
    """The key a policy document records as `value`; ValueError saying what is wrong
    (the caller names where)."""
    name, colon, _ = value.partition(":")
    if not colon:
        return _UNPREFIXED.from_policy(value)
    kind = next((k for k in KINDS if k.kind == name and k is not _UNPREFIXED), None)
    if kind is None:
        raise ValueError(
            f"is a key of kind {name[:32]!r}, which this verifier does not know "
            f"(it knows {supported()})"
        )
    return kind.from_policy(value)
