"""ECDSA P-256 approval keys: what a YubiKey's PIV applet and most officer tokens hold.

A signature is ECDSA over SHA-256 of the signed bytes, DER-encoded (as the token's
raw r || s is re-encoded by `signer.token.keys`). The private key lives in a PEM file
(`signer_for`) or, more usefully, in the officer's own PKCS#11 token
(`signer.approval.pkcs11`). The policy document records the key as `ecdsa-p256:`
and the base64 of its SubjectPublicKeyInfo DER; `from_policy` accepts exactly
that encoding and nothing else, so one key has one recorded form.
"""

from __future__ import annotations

import base64
import binascii
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from signer.approval.keys import (
    ApprovalKey,
    ApprovalSigner,
    signature_error,
    spki_key_id,
    spki_pem,
)

__all__ = ["EcdsaP256Key", "EcdsaP256Signer"]

_MAX_SIGNATURE = 72  # DER of two 256-bit integers


def _spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class EcdsaP256Key(ApprovalKey):
    """An officer's ECDSA P-256 public key."""

    kind = "ecdsa-p256"
    label = "ECDSA P-256"

    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        self._key = public_key
        self._key_id = spki_key_id(public_key)

    @classmethod
    def from_public_key(cls, public_key: PublicKeyTypes) -> Self | None:
        if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
            public_key.curve, ec.SECP256R1
        ):
            return cls(public_key)
        return None

    @classmethod
    def from_policy(cls, value: str) -> Self:
        prefix = f"{cls.kind}:"
        if not value.startswith(prefix) or len(value) > 200:
            raise ValueError(f"must be {prefix} and the base64 of the key's SPKI DER")
        try:
            der = base64.b64decode(value[len(prefix) :], validate=True)
            key = serialization.load_der_public_key(der)
        except (binascii.Error, ValueError):
            raise ValueError(f"must be {prefix} and the base64 of an SPKI DER key") from None
        found = cls.from_public_key(key)
        if found is None or found.policy_value() != value:
            raise ValueError(f"must be {prefix} and the canonical SPKI DER of a P-256 key")
        return found

    @classmethod
    def signer_for(cls, private_key: PrivateKeyTypes) -> EcdsaP256Signer | None:
        if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
            private_key.curve, ec.SECP256R1
        ):
            return EcdsaP256Signer(private_key)
        return None

    @property
    def key_id(self) -> str:
        return self._key_id

    def verify(self, signature: bytes, data: bytes) -> None:
        if not 8 <= len(signature) <= _MAX_SIGNATURE:
            raise signature_error()
        try:
            self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise signature_error() from None

    def pem(self) -> bytes:
        return spki_pem(self._key)

    def policy_value(self) -> str:
        return f"{self.kind}:{base64.b64encode(_spki_der(self._key)).decode()}"


class EcdsaP256Signer(ApprovalSigner):
    """An officer's ECDSA P-256 private key from a PEM file, held in memory once loaded."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._key = private_key
        self._public = EcdsaP256Key(private_key.public_key())

    def public_key(self) -> EcdsaP256Key:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
