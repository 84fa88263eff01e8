"""Signing algorithms and digest rules (docs/architecture.md §5).

A key's algorithm fixes how a digest is signed: ECDSA over the digest with a
DER-encoded result, RSA-PSS with salt = hash length and MGF1 of the same hash,
RSASSA-PKCS1-v1_5 over the DigestInfo, or Ed25519 over a message (audit
checkpoints only; an Ed25519 key never signs a bare digest).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALGORITHMS",
    "DIGEST_INFO_PREFIX",
    "HASH_SIZES",
    "KeyAlgorithm",
    "algorithm",
]

HASH_SIZES: dict[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64}

# DER DigestInfo prefixes (RFC 8017 §9.2 note 1).
DIGEST_INFO_PREFIX: dict[str, bytes] = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


@dataclass(frozen=True)
class KeyAlgorithm:
    """One key algorithm as named in config and on the CLI."""

    name: str
    family: str  # "ec", "rsa" or "ed25519"
    scheme: str  # "ecdsa", "pss", "pkcs1" or "eddsa"
    curve: str | None = None  # named curve for EC keys
    bits: int | None = None  # modulus size for RSA keys

    @property
    def default_hash(self) -> str:
        """The hash a digest is made with unless one is asked for: SHA-384 for P-384
        (the curve's own strength), SHA-256 for P-256 and RSA."""
        return "sha384" if self.curve == "secp384r1" else "sha256"

    @property
    def signs_digests(self) -> bool:
        """Whether this algorithm can sign a precomputed digest."""
        return self.scheme != "eddsa"


ALGORITHMS: dict[str, KeyAlgorithm] = {
    a.name: a
    for a in (
        KeyAlgorithm("ecdsa-p256", "ec", "ecdsa", curve="secp256r1"),
        KeyAlgorithm("ecdsa-p384", "ec", "ecdsa", curve="secp384r1"),
        KeyAlgorithm("rsa-pss-3072", "rsa", "pss", bits=3072),
        KeyAlgorithm("rsa-pss-4096", "rsa", "pss", bits=4096),
        KeyAlgorithm("rsa-pkcs1-3072", "rsa", "pkcs1", bits=3072),
        KeyAlgorithm("rsa-pkcs1-4096", "rsa", "pkcs1", bits=4096),
        KeyAlgorithm("ed25519", "ed25519", "eddsa"),
    )
}


def algorithm(name: str) -> KeyAlgorithm:
    """Look up an algorithm by name; KeyError names the choices."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(
            f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}"
        ) from None
