"""The OpenPGP facts the token keeps beside a signing key, as private data objects
labelled with the key's name (DESIGN §10):

- its creation time, fixed once and never changed: it is hashed into the key's
  OpenPGP fingerprint, so a second one would be a second OpenPGP key. The server
  fixes it when it first starts with the key (or `signer keys openpgp`, if that
  runs first), and records it in every `server.started` entry; a token restored
  without it gets the recorded time back, and one that disagrees with the record
  stops the start (`signer.server.app.settle_openpgp`); should two ever be
  written at once, the earliest is the key's;
- its certificate, once `signer keys openpgp` made one (a user ID and its
  self-signature, approved by the officers). A new one is written before the old
  is removed, so a crash between leaves two and the newer self-signature wins:
  nothing is lost.
"""

from __future__ import annotations

from signer import pgp
from signer.algorithms import KeyAlgorithm
from signer.errors import TokenError
from signer.store import Store
from signer.store.base import AuditFilter
from signer.token.hsm import Token

__all__ = ["can_openpgp", "certificate", "creation_time", "recorded_times", "store_certificate"]

CREATED = "signer openpgp creation time"
CERTIFICATE = "signer openpgp certificate"


def can_openpgp(algorithm: KeyAlgorithm) -> bool:
    """Whether OpenPGP signatures can be made with keys of this algorithm: RSASSA-PKCS1-v1_5
    or ECDSA (gpg and sq refuse RSA-PSS; ed25519 keys here sign messages, not digests)."""
    return algorithm.scheme in ("pkcs1", "ecdsa")


def creation_time(token: Token, name: str, fix_at: int | None = None) -> int | None:
    """Key `name`'s OpenPGP creation time; with `fix_at`, fixed at that time if there is
    none yet. TokenError if what the token keeps is not a time."""
    values = token.key_data(CREATED, name)
    if not values and fix_at is not None:
        token.add_key_data(CREATED, name, str(fix_at).encode())
        values = token.key_data(CREATED, name)
    times = []
    for v in values:
        if not v.isdigit() or len(v) > 10 or int(v) > 0xFFFFFFFF:
            raise TokenError(f"the OpenPGP creation time kept beside key {name!r} is not a time")
        times.append(int(v))
    return min(times) if times else None


def recorded_times(store: Store) -> dict[tuple[str, str], int]:
    """(key name, key id) -> the OpenPGP creation time the latest `server.started` entry
    that names that key recorded."""
    found: dict[tuple[str, str], int] = {}
    after = -1
    with store.transaction() as tx:
        while True:
            page = tx.list_audit(AuditFilter(event="server.started"), after, 200)
            for entry in page:
                keys = entry.details.get("keys")
                for name, k in keys.items() if isinstance(keys, dict) else ():
                    t = k.get("openpgp_created") if isinstance(k, dict) else None
                    if isinstance(t, int) and isinstance(k.get("key_id"), str):
                        found[(name, k["key_id"])] = t
            if len(page) < 200:
                return found
            after = page[-1].index


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
    kept = token.key_data(CERTIFICATE, name)
    if cert not in kept:
        token.add_key_data(CERTIFICATE, name, cert)
    for c in kept:
        if c != cert:
            token.remove_key_data(CERTIFICATE, name, c)
