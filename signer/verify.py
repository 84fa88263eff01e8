"""Offline signature verification, the same checks a stock tool makes.

ECDSA (DER) over the digest, RSA-PSS with salt = hash length and MGF1 of the
same hash, or RSASSA-PKCS1-v1_5, all over a precomputed digest.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from signer.algorithms import HASH_SIZES
from signer.errors import InvalidArgumentError

__all__ = ["verify_digest"]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def verify_digest(
    public_key: PublicKeyTypes,
    hash_name: str,
    digest: bytes,
    signature: bytes,
    scheme: str = "auto",
) -> str:
    """Return the scheme that verifies (`ecdsa`, `pss`, `pkcs1`); raise InvalidSignature."""
    if hash_name not in _HASHES or len(digest) != HASH_SIZES[hash_name]:
        raise InvalidArgumentError(
            f"a {hash_name} digest of {HASH_SIZES.get(hash_name)} bytes is needed"
        )
    h = _HASHES[hash_name]()
    pre = utils.Prehashed(h)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        public_key.verify(signature, digest, ec.ECDSA(pre))
        return "ecdsa"
    if isinstance(public_key, rsa.RSAPublicKey):
        tries = ["pss", "pkcs1"] if scheme == "auto" else [scheme]
        for s in tries:
            pad = (
                padding.PSS(padding.MGF1(_HASHES[hash_name]()), h.digest_size)
                if s == "pss"
                else padding.PKCS1v15()
            )
            try:
                public_key.verify(signature, digest, pad, pre)
                return s
            except InvalidSignature:
                continue
        raise InvalidSignature
    raise InvalidArgumentError("only ECDSA and RSA public keys verify digest signatures")
