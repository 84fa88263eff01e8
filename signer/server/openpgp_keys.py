"""The OpenPGP facts the token keeps beside a signing key, as private data objects
labelled with the key's name (docs/architecture.md §10):

- its creation time, fixed once and never changed: it is hashed into the key's
  OpenPGP fingerprint, so a second one would be a second OpenPGP key. It is
  fixed when the key is generated, in the same transaction as the
  `key.generated` entry that records it (`signer.server.admin.generate_key`);
  a key generated before that, or a token restored without its data objects,
  gets one only from `signer keys openpgp-created --set`, an audit-logged
  admin step on the token (`set_creation_time`). The server never writes it,
  and never takes it from the database: whoever owns the database could
  otherwise choose a key's fingerprint. Two different times beside one key
  are refused, not chosen between;
- its certificate, once `signer keys openpgp` made one (a user ID and its
  self-signature, approved by the officers). A new one is written before the old
  is removed, so a crash between leaves two and the newer self-signature wins:
  nothing is lost.
"""

from __future__ import annotations

from signer import pgp
from signer.algorithms import KeyAlgorithm
from signer.errors import TokenError
from signer.token.hsm import Token

__all__ = [
    "MAX_TIME",
    "can_openpgp",
    "certificate",
    "certified_time",
    "creation_time",
    "set_creation_time",
    "store_certificate",
]

CREATED = "signer openpgp creation time"
CERTIFICATE = "signer openpgp certificate"
MAX_TIME = 0xFFFFFFFF  # a v4 key's creation time is four octets


def can_openpgp(algorithm: KeyAlgorithm) -> bool:
    """Whether OpenPGP signatures can be made with keys of this algorithm: RSASSA-PKCS1-v1_5
    or ECDSA (gpg and sq refuse RSA-PSS; ed25519 keys here sign messages, not digests)."""
    return algorithm.scheme in ("pkcs1", "ecdsa")


def creation_time(token: Token, name: str) -> int | None:
    """Key `name`'s OpenPGP creation time, None if the token keeps none. TokenError if what
    it keeps is not a time, or is two different times."""
    times = set()
    for v in token.key_data(CREATED, name):
        if not v.isdigit() or len(v) > 10 or not 0 < int(v) <= MAX_TIME:
            raise TokenError(f"the OpenPGP creation time kept beside key {name!r} is not a time")
        times.add(int(v))
    if len(times) > 1:
        raise TokenError(
            f"the token keeps {len(times)} different OpenPGP creation times beside key "
            f"{name!r} ({', '.join(map(str, sorted(times)))}): remove the wrong one with "
            "`signer keys openpgp-created --remove T`; OpenPGP is refused for the key until then"
        )
    return times.pop() if times else None


def set_creation_time(token: Token, name: str, created: int) -> None:
    """Keep `created` as the creation time of key `name`, just generated: any left by an
    earlier key of the same name is removed first (a crash between leaves none, never
    two)."""
    if not 0 < created <= MAX_TIME:
        raise ValueError(f"an OpenPGP creation time is 1..{MAX_TIME}, not {created}")
    value = str(created).encode()
    for v in token.key_data(CREATED, name):
        if v != value:
            token.remove_key_data(CREATED, name, v)
    if value not in token.key_data(CREATED, name):
        token.add_key_data(CREATED, name, value)


def certified_time(token: Token, name: str, public_key_pem: str) -> int | None:
    """The creation time in the certificate the token keeps for this key, if any: a
    time given by hand must be that one, or the published fingerprint changes."""
    try:
        cert = certificate(token, name, public_key_pem)
    except TokenError:
        return None
    return pgp.parse_certificate(cert).created if cert else None


def certificate(token: Token, name: str, public_key_pem: str) -> bytes:
    """Key `name`'s OpenPGP certificate (of this public key: one left from an earlier key
    of the same name is not), the newest if two are kept; b"" if none."""
    found = []
    for cert in token.key_data(CERTIFICATE, name):
        try:
            parsed = pgp.parse_certificate(cert)
            own = pgp.public_key_body(public_key_pem, parsed.created)
        except ValueError:
            raise TokenError(
                f"the OpenPGP certificate kept beside key {name!r} is unreadable"
            ) from None
        if own == parsed.key_body:
            found.append((parsed.hashed.created, cert))
    return max(found)[1] if found else b""


def store_certificate(token: Token, name: str, cert: bytes) -> None:
    """Keep `cert` as key `name`'s certificate: written first, then the others removed."""
    token.replace_key_data(CERTIFICATE, name, cert)
