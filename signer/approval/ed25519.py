"""Ed25519 approval keys: the first kind, an officer's key in a PEM file.

The private key is PKCS#8 PEM, optionally encrypted with a passphrase (which
comes from a file, an environment variable or a prompt, never argv: invariant
7), written 0600, its public key beside it as `.pub` (SPKI PEM). The policy
document records the key as 64 lowercase hex digits of the raw 32 bytes, with
no kind prefix: the form of every log written before there were kinds, so
those logs and today's policy hashes stay as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from signer.approval.keys import (
    ApprovalKey,
    ApprovalSigner,
    signature_error,
    spki_key_id,
    spki_pem,
)
from signer.tls import write_private

__all__ = ["Ed25519Key", "Ed25519Signer", "generate", "weak_key_problem"]

_POLICY_VALUE = re.compile(r"[0-9a-f]{64}\Z")
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def weak_key_problem(raw: bytes) -> str | None:
    """Why a 32-byte Ed25519 public key is unfit to check approvals, or None: an
    encoding that is not canonical, no point of the curve, or a point of small order
    (the identity among them), for which signatures verify that no one made. Written
    here because `cryptography` does not expose the curve (RFC 8032 §5.1.3 decoding,
    then [8]A compared with the identity)."""
    if len(raw) != 32:
        return "an Ed25519 key is 32 bytes"
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return "not a canonical Ed25519 key encoding"
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if (x * x - x2) % _P:
        return "not a point of the Ed25519 curve"
    if x == 0 and sign:
        return "not a canonical Ed25519 key encoding"
    if x % 2 != sign:
        x = _P - x
    point = (x, y)
    for _ in range(3):
        point = _double(point)
    if point == (0, 1):
        return "an Ed25519 key of small order: signatures would verify that no one made"
    return None


def _double(point: tuple[int, int]) -> tuple[int, int]:
    x, y = point
    t = _D * x * x * y * y % _P
    return (2 * x * y * pow(1 + t, -1, _P) % _P, (y * y + x * x) * pow(1 - t, -1, _P) % _P)


class Ed25519Key(ApprovalKey):
    """An officer's Ed25519 public key."""

    kind = "ed25519"
    label = "Ed25519"

    def __init__(self, public_key: ed25519.Ed25519PublicKey) -> None:
        if (problem := weak_key_problem(public_key.public_bytes_raw())) is not None:
            raise ValueError(problem)
        self._key = public_key
        self._key_id = spki_key_id(public_key)

    @classmethod
    def from_public_key(cls, public_key: PublicKeyTypes) -> Self | None:
        return cls(public_key) if isinstance(public_key, ed25519.Ed25519PublicKey) else None

    @classmethod
    def from_policy(cls, value: str) -> Self:
        if not _POLICY_VALUE.match(value):
            raise ValueError("must be 64 lowercase hex digits (an Ed25519 public key)")
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(value)))

    @classmethod
    def signer_for(cls, private_key: PrivateKeyTypes) -> Ed25519Signer | None:
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            return Ed25519Signer(private_key)
        return None

    @property
    def key_id(self) -> str:
        return self._key_id

    def verify(self, signature: bytes, data: bytes) -> None:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            raise signature_error() from None

    def pem(self) -> bytes:
        return spki_pem(self._key)

    def policy_value(self) -> str:
        return self._key.public_bytes_raw().hex()


class Ed25519Signer(ApprovalSigner):
    """An officer's Ed25519 private key, held in memory once loaded."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._key = private_key
        self._public = Ed25519Key(private_key.public_key())

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """A new random key (what `generate` writes; tests use it for throwaway keys)."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    def public_key(self) -> Ed25519Key:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def write(self, path: Path, passphrase: str | None = None) -> None:
        """The private key to `path` (0600, encrypted with `passphrase` if given) and
        its public key to `path`.pub."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase.encode())
            if passphrase
            else serialization.NoEncryption()
        )
        write_private(
            path,
            self._key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            ),
        )
        path.with_name(path.name + ".pub").write_bytes(self._public.pem())


def generate(path: Path, passphrase: str | None = None) -> Ed25519Signer:
    """Write a new key to `path` (0600) and its public key to `path`.pub."""
    signer = Ed25519Signer.generate()
    signer.write(path, passphrase)
    return signer
