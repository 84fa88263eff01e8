"""A throwaway OIDC identity provider for tests.

Everything here lives in memory or under a test's ``tmp_path``: private keys
are generated per instance and never written to the repository.

* `SigningKey`: an RSA-2048 (RS256) or P-256 (ES256) private key and its kid.
* `IdP`: publishes a JWKS, mints GitHub-Actions-like ID tokens, rotates keys,
  and forges the classic bad tokens (``alg: none``, HS256 keyed with the RSA
  public key, a tampered payload under the original signature).

Servers for it (a live JWKS over HTTPS, the Actions runner's token endpoint)
are in tests/idp_servers.py.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import threading
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def _uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


class SigningKey:
    """A private signing key with its kid and JWS algorithm."""

    def __init__(self, private_key: PrivateKey, kid: str, alg: str) -> None:
        self._private_key = private_key
        self._kid = kid
        self._alg = alg

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, kid, "RS256")

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(ec.generate_private_key(ec.SECP256R1()), kid, "ES256")

    @property
    def alg(self) -> str:
        return self._alg

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def private_key(self) -> PrivateKey:
        return self._private_key

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (RFC 7517/7518), base64url without padding."""
        jwk: dict[str, Any] = {"kid": self._kid, "alg": self._alg, "use": "sig"}
        if isinstance(self._private_key, rsa.RSAPrivateKey):
            numbers = self._private_key.public_key().public_numbers()
            jwk.update(kty="RSA", n=_uint(numbers.n), e=_uint(numbers.e))
        else:
            ec_numbers = self._private_key.public_key().public_numbers()
            size = (self._private_key.curve.key_size + 7) // 8
            jwk.update(
                kty="EC",
                crv="P-256",
                x=_uint(ec_numbers.x, size),
                y=_uint(ec_numbers.y, size),
            )
        return jwk

    def public_pem(self) -> bytes:
        return self._private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return f"SigningKey(kid={self._kid!r}, alg={self._alg!r})"


class _Default(enum.Enum):
    KID = enum.auto()


class IdP:
    """An OIDC issuer: a set of published keys and a token minter."""

    def __init__(self, issuer: str, keys: list[SigningKey] | None = None) -> None:
        self.issuer = issuer
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = (
            list(keys) if keys is not None else [SigningKey.rsa("k1"), SigningKey.ec("k2")]
        )

    @property
    def keys(self) -> list[SigningKey]:
        """A snapshot of the currently published keys."""
        with self._lock:
            return list(self._keys)

    def key(self, kid: str) -> SigningKey:
        for k in self.keys:
            if k.kid == kid:
                return k
        raise KeyError(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for k in self.keys]}

    def write_jwks(self, path: Path | str) -> Path:
        out = Path(path)
        out.write_text(json.dumps(self.jwks(), indent=2) + "\n")
        return out

    def rotate(self, new_key: SigningKey, *, keep_old: bool = False) -> None:
        """Publish `new_key` first (so it becomes the default signer)."""
        with self._lock:
            old = [k for k in self._keys if k.kid != new_key.kid] if keep_old else []
            self._keys = [new_key, *old]

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """GitHub-Actions-like claims; an override of ``None`` deletes the claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": "signer",
            "sub": "repo:org/app:environment:release",
            "repository": "org/app",
            "ref": "refs/tags/v1.0.0",
            "workflow": "release",
            "environment": "release",
            "actor": "octocat",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def _default_key(self) -> SigningKey:
        keys = self.keys
        if not keys:
            raise RuntimeError("IdP has no published keys")
        return keys[0]

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        alg: str | None = None,
        kid: str | _Default | None = _Default.KID,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Sign `claims` (default `self.claims()`) with `key` (default: first published).

        `kid` defaults to the key's kid; ``kid=None`` omits the header.
        """
        signer = key if key is not None else self._default_key()
        payload = claims if claims is not None else self.claims()
        header: dict[str, Any] = {}
        kid_value = signer.kid if isinstance(kid, _Default) else kid
        if kid_value is not None:
            header["kid"] = kid_value
        header.update(headers or {})
        return jwt.encode(payload, signer.private_key, algorithm=alg or signer.alg, headers=header)

    def mint_none(self, claims: dict[str, Any] | None = None) -> str:
        """An unsigned ``alg: none`` token (empty signature segment)."""
        header = {"alg": "none", "typ": "JWT", "kid": self._default_key().kid}
        payload = claims if claims is not None else self.claims()
        return f"{_json_segment(header)}.{_json_segment(payload)}."

    def mint_hs256_with_public_key(
        self, claims: dict[str, Any] | None = None, key: SigningKey | None = None
    ) -> str:
        """Key confusion: HS256 keyed with the PEM of `key`'s public key."""
        target = key if key is not None else self._default_key()
        header = {"alg": "HS256", "typ": "JWT", "kid": target.kid}
        payload = claims if claims is not None else self.claims()
        signing_input = f"{_json_segment(header)}.{_json_segment(payload)}"
        mac = hmac.new(target.public_pem(), signing_input.encode("ascii"), hashlib.sha256)
        return f"{signing_input}.{b64url(mac.digest())}"

    @staticmethod
    def tamper(token: str, claim: str = "repository", value: Any = "evil/app") -> str:
        """Change one payload claim, keeping the original header and signature."""
        header, payload, signature = token.split(".")
        claims = json.loads(b64url_decode(payload))
        claims[claim] = value
        return f"{header}.{_json_segment(claims)}.{signature}"
