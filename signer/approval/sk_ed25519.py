"""FIDO security-key approval keys (`sk-ssh-ed25519@openssh.com`, docs/architecture.md §12): an
officer's FIDO2 key, through ssh-agent (`signer.approval.ssh_agent`), signs with a
touch, and every approval proves it.

The authenticator signs `SHA-256(application) || flags || counter || SHA-256(bytes)`
with its Ed25519 key (OpenSSH PROTOCOL.u2f); an approval signature is `flags (1) ||
counter (4, big-endian) || signature (64)`, and it verifies only with the user-presence
flag set: a key that signed without a touch approves nothing. The policy records the
key as `sk-ssh-ed25519:` and the base64 of its OpenSSH wire form (the Ed25519 key and
the application, which its signatures bind); its id is the SPKI of its Ed25519 key,
and `pem()` gives its OpenSSH public key line (what `ssh-keygen -t ed25519-sk` wrote
and the admin lists under `[approvers]`), there being no SPKI form of the application.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from signer.approval.ed25519 import weak_key_problem
from signer.approval.keys import ApprovalKey, signature_error, spki_key_id

__all__ = ["KEY_TYPE", "USER_PRESENT", "SkEd25519Key", "signed_bytes", "ssh_string"]

KEY_TYPE = b"sk-ssh-ed25519@openssh.com"
USER_PRESENT = 0x01
_MAX_APPLICATION = 256


def ssh_string(data: bytes) -> bytes:
    """An SSH wire `string`: its length (32 bits, big-endian), then its bytes."""
    return struct.pack(">I", len(data)) + data


def signed_bytes(application: bytes, flags: int, counter: int, data: bytes) -> bytes:
    """What the authenticator signs for `data` (OpenSSH PROTOCOL.u2f)."""
    return (
        hashlib.sha256(application).digest()
        + bytes([flags])
        + struct.pack(">I", counter)
        + hashlib.sha256(data).digest()
    )


class SkEd25519Key(ApprovalKey):
    """An officer's FIDO2 Ed25519 key: its public key and its application."""

    kind = "sk-ssh-ed25519"
    label = "FIDO sk-ssh-ed25519"

    def __init__(self, public_key: ed25519.Ed25519PublicKey, application: bytes) -> None:
        if (problem := weak_key_problem(public_key.public_bytes_raw())) is not None:
            raise ValueError(problem)
        self._key = public_key
        self.application = application
        self._key_id = spki_key_id(public_key)

    @classmethod
    def from_public_key(cls, public_key: PublicKeyTypes) -> Self | None:
        return None  # no PEM form: read from its OpenSSH line (`from_openssh`)

    @classmethod
    def from_wire(cls, blob: bytes) -> Self:
        """The key from its OpenSSH wire form; ValueError if it is not one."""
        at = 0
        parts = []
        for _ in range(3):
            if at + 4 > len(blob):
                raise ValueError("truncated")
            (n,) = struct.unpack(">I", blob[at : at + 4])
            parts.append(blob[at + 4 : at + 4 + n])
            at += 4 + n
            if at > len(blob):
                raise ValueError("truncated")
        kind, raw, application = parts
        if at != len(blob) or kind != KEY_TYPE or len(raw) != 32:
            raise ValueError("not an sk-ssh-ed25519@openssh.com key")
        if not application or len(application) > _MAX_APPLICATION:
            raise ValueError("its application must be 1-256 bytes")
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw), application)

    @classmethod
    def from_openssh(cls, line: bytes) -> Self | None:
        """The key of an OpenSSH public key line of this type; None for another type;
        ValueError for a line of this type that is not a key."""
        fields = line.split()
        if len(fields) < 2 or fields[0] != KEY_TYPE:
            return None
        try:
            return cls.from_wire(base64.b64decode(fields[1], validate=True))
        except binascii.Error:
            raise ValueError("its key is not base64") from None

    @classmethod
    def from_policy(cls, value: str) -> Self:
        prefix = f"{cls.kind}:"
        if not value.startswith(prefix) or len(value) > 600:
            raise ValueError(f"must be {prefix} and the base64 of the key's OpenSSH wire form")
        try:
            key = cls.from_wire(base64.b64decode(value[len(prefix) :], validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"must be {prefix} and the base64 of an sk-ssh-ed25519 key") from None
        if key.policy_value() != value:
            raise ValueError(f"must be {prefix} and the canonical base64 of the key")
        return key

    def wire(self) -> bytes:
        return (
            ssh_string(KEY_TYPE)
            + ssh_string(self._key.public_bytes_raw())
            + ssh_string(self.application)
        )

    @property
    def key_id(self) -> str:
        return self._key_id

    def verify(self, signature: bytes, data: bytes) -> None:
        if len(signature) != 69:
            raise signature_error()
        flags, counter, raw = signature[0], signature[1:5], signature[5:]
        if not flags & USER_PRESENT:
            raise signature_error()  # signed without a touch
        try:
            self._key.verify(
                raw, signed_bytes(self.application, flags, int.from_bytes(counter, "big"), data)
            )
        except InvalidSignature:
            raise signature_error() from None

    def pem(self) -> bytes:
        return KEY_TYPE + b" " + base64.b64encode(self.wire()) + b"\n"

    def policy_value(self) -> str:
        return f"{self.kind}:{base64.b64encode(self.wire()).decode()}"
