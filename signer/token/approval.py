"""Officers' approval keys in their own PKCS#11 token (docs/architecture.md §12): the
private key never leaves it. A YubiKey (its PIV applet through OpenSC's or Yubico's
ykcs11 module), a smart card, a SoftHSM token standing in for one in the tests.

A profile names the key by its URI (`signer.approval.token_uri`) in `approval_key`.
ECDSA P-256 keys sign SHA-256 digests (`CKM_ECDSA`, DER-encoded), Ed25519 keys the
bytes themselves (`CKM_EDDSA`); the public key read from the token decides which
approval key kind it is (`registry.key_for`), so the server and every verifier check
it as they check a key in a file. `generate` makes one in the token. Part of the token
adapter: the one place PKCS#11 is spoken.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from signer.algorithms import ALGORITHMS
from signer.approval import registry
from signer.approval.keys import ApprovalKey, ApprovalSigner
from signer.approval.token_uri import ALGORITHMS_IN_TOKENS, TokenKeyUri
from signer.errors import ConfigError, KeyNotFoundError
from signer.token.hsm import Token

__all__ = ["TokenSigner", "generate"]


def _open(uri: TokenKeyUri, pin: str) -> Token:
    try:
        return Token(uri.module, uri.token, pin)
    except ConfigError as e:
        raise ConfigError(f"approval key {uri}: {e}") from None


class TokenSigner(ApprovalSigner):
    """An officer's approval key in their own token, over one logged-in session."""

    def __init__(self, uri: TokenKeyUri, pin: str) -> None:
        self._uri = uri
        self._token = _open(uri, pin)
        try:
            key = self._token.key(uri.object)
        except KeyNotFoundError:
            held = self._token.keys()
            labels = ", ".join(k.name for k in held) or "none"
            self._token.close()
            raise ConfigError(
                f"approval key {uri}: the token holds no key labelled {uri.object!r} "
                f"(it holds: {labels})"
            ) from None
        public = _approval_key(key.spki_der)
        if public is None or key.algorithm is None:
            self._token.close()
            raise ConfigError(f"approval key {uri}: not an {registry.supported()} key")
        self._public = public
        self._algorithm = key.algorithm

    def public_key(self) -> ApprovalKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        if self._algorithm.name == "ed25519":
            signature = self._token.sign_message(self._uri.object, data)
        else:
            digest = hashlib.sha256(data).digest()
            signature = self._token.sign_digest(self._uri.object, self._algorithm, "sha256", digest)
        self._public.verify(signature, data)  # a token that answers for another key
        return signature

    def close(self) -> None:
        self._token.close()


def generate(uri: TokenKeyUri, pin: str, algorithm: str) -> ApprovalKey:
    """Make a new approval key labelled `uri.object` in the token; ConfigError if one is
    there already (never replaced) or the algorithm cannot be an approval key."""
    if algorithm not in ALGORITHMS_IN_TOKENS:
        raise ConfigError(
            f"an approval key in a token is {' or '.join(ALGORITHMS_IN_TOKENS)}, not {algorithm}"
        )
    token = _open(uri, pin)
    try:
        held = token.keys()
        if any(k.name == uri.object for k in held):
            raise ConfigError(f"approval key {uri}: the token holds one already; not replacing it")
        made = token.generate(uri.object, ALGORITHMS[algorithm])
    finally:
        token.close()
    public = _approval_key(made.spki_der)
    if public is None:
        raise ConfigError(f"approval key {uri}: the token made a key of no approval kind")
    return public


def _approval_key(spki_der: bytes) -> ApprovalKey | None:
    """The approval key a token reports; None if it is of no kind (or no key at all)."""
    try:
        return registry.key_for(serialization.load_der_public_key(spki_der))
    except (ValueError, UnsupportedAlgorithm):
        return None
