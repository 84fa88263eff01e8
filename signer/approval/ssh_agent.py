"""Approval keys held by ssh-agent (docs/architecture.md §12): the officer's SSH key
signs, the agent keeps it (unlocked once, on a FIDO security key behind it, or
forwarded).

A profile names the key by its public key file:

    approval_key = "ssh-agent:~/.ssh/id_ed25519.pub"

and `SSH_AUTH_SOCK` says where the agent is. An `ssh-ed25519` key's agent signature
is a plain Ed25519 signature over the bytes, an `ecdsa-sha2-nistp256` key's is ECDSA
P-256 over their SHA-256 (its two integers re-encoded as DER): the very signatures
the Ed25519 and ECDSA P-256 approval kinds verify, so the server and every verifier
check them with nothing new, and the admin lists the officer's `.pub` file as it is
(`registry.key_from_openssh`). A FIDO key (`sk-ssh-ed25519@openssh.com`) signs with
a touch, and its flags and counter go with the signature (`signer.approval.sk_ed25519`:
one made without a touch approves nothing). The agent protocol (draft-miller-ssh-agent:
REQUEST_IDENTITIES, SIGN_REQUEST) is spoken here by hand over the agent's socket:
two messages, every length bounded, every answer checked.
"""

from __future__ import annotations

import base64
import binascii
import os
import socket
import struct
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from signer.approval import registry
from signer.approval.ecdsa_p256 import EcdsaP256Key
from signer.approval.ed25519 import Ed25519Key
from signer.approval.keys import ApprovalKey, ApprovalSigner
from signer.approval.sk_ed25519 import KEY_TYPE, SkEd25519Key, ssh_string
from signer.errors import ConfigError

__all__ = ["PREFIX", "AgentSigner"]

PREFIX = "ssh-agent:"
_REQUEST_IDENTITIES, _IDENTITIES_ANSWER = 11, 12
_SIGN_REQUEST, _SIGN_RESPONSE, _FAILURE = 13, 14, 5
_MAX_MESSAGE = 256 * 1024
_TIMEOUT = 120.0  # seconds: the agent may ask for a confirmation or a touch


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.u32())

    def done(self) -> bool:
        return self.at == len(self.data)


class AgentSigner(ApprovalSigner):
    """Signs through ssh-agent with the key whose public half is in `public_file`."""

    def __init__(self, public_file: Path, socket_path: str | None = None) -> None:
        try:
            line = public_file.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {public_file}: {e.strerror}") from None
        try:
            key = registry.key_from_openssh(line)
            blob = base64.b64decode(line.split()[1], validate=True)
        except (ValueError, IndexError, binascii.Error) as e:
            raise ConfigError(f"{public_file} is not an OpenSSH public key: {e}") from None
        self._public = key
        self._blob = blob  # the key as the agent names it
        self._socket = socket_path or os.environ.get("SSH_AUTH_SOCK") or ""
        if not self._socket:
            raise ConfigError("no ssh-agent: SSH_AUTH_SOCK is not set")
        if self._blob not in self._identities():
            raise ConfigError(
                f"ssh-agent holds no key {public_file} names (ssh-add it, or check SSH_AUTH_SOCK)"
            )

    def public_key(self) -> ApprovalKey:
        return self._public

    def _call(self, message: bytes) -> bytes:
        end = time.monotonic() + _TIMEOUT  # one deadline for the whole exchange
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(_TIMEOUT)
                s.connect(self._socket)
                s.sendall(ssh_string(message))
                head = _recv(s, 4, end)
                (n,) = struct.unpack(">I", head)
                if not 1 <= n <= _MAX_MESSAGE:
                    raise ValueError(f"an answer of {n} bytes")
                return _recv(s, n, end)
        except (OSError, ValueError) as e:
            raise ConfigError(f"ssh-agent at {self._socket}: {e}") from None

    def _identities(self) -> list[bytes]:
        answer = self._call(bytes([_REQUEST_IDENTITIES]))
        try:
            r = _Reader(answer)
            if r.take(1)[0] != _IDENTITIES_ANSWER:
                raise ValueError("not an identities answer")
            count = r.u32()
            if count > 1024:
                raise ValueError(f"{count} identities")
            blobs = []
            for _ in range(count):
                blobs.append(r.string())
                r.string()  # its comment
            if not r.done():
                raise ValueError("trailing bytes")
        except (ValueError, IndexError) as e:
            raise ConfigError(f"ssh-agent at {self._socket}: a bad answer ({e})") from None
        return blobs

    def sign(self, data: bytes) -> bytes:
        answer = self._call(
            bytes([_SIGN_REQUEST])
            + ssh_string(self._blob)
            + ssh_string(data)
            + struct.pack(">I", 0)
        )
        if answer[:1] == bytes([_FAILURE]):
            raise ConfigError("ssh-agent refused to sign (declined, or the key is locked)")
        try:
            r = _Reader(answer)
            if r.take(1)[0] != _SIGN_RESPONSE:
                raise ValueError("not a signature")
            blob = _Reader(r.string())
            if not r.done():
                raise ValueError("trailing bytes")
            signature = self._convert(blob)
        except (ValueError, IndexError) as e:
            raise ConfigError(f"ssh-agent at {self._socket}: a bad signature ({e})") from None
        self._public.verify(signature, data)  # an agent that answers with another key's
        return signature

    def _convert(self, blob: _Reader) -> bytes:
        """The approval kind's signature from the agent's signature blob."""
        kind, raw = blob.string(), blob.string()
        if isinstance(self._public, Ed25519Key) and kind == b"ssh-ed25519" and len(raw) == 64:
            out = raw
        elif isinstance(self._public, EcdsaP256Key) and kind == b"ecdsa-sha2-nistp256":
            r = _Reader(raw)
            big_r, big_s = (int.from_bytes(r.string(), "big") for _ in range(2))
            if not r.done():
                raise ValueError("trailing bytes in the ECDSA signature")
            out = encode_dss_signature(big_r, big_s)
        elif isinstance(self._public, SkEd25519Key) and kind == KEY_TYPE and len(raw) == 64:
            flags, counter = blob.take(1), blob.take(4)  # the authenticator's, after it
            out = flags + counter + raw
        else:
            raise ValueError(f"a {kind[:40]!r} signature, not one of the {self._public.label} key")
        if not blob.done():
            raise ValueError("trailing bytes in the signature")
        return out


def _recv(s: socket.socket, n: int, end: float) -> bytes:
    out = b""
    while len(out) < n:
        left = end - time.monotonic()
        if left <= 0:
            raise ValueError(f"no whole answer within {_TIMEOUT:.0f} s")
        s.settimeout(left)
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ValueError("the agent closed the connection")
        out += chunk
    return out
