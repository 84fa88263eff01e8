"""The token's key objects as this service makes, reads and signs with them.

Invariants upheld here (docs/architecture.md §3.1, §8):
- keys are generated (`Token.generate`) from these templates: SENSITIVE,
  EXTRACTABLE=false, PRIVATE and SIGN set explicitly and every other use off,
  nothing left to token defaults; there is no code path that imports or
  exports a private key;
- `SECURITY_ATTRIBUTES` is what a private key must have (`TokenKey.weaknesses`
  names what it breaks, and `Token.check_key` refuses such a key): sensitive,
  not extractable, private, always sensitive and never extractable, generated
  in the token (local), and able to do nothing but sign;
- a key's algorithm name is recorded in its CKA_ID (`algorithm_of`), so a key
  made for RSA-PSS is never used with PKCS#1 v1.5 and vice versa, and
  `sign_one` picks the mechanism from it;
- the public key is read from the token (`spki`); its key id is the hex SHA-256
  of that SubjectPublicKeyInfo.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pkcs11.exceptions as p11e
from asn1crypto.core import OctetString
from asn1crypto.keys import ECDomainParameters
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import MGF, Attribute, KeyType, Mechanism

from signer.algorithms import ALGORITHMS, DIGEST_INFO_PREFIX, HASH_SIZES, KeyAlgorithm
from signer.errors import TokenError

__all__ = [
    "ED25519_OID",
    "PRIVATE_TEMPLATE",
    "PUBLIC_TEMPLATE",
    "SECURITY_ATTRIBUTES",
    "TokenKey",
    "algorithm_of",
    "bool_attr",
    "sign_one",
    "spki",
]

ED25519_OID = "1.3.101.112"
_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
_HASH_MECH = {"sha256": Mechanism.SHA256, "sha384": Mechanism.SHA384, "sha512": Mechanism.SHA512}
_MGF = {"sha256": MGF.SHA256, "sha384": MGF.SHA384, "sha512": MGF.SHA512}

# The private-key template: exactly these, nothing left to token defaults.
PRIVATE_TEMPLATE: dict[Any, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
    Attribute.SIGN_RECOVER: False,
}
PUBLIC_TEMPLATE: dict[Any, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
    Attribute.DERIVE: False,
}

# Attribute name -> value a private key must have.
SECURITY_ATTRIBUTES: dict[str, tuple[Any, bool]] = {
    "sensitive": (Attribute.SENSITIVE, True),
    "extractable": (Attribute.EXTRACTABLE, False),
    "private": (Attribute.PRIVATE, True),
    "always_sensitive": (Attribute.ALWAYS_SENSITIVE, True),
    "never_extractable": (Attribute.NEVER_EXTRACTABLE, True),
    "local": (Attribute.LOCAL, True),
    "sign": (Attribute.SIGN, True),
    "decrypt": (Attribute.DECRYPT, False),
    "unwrap": (Attribute.UNWRAP, False),
    "derive": (Attribute.DERIVE, False),
}


@dataclass(frozen=True)
class TokenKey:
    """A key pair in the token, as seen from outside: never the private part."""

    name: str
    algorithm: KeyAlgorithm | None  # None: a key this service did not make
    spki_der: bytes
    attributes: dict[str, bool]

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the public key's SubjectPublicKeyInfo DER."""
        return hashlib.sha256(self.spki_der).hexdigest()

    @property
    def public_key_pem(self) -> str:
        key = serialization.load_der_public_key(self.spki_der)
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    @property
    def weaknesses(self) -> list[str]:
        """The security attributes that break invariant 1, as `name=value`."""
        return [
            f"{name}={str(self.attributes.get(name)).lower()}"
            for name, (_, want) in SECURITY_ATTRIBUTES.items()
            if self.attributes.get(name) is not want
        ]


def sign_one(priv: Any, algorithm: KeyAlgorithm, hash_name: str, digest: bytes) -> bytes:
    if algorithm.scheme == "ecdsa":
        raw = priv.sign(digest, mechanism=Mechanism.ECDSA)  # r || s
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
    if algorithm.scheme == "pss":
        param = (_HASH_MECH[hash_name], _MGF[hash_name], HASH_SIZES[hash_name])
        return bytes(priv.sign(digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=param))
    data = DIGEST_INFO_PREFIX[hash_name] + digest  # pkcs1
    return bytes(priv.sign(data, mechanism=Mechanism.RSA_PKCS))


def bool_attr(obj: Any, attr: Any) -> bool:
    try:
        return bool(obj[attr])
    except (p11e.AttributeTypeInvalid, p11e.AttributeSensitive):
        return False


def algorithm_of(priv: Any) -> KeyAlgorithm | None:
    try:
        raw = bytes(priv[Attribute.ID]).decode("ascii")
    except (p11e.AttributeTypeInvalid, UnicodeDecodeError):
        return None
    return ALGORITHMS.get(raw)


def spki(pub: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a PKCS#11 public key object."""
    key_type = pub[Attribute.KEY_TYPE]
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    if key_type == KeyType.RSA:
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
        e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
        public = rsa.RSAPublicNumbers(e, n).public_key()
    else:
        point = OctetString.load(bytes(pub[Attribute.EC_POINT])).native
        if key_type == KeyType.EC_EDWARDS:
            public = ed25519.Ed25519PublicKey.from_public_bytes(point)
        else:
            params = ECDomainParameters.load(bytes(pub[Attribute.EC_PARAMS]))
            curve = _CURVES.get(str(params.chosen.native))
            if curve is None:
                raise TokenError(f"unsupported EC curve {params.chosen.native}")
            public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
