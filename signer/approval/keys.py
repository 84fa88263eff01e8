"""The approval-key seam: what the signer needs of an officer's key, whatever its kind.

An officer signs approvals with their own key (invariant 6) of some kind: an
Ed25519 or ECDSA P-256 key in a file, a key in the officer's own token, or one
ssh-agent holds (docs/architecture.md §12). What checks approvals (the core,
bundle verification, the offline audit verifier) holds `ApprovalKey`s; what
makes them (the approver CLI) holds an `ApprovalSigner`; neither knows the kind.
`signer.approval.registry` finds the kind of a key read from a PEM file or from
a recorded policy document. A new kind is one module with an `ApprovalKey`
subclass (and an `ApprovalSigner`, if its private part is one `cryptography`
loads from a PEM file) and one entry in `registry.KINDS`.

What every kind upholds:
- `verify` returns only for a signature by this key over exactly these bytes;
  anything else, however malformed, raises `VerificationError` with reason
  BAD_APPROVAL_SIGNATURE (`signature_error()`), never another exception;
- `key_id` is the hex SHA-256 of the key's SubjectPublicKeyInfo DER in its
  canonical encoding (`spki_key_id`): one key has one id however it was
  written, two keys are equal when their ids are, and the distinct count
  (`dsse.distinct_approvers`) and "one person, one key" compare ids;
- `pem()` is the SPKI PEM an admin lists under `[approvers]` and a consumer
  pins in a trust file; `policy_value()` is how the policy document (hashed,
  and recorded in the audit log) writes the key, and `from_policy` reads back
  exactly what it wrote. Ed25519's value is 64 lowercase hex digits of the raw
  key, as in every log written before there were kinds; any other kind's value
  is its `kind`, a colon, then text of its own choosing (say `ecdsa-p256:` and
  the base64 of the SPKI DER), so that a verifier meeting a kind it does not
  know names it rather than misreads it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import ClassVar, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from signer.errors import VerificationError

__all__ = ["ApprovalKey", "ApprovalSigner", "signature_error", "spki_key_id", "spki_pem"]


def spki_key_id(public_key: PublicKeyTypes) -> str:
    """Hex SHA-256 of the public key's SubjectPublicKeyInfo DER (docs/architecture.md §4)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def spki_pem(public_key: PublicKeyTypes) -> bytes:
    """The public key as SubjectPublicKeyInfo PEM."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def signature_error() -> VerificationError:
    """What `ApprovalKey.verify` raises for any signature that is not the key's."""
    return VerificationError(
        "the signature does not verify with this approval key", reason="BAD_APPROVAL_SIGNATURE"
    )


class ApprovalKey(ABC):
    """An officer's public approval key, of one kind: checks their signatures."""

    kind: ClassVar[str]  # the kind's name, and the prefix of its policy values
    label: ClassVar[str]  # the kind as people read it in messages, e.g. "Ed25519"

    @classmethod
    @abstractmethod
    def from_public_key(cls, public_key: PublicKeyTypes) -> Self | None:
        """This kind's key for a public key loaded from PEM; None if it is of another kind."""

    @classmethod
    @abstractmethod
    def from_policy(cls, value: str) -> Self:
        """The key a policy document records as `value` (what `policy_value` writes);
        ValueError saying what the value must be."""

    @classmethod
    def signer_for(cls, private_key: PrivateKeyTypes) -> ApprovalSigner | None:
        """This kind's signer for a private key loaded from a PEM file; None if the key
        is of another kind (always, for a kind whose private part is never in a file)."""
        return None

    @property
    @abstractmethod
    def key_id(self) -> str:
        """Hex SHA-256 of the canonical SPKI DER (`spki_key_id`)."""

    @abstractmethod
    def verify(self, signature: bytes, data: bytes) -> None:
        """Return if `signature` is this key's over `data`; else raise `signature_error()`."""

    @abstractmethod
    def pem(self) -> bytes:
        """The SubjectPublicKeyInfo PEM (an `approver keygen` .pub file)."""

    @abstractmethod
    def policy_value(self) -> str:
        """The key as the policy document records it (see the module docstring)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApprovalKey) and other.key_id == self.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"<{self.label} approval key {self.key_id[:16]}>"


class ApprovalSigner(ABC):
    """The private part of an officer's approval key: signs their statements."""

    @abstractmethod
    def public_key(self) -> ApprovalKey:
        """The key that verifies this signer's signatures."""

    @abstractmethod
    def sign(self, data: bytes) -> bytes:
        """A signature over `data` that `public_key().verify` accepts."""
