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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519 as ed25519_keys
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from signer.approval import ecdsa_p256, ed25519, sk_ed25519
from signer.approval.keys import ApprovalKey, ApprovalSigner

__all__ = [
    "KEYGEN",
    "KINDS",
    "OPENSSH_TYPES",
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


OPENSSH_TYPES = (b"ssh-ed25519", b"ecdsa-sha2-nistp256", sk_ed25519.KEY_TYPE)


def key_from_openssh(line: bytes) -> ApprovalKey:
    """The approval key of an OpenSSH public key line (a `.pub` file of a key the officer
    keeps in ssh-agent): `ssh-ed25519`, `ecdsa-sha2-nistp256` or
    `sk-ssh-ed25519@openssh.com`, and no other type (a FIDO ECDSA key read as a plain
    one would lose its touch, a certificate its validity); ValueError otherwise."""
    fields = line.split()
    kind = fields[0] if fields else b""
    if kind not in OPENSSH_TYPES:
        raise ValueError(
            f"an OpenSSH key for approvals is {', '.join(t.decode() for t in OPENSSH_TYPES)}, "
            f"not {kind[:48].decode(errors='replace')!r}"
        )
    sk = sk_ed25519.SkEd25519Key.from_openssh(line)
    if sk is not None:
        return sk
    try:
        loaded = serialization.load_ssh_public_key(b" ".join(fields[:2]))
    except (TypeError, NotImplementedError, ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not an OpenSSH public key: {e}") from None
    # The type matched, so the key is of a known kind (newer cryptography also loads
    # kinds PublicKeyTypes does not name).
    key = None
    if isinstance(loaded, ec.EllipticCurvePublicKey | ed25519_keys.Ed25519PublicKey):
        key = key_for(loaded)
    if key is None:
        raise ValueError("not an OpenSSH key of a known kind")
    return key


def is_openssh(data: bytes) -> bool:
    """Whether a public key file holds an OpenSSH line rather than PEM."""
    return not data.lstrip().startswith(b"-----")


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
