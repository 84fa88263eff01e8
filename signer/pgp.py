"""OpenPGP v4 signatures built around a digest the HSM signs (RFC 4880, whose section
numbers are cited; RFC 9580 §5.2 for v4 signatures).

Bytes in, bytes out: public-key packets and fingerprints, the hashed part of a
signature and the digest over it, signature packets from the HSM's signature (DER
ECDSA, or raw RSASSA-PKCS1-v1_5 whose DigestInfo the HSM builds), certificates,
ASCII armor and cleartext signed messages (apt's InRelease). No I/O, no private
keys.

A signature's digest is H(signed data || hashed part || 0x04 0xFF || len32(hashed
part)), so a requester who hashes its own file also sends the hashed part, and
the server finishes the hash over it (`signer.sha2`). The security rule: the
server signs such a digest only after `Hashed.parse` accepted that hashed part and
it finished the hash with that trailer itself. The parser is strict: a v4 document
signature (binary 0x00 or canonical text 0x01) with a known hash, exactly a
signature creation time (2) and an issuer fingerprint (33), each once, in the
form and order this module writes them (`Hashed.parse(data).encode() == data`),
so the signature packet built from it carries the very bytes that were hashed.
The caller then compares the issuer, algorithms and time with the key's.

Hashed subpackets written (all non-critical): signature creation time (2),
issuer fingerprint (33); on self-signatures also key flags (27) and preferred
hash algorithms (21). Unhashed: issuer key ID (16).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any, Protocol, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from signer.algorithms import HASH_SIZES

__all__ = [
    "ARMOR_KINDS",
    "BINARY",
    "ECDSA",
    "HASH_IDS",
    "POSITIVE_CERTIFICATION",
    "RSA",
    "TEXT",
    "Certificate",
    "Hashed",
    "Hasher",
    "PgpFormatError",
    "Signature",
    "armor",
    "canonical_text",
    "certificate",
    "certification_digest",
    "clearsign",
    "cleartext_digest",
    "cleartext_text",
    "document_digest",
    "fingerprint",
    "finish",
    "key_id",
    "packet",
    "parse_certificate",
    "parse_signature_packet",
    "public_key_body",
    "public_key_of",
    "read_packets",
    "signature_packet",
    "start",
    "unarmor",
    "user_id_packet",
    "verify_signature",
]

BINARY, TEXT, POSITIVE_CERTIFICATION = 0x00, 0x01, 0x13  # signature types (§5.2.1)
RSA, ECDSA = 1, 19  # public-key algorithms (§9.1)
HASH_IDS: dict[str, int] = {"sha256": 8, "sha384": 9, "sha512": 10}  # §9.4
ARMOR_KINDS = ("PUBLIC KEY BLOCK", "SIGNATURE")

_HASH_NAMES = {v: k for k, v in HASH_IDS.items()}
_SIG_TYPES = (BINARY, TEXT, POSITIVE_CERTIFICATION)
_DOCUMENT_TYPES = (BINARY, TEXT)
_CURVES: dict[str, bytes] = {  # curve -> OID (RFC 6637 §11)
    "secp256r1": bytes.fromhex("2A8648CE3D030107"),
    "secp384r1": bytes.fromhex("2B81040022"),
}
_MIN_RSA_BITS = 2048
_SUPPORTED_KEYS = f"RSA ({_MIN_RSA_BITS} bits or more), ECDSA P-256 or ECDSA P-384"

# Subpacket types.
_CREATED, _ISSUER_KEY_ID, _PREFERRED_HASHES, _KEY_FLAGS, _ISSUER_FPR = 2, 16, 21, 27, 33
_SUBPACKET_NAMES = {
    _CREATED: "signature creation time",
    _ISSUER_FPR: "issuer fingerprint",
    _ISSUER_KEY_ID: "issuer key ID",
    _KEY_FLAGS: "key flags",
    _PREFERRED_HASHES: "preferred hash algorithms",
}
_DOCUMENT_SUBPACKETS = (_CREATED, _ISSUER_FPR)  # what a document signature's hashed part holds
_CERTIFICATION_SUBPACKETS = (_CREATED, _ISSUER_FPR, _KEY_FLAGS, _PREFERRED_HASHES)

_ARMOR_LINE = 64
_CRC24_INIT, _CRC24_POLY = 0xB704CE, 0x1864CFB
_HEADER = re.compile(r"[A-Za-z][A-Za-z0-9-]*: .*\Z")


class PgpFormatError(ValueError):
    """Bytes or text that are not the OpenPGP this module reads; the message says what."""


class Hasher(Protocol):
    """What `hashlib.new` returns, as far as this module uses it."""

    @property
    def name(self) -> str: ...

    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...

    def copy(self) -> Self: ...


def _subpacket_name(kind: int) -> str:
    return f"subpacket {kind} ({_SUBPACKET_NAMES.get(kind, 'unknown')})"


def _mpi(n: int) -> bytes:
    """A multiprecision integer: 2-byte bit count, then the big-endian bytes (§3.2)."""
    return struct.pack(">H", n.bit_length()) + n.to_bytes((n.bit_length() + 7) // 8, "big")


# Public keys.


def public_key_body(public_key_pem: str, created: int) -> bytes:
    """The body of a v4 public-key packet (§5.5.2) for a PEM public key created at
    `created` (seconds since the epoch): RSA with MPIs n, e, or ECDSA with the curve
    OID and the uncompressed point (RFC 6637 §9). ValueError for other keys."""
    _check_time(created, "key creation time")
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
    except ValueError:
        raise ValueError("not a PEM public key") from None
    head = struct.pack(">BI", 4, created)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= _MIN_RSA_BITS:
        numbers = key.public_numbers()
        return head + bytes([RSA]) + _mpi(numbers.n) + _mpi(numbers.e)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVES:
        oid = _CURVES[key.curve.name]
        point = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return head + bytes([ECDSA, len(oid)]) + oid + _mpi(int.from_bytes(point, "big"))
    raise ValueError(f"OpenPGP keys here are {_SUPPORTED_KEYS}; not this {_describe(key)}")


def _describe(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"{key.key_size}-bit RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"{key.curve.name} key"
    return type(key).__name__.removeprefix("_")


def _key_material(body: bytes) -> bytes:
    """0x99 || len16 || body: how a key is hashed for its fingerprint and certifications."""
    if len(body) > 0xFFFF:
        raise ValueError("a public-key packet body is at most 65535 bytes")
    return b"\x99" + struct.pack(">H", len(body)) + body


def fingerprint(body: bytes) -> bytes:
    """The v4 fingerprint of a public-key packet body: 20 bytes (§12.2)."""
    # SHA-1 is what a v4 fingerprint is; nothing else here uses it.
    return hashlib.sha1(_key_material(body)).digest()  # noqa: S324


def key_id(body: bytes) -> bytes:
    """The key ID: the fingerprint's last 8 bytes."""
    return fingerprint(body)[-8:]


# The hashed part of a signature.


def _check_time(t: int, what: str) -> None:
    if not 0 <= t <= 0xFFFFFFFF:
        raise ValueError(f"{what} {t} is not a 32-bit count of seconds")


def _subpacket(kind: int, data: bytes) -> bytes:
    """One subpacket, its length in the shortest form (§5.2.3.1); never critical."""
    n = len(data) + 1
    if n < 192:
        length = bytes([n])
    elif n < 8384:
        length = bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    else:
        length = b"\xff" + struct.pack(">I", n)
    return length + bytes([kind]) + data


@dataclass(frozen=True)
class Hashed:
    """The hashed part of a v4 signature: what it is, by whom, when, and with what hash.

    `key_flags` (27, e.g. 0x03 certify + sign) and `preferred_hashes` (21) are for
    self-signatures (type 0x13) only.
    """

    sig_type: int
    pubkey_algorithm: int
    hash_algorithm: str
    created: int
    issuer_fingerprint: bytes
    key_flags: int | None = None
    preferred_hashes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.sig_type not in _SIG_TYPES:
            raise ValueError(
                f"signature type {self.sig_type:#04x} is not binary (0x00), canonical "
                "text (0x01) or positive certification (0x13)"
            )
        if self.pubkey_algorithm not in (RSA, ECDSA):
            raise ValueError(f"public-key algorithm {self.pubkey_algorithm} is not RSA or ECDSA")
        for name in (self.hash_algorithm, *self.preferred_hashes):
            if name not in HASH_IDS:
                raise ValueError(f"hash {name!r} is not {', '.join(HASH_IDS)}")
        _check_time(self.created, "signature creation time")
        if len(self.issuer_fingerprint) != 20:
            raise ValueError("the issuer fingerprint is 20 bytes (a v4 fingerprint)")
        if self.sig_type != POSITIVE_CERTIFICATION and (
            self.key_flags is not None or self.preferred_hashes
        ):
            raise ValueError("key flags and preferred hashes belong on self-signatures (0x13)")
        if self.key_flags is not None and not 0 <= self.key_flags <= 0xFF:
            raise ValueError("key flags are one byte here")

    def _subpackets(self) -> bytes:
        out = _subpacket(_CREATED, struct.pack(">I", self.created))
        out += _subpacket(_ISSUER_FPR, b"\x04" + self.issuer_fingerprint)
        if self.key_flags is not None:
            out += _subpacket(_KEY_FLAGS, bytes([self.key_flags]))
        if self.preferred_hashes:
            out += _subpacket(_PREFERRED_HASHES, bytes(HASH_IDS[h] for h in self.preferred_hashes))
        return out

    def encode(self) -> bytes:
        """The hashed part as it appears in the signature packet: version 4, type, public-key
        algorithm, hash algorithm, len16(subpackets), subpackets (§5.2.3)."""
        subpackets = self._subpackets()
        return (
            bytes([4, self.sig_type, self.pubkey_algorithm, HASH_IDS[self.hash_algorithm]])
            + struct.pack(">H", len(subpackets))
            + subpackets
        )

    def trailer(self) -> bytes:
        """What is hashed after the signed data: the hashed part, 0x04 0xFF, len32 of it."""
        encoded = self.encode()
        return encoded + b"\x04\xff" + struct.pack(">I", len(encoded))

    @classmethod
    def parse(cls, data: bytes, *, certification: bool = False) -> Hashed:
        """A document signature's hashed part, strictly (see the module docstring), or with
        `certification` a self-signature's as this module writes it (positive
        certification 0x13 with creation time, issuer fingerprint, key flags and preferred
        hashes); PgpFormatError saying what is wrong with anything else."""
        if len(data) < 6:
            raise PgpFormatError(f"the hashed part is {len(data)} bytes; it starts with 6")
        version, sig_type, pk, hash_id, size = struct.unpack(">BBBBH", data[:6])
        if version != 4:
            raise PgpFormatError(f"signature version {version}; only version 4 is accepted")
        if certification and sig_type != POSITIVE_CERTIFICATION:
            raise PgpFormatError(
                f"signature type {sig_type:#04x} is not a positive certification (0x13)"
            )
        if not certification and sig_type not in _DOCUMENT_TYPES:
            raise PgpFormatError(
                f"signature type {sig_type:#04x} is not a document signature "
                "(0x00 binary or 0x01 canonical text)"
            )
        if pk not in (RSA, ECDSA):
            raise PgpFormatError(f"public-key algorithm {pk} is not RSA (1) or ECDSA (19)")
        if hash_id not in _HASH_NAMES:
            raise PgpFormatError(
                f"hash algorithm {hash_id} is not SHA-256 (8), SHA-384 (9) or SHA-512 (10)"
            )
        if 6 + size > len(data):
            raise PgpFormatError(
                f"the hashed subpackets are said to be {size} bytes but {len(data) - 6} follow"
            )
        if 6 + size < len(data):
            raise PgpFormatError(f"{len(data) - 6 - size} trailing bytes after the hashed part")
        kinds = _CERTIFICATION_SUBPACKETS if certification else _DOCUMENT_SUBPACKETS
        found = _subpackets_of(data[6:], kinds)
        created, fpr = found[_CREATED], found[_ISSUER_FPR]
        if len(created) != 4:
            raise PgpFormatError(f"the signature creation time is {len(created)} bytes, not 4")
        if len(fpr) != 21 or fpr[0] != 4:
            raise PgpFormatError(
                "the issuer fingerprint must be version 4 and 20 bytes "
                f"(got {len(fpr)} bytes, version {fpr[:1].hex() or 'none'})"
            )
        extra: dict[str, Any] = {}
        if certification:
            flags, prefs = found[_KEY_FLAGS], found[_PREFERRED_HASHES]
            if len(flags) != 1 or not prefs or any(h not in _HASH_NAMES for h in prefs):
                raise PgpFormatError(
                    "the key flags must be one byte and the preferred hashes SHA-256, SHA-384 "
                    "or SHA-512"
                )
            extra = {
                "key_flags": flags[0],
                "preferred_hashes": tuple(_HASH_NAMES[h] for h in prefs),
            }
        hashed = cls(
            sig_type, pk, _HASH_NAMES[hash_id], struct.unpack(">I", created)[0], fpr[1:], **extra
        )
        if hashed.encode() != data:  # unreachable if the checks above are complete
            raise PgpFormatError("the hashed part is not in the form this module writes")
        return hashed


def _subpackets_of(area: bytes, kinds: tuple[int, ...]) -> dict[int, bytes]:
    """The subpackets `kinds`, each once, in that order, shortest lengths, nothing else."""
    found: dict[int, bytes] = {}
    at = 0
    while at < len(area):
        start = at
        first = area[at]
        if first < 192:
            n, at = first, at + 1
        elif first < 255:
            if at + 2 > len(area):
                raise PgpFormatError(f"a subpacket length at offset {start} is cut off")
            n, at = ((first - 192) << 8) + area[at + 1] + 192, at + 2
        else:
            if at + 5 > len(area):
                raise PgpFormatError(f"a subpacket length at offset {start} is cut off")
            n, at = struct.unpack(">I", area[at + 1 : at + 5])[0], at + 5
        if n == 0:
            raise PgpFormatError(f"the subpacket at offset {start} has length 0")
        if at + n > len(area):
            raise PgpFormatError(
                f"the subpacket at offset {start} is said to be {n} bytes but "
                f"{len(area) - at} remain"
            )
        kind, body = area[at], area[at + 1 : at + n]
        at += n
        if kind & 0x80:
            raise PgpFormatError(
                f"{_subpacket_name(kind & 0x7F)} is marked critical; it is written non-critical"
            )
        if kind not in kinds:
            what = "self-signature" if kinds == _CERTIFICATION_SUBPACKETS else "document signature"
            allowed = ", ".join(f"{_SUBPACKET_NAMES[k]} ({k})" for k in kinds)
            raise PgpFormatError(
                f"{_subpacket_name(kind)} is not accepted in a {what}'s hashed part; "
                f"only {allowed} are"
            )
        if kind in found:
            raise PgpFormatError(f"{_subpacket_name(kind)} appears more than once")
        if len(_subpacket(kind, body)) != at - start:
            raise PgpFormatError(
                f"{_subpacket_name(kind)} has a {at - start - n}-byte length where the "
                "shortest form is required"
            )
        if any(kinds.index(k) > kinds.index(kind) for k in found):
            order = ", ".join(f"{_SUBPACKET_NAMES[k]} ({k})" for k in kinds)
            raise PgpFormatError(f"the hashed subpackets must come in the order {order}")
        found[kind] = body
    for kind in kinds:
        if kind not in found:
            raise PgpFormatError(f"no {_subpacket_name(kind)} in the hashed part")
    return found


# Digests the HSM signs.


def canonical_text(data: bytes) -> bytes:
    """A canonical text document (type 0x01, §5.2.1): LF line endings made CR LF.
    ValueError for a lone CR, which GnuPG hashes as is and Sequoia as a line ending."""
    _refuse_lone_cr(data)
    return re.sub(rb"\r?\n", b"\r\n", data)


def _refuse_lone_cr(data: bytes) -> None:
    if re.search(rb"\r(?!\n)", data):
        raise ValueError("text with a CR that ends no line is read differently by verifiers")


def cleartext_text(text: bytes) -> bytes:
    """The text a cleartext signature signs (§7.1): the lines of `text` without trailing
    spaces and tabs, joined by CR LF; a final line ending is not part of it.
    ValueError for a lone CR (see `canonical_text`)."""
    _refuse_lone_cr(text)
    return b"\r\n".join(_cleartext_lines(text))


def _cleartext_lines(text: bytes) -> list[bytes]:
    text = text.replace(b"\r\n", b"\n")
    return [line.rstrip(b" \t") for line in text.removesuffix(b"\n").split(b"\n")]


def start(hash_name: str) -> Hasher:
    """A hash to feed a binary document in chunks, then to `finish`."""
    if hash_name not in HASH_IDS:
        raise ValueError(f"hash {hash_name!r} is not {', '.join(HASH_IDS)}")
    return hashlib.new(hash_name)


def finish(h: Hasher, hashed: Hashed) -> bytes:
    """The digest to sign: `h` (the document so far, left unchanged) then the trailer.
    Binary signatures only: text must be canonical as a whole (`document_digest`)."""
    if hashed.sig_type != BINARY:
        raise ValueError("finish makes binary (0x00) signatures; hash text with document_digest")
    if h.name != hashed.hash_algorithm:
        raise ValueError(
            f"the data was hashed with {h.name}, the signature says {hashed.hash_algorithm}"
        )
    h = h.copy()
    h.update(hashed.trailer())
    return h.digest()


def document_digest(data: bytes, hashed: Hashed) -> bytes:
    """The digest to sign for a document signature over `data` (binary as is, canonical
    text after `canonical_text`)."""
    if hashed.sig_type == TEXT:
        data = canonical_text(data)
    elif hashed.sig_type != BINARY:
        raise ValueError(f"signature type {hashed.sig_type:#04x} is not a document signature")
    return hashlib.new(hashed.hash_algorithm, data + hashed.trailer()).digest()


def cleartext_digest(text: bytes, hashed: Hashed) -> bytes:
    """The digest to sign for `clearsign(text, ...)`: a canonical text (0x01) signature
    over `cleartext_text(text)`."""
    if hashed.sig_type != TEXT:
        raise ValueError("a cleartext signature is a canonical text (0x01) signature")
    return document_digest(cleartext_text(text), hashed)


def certification_digest(key_body: bytes, uid: str, hashed: Hashed) -> bytes:
    """The digest to sign for a positive certification (self-signature) of `uid` on the
    key: H(0x99 || len16 || key || 0xB4 || len32 || uid || trailer) (§5.2.4)."""
    if hashed.sig_type != POSITIVE_CERTIFICATION:
        raise ValueError("a certification is a positive certification (0x13) here")
    raw = _uid_bytes(uid)
    data = _key_material(key_body) + b"\xb4" + struct.pack(">I", len(raw)) + raw
    return hashlib.new(hashed.hash_algorithm, data + hashed.trailer()).digest()


# Packets.


def packet(tag: int, body: bytes) -> bytes:
    """A packet with a new-format header (§4.2.2): 1-, 2- or 5-byte length."""
    if not 0 < tag < 64:
        raise ValueError(f"packet tag {tag} is not 1-63")
    n = len(body)
    if n < 192:
        length = bytes([n])
    elif n < 8384:
        length = bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    elif n <= 0xFFFFFFFF:
        length = b"\xff" + struct.pack(">I", n)
    else:
        raise ValueError("a packet body is at most 2**32 - 1 bytes")
    return bytes([0xC0 | tag]) + length + body


def read_packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each packet, old- or new-format headers, no partial lengths;
    PgpFormatError if the bytes are not a whole number of such packets."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        first = data[at]
        if not first & 0x80:
            raise PgpFormatError(f"byte {at} is not a packet header")
        if first & 0x40:
            tag, at = first & 0x3F, at + 1
            if at >= len(data):
                raise PgpFormatError("a packet length is cut off")
            o = data[at]
            if o < 192:
                n, at = o, at + 1
            elif o < 224:
                if at + 2 > len(data):
                    raise PgpFormatError("a packet length is cut off")
                n, at = ((o - 192) << 8) + data[at + 1] + 192, at + 2
            elif o == 255:
                if at + 5 > len(data):
                    raise PgpFormatError("a packet length is cut off")
                n, at = struct.unpack(">I", data[at + 1 : at + 5])[0], at + 5
            else:
                raise PgpFormatError("partial body lengths are not read here")
        else:
            tag, kind, at = (first >> 2) & 0x0F, first & 0x03, at + 1
            if kind == 3:
                raise PgpFormatError("indeterminate packet lengths are not read here")
            width = (1, 2, 4)[kind]
            if at + width > len(data):
                raise PgpFormatError("a packet length is cut off")
            n, at = int.from_bytes(data[at : at + width], "big"), at + width
        if at + n > len(data):
            raise PgpFormatError(
                f"a tag-{tag} packet is said to be {n} bytes but {len(data) - at} remain"
            )
        out.append((tag, data[at : at + n]))
        at += n
    return out


def _uid_bytes(uid: str) -> bytes:
    if not uid or any(c in uid for c in "\r\n\0"):
        raise ValueError("a user ID is one non-empty line")
    return uid.encode("utf-8")


def user_id_packet(uid: str) -> bytes:
    """A user ID packet (tag 13): the UTF-8 user ID, e.g. `Release <rel@example.org>`."""
    return packet(13, _uid_bytes(uid))


def signature_packet(hashed: Hashed, digest: bytes, signature: bytes) -> bytes:
    """The signature packet (tag 2) for the HSM's `signature` over `digest`: the hashed
    part, the issuer key ID unhashed (16), the digest's left 16 bits, then the MPIs
    (RSA: the signature as one integer; ECDSA: r and s from the DER signature)."""
    if len(digest) != HASH_SIZES[hashed.hash_algorithm]:
        raise ValueError(f"the digest is {len(digest)} bytes; {hashed.hash_algorithm} is not")
    if hashed.pubkey_algorithm == RSA:
        value = int.from_bytes(signature, "big")
        if not value:
            raise ValueError("an RSA signature of zero")
        mpis = _mpi(value)
    else:
        try:
            r, s = decode_dss_signature(signature)
        except ValueError:
            raise ValueError("the ECDSA signature is not DER (SEQUENCE of r, s)") from None
        mpis = _mpi(r) + _mpi(s)
    unhashed = _subpacket(_ISSUER_KEY_ID, hashed.issuer_fingerprint[-8:])
    body = hashed.encode() + struct.pack(">H", len(unhashed)) + unhashed + digest[:2] + mpis
    return packet(2, body)


@dataclass(frozen=True)
class Signature:
    """A v4 signature packet's parts, as read by `parse_signature_packet`."""

    hashed: bytes  # the hashed part, exactly as in the packet (what `Hashed.parse` reads)
    unhashed: bytes  # the unhashed subpacket area
    left16: bytes
    mpis: tuple[int, ...]

    def encode(self) -> bytes:
        """The signature packet (new-format header) these parts make."""
        mpis = b"".join(_mpi(m) for m in self.mpis)
        unhashed = struct.pack(">H", len(self.unhashed)) + self.unhashed
        return packet(2, self.hashed + unhashed + self.left16 + mpis)


def parse_signature_packet(data: bytes) -> Signature:
    """The parts of one v4 RSA or ECDSA signature packet; PgpFormatError otherwise."""
    packets = read_packets(data)
    if len(packets) != 1 or packets[0][0] != 2:
        raise PgpFormatError("not exactly one signature packet")
    body = packets[0][1]
    if len(body) < 6 or body[0] != 4:
        raise PgpFormatError("not a v4 signature packet")
    end = 6 + struct.unpack(">H", body[4:6])[0]
    if end + 2 > len(body):
        raise PgpFormatError("the hashed subpackets run past the packet")
    hashed, n = body[:end], struct.unpack(">H", body[end : end + 2])[0]
    unhashed, at = body[end + 2 : end + 2 + n], end + 2 + n
    left16, at = body[at : at + 2], at + 2
    mpis: list[int] = []
    while at < len(body):
        if at + 2 > len(body):
            raise PgpFormatError("an MPI length is cut off")
        size = (struct.unpack(">H", body[at : at + 2])[0] + 7) // 8
        if at + 2 + size > len(body):
            raise PgpFormatError("an MPI runs past the packet")
        mpis.append(int.from_bytes(body[at + 2 : at + 2 + size], "big"))
        at += 2 + size
    if len(left16) != 2 or len(mpis) != {RSA: 1, ECDSA: 2}.get(body[2]):
        raise PgpFormatError("not an RSA (one MPI) or ECDSA (two MPIs) signature")
    return Signature(hashed, unhashed, left16, tuple(mpis))


def certificate(key_body: bytes, uid: str, self_signature: bytes) -> bytes:
    """A transferable public key (§11.1): public-key packet (tag 6), user ID packet
    (tag 13), then its self-signature packet."""
    if [tag for tag, _ in read_packets(self_signature)] != [2]:
        raise ValueError("the self-signature is one signature packet")
    return packet(6, key_body) + user_id_packet(uid) + self_signature


@dataclass(frozen=True)
class Certificate:
    """A certificate as `certificate` writes it, read back by `parse_certificate`."""

    key_body: bytes
    uid: str
    signature: Signature
    hashed: Hashed

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.key_body)

    @property
    def created(self) -> int:
        """The key's creation time."""
        return int.from_bytes(self.key_body[1:5], "big")


def parse_certificate(data: bytes) -> Certificate:
    """A transferable public key of exactly a v4 public-key packet, one user ID and its
    self-signature by that key (checked by `verify_signature`, not here); PgpFormatError
    for anything else."""
    packets = read_packets(data)
    if [tag for tag, _ in packets] != [6, 13, 2]:
        raise PgpFormatError("not a public key, one user ID and its self-signature")
    (_, body), (_, raw_uid), (_, sig_body) = packets
    if len(body) < 6 or body[0] != 4:
        raise PgpFormatError("not a version 4 public key")
    try:
        uid = raw_uid.decode("utf-8")
        _uid_bytes(uid)
    except ValueError:
        raise PgpFormatError("the user ID is not one line of UTF-8") from None
    signature = parse_signature_packet(packet(2, sig_body))
    hashed = Hashed.parse(signature.hashed, certification=True)
    if hashed.issuer_fingerprint != fingerprint(body):
        raise PgpFormatError("the self-signature names another key as its issuer")
    if signature.unhashed != _subpacket(_ISSUER_KEY_ID, hashed.issuer_fingerprint[-8:]):
        raise PgpFormatError("the self-signature's unhashed area is not just its issuer key ID")
    if certificate(body, uid, signature.encode()) != data:
        raise PgpFormatError("the certificate is not in the form this module writes")
    return Certificate(body, uid, signature, hashed)


def public_key_of(key_body: bytes) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """The public key in a v4 public-key packet body this module writes."""
    if len(key_body) < 6 or key_body[0] != 4:
        raise PgpFormatError("not a version 4 public key")
    material = key_body[6:]
    if key_body[5] == RSA:
        n, at = _read_mpi(material, 0)
        e, at = _read_mpi(material, at)
        if at != len(material):
            raise PgpFormatError("trailing bytes after the RSA public key")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if key_body[5] == ECDSA and material:
        size = material[0]
        oid = material[1 : 1 + size]
        curve = {v: k for k, v in _CURVES.items()}.get(oid)
        if curve is None:
            raise PgpFormatError("an ECDSA key on a curve other than P-256 or P-384")
        point, at = _read_mpi(material, 1 + size)
        if at != len(material):
            raise PgpFormatError("trailing bytes after the ECDSA public key")
        octets = point.to_bytes((point.bit_length() + 7) // 8, "big")
        curve_class = ec.SECP256R1 if curve == "secp256r1" else ec.SECP384R1
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve_class(), octets)
        except ValueError:
            raise PgpFormatError("the ECDSA public point is not on its curve") from None
    raise PgpFormatError(f"public-key algorithm {key_body[5]} is not RSA (1) or ECDSA (19)")


def _read_mpi(data: bytes, at: int) -> tuple[int, int]:
    if at + 2 > len(data):
        raise PgpFormatError("an MPI length is cut off")
    size = (struct.unpack(">H", data[at : at + 2])[0] + 7) // 8
    if at + 2 + size > len(data):
        raise PgpFormatError("an MPI runs past the packet")
    return int.from_bytes(data[at + 2 : at + 2 + size], "big"), at + 2 + size


def verify_signature(key_body: bytes, signature: Signature, digest: bytes) -> None:
    """Raise InvalidSignature unless `signature` (whose hashed part gave `digest`) is by the
    key in `key_body`: its left 16 bits and its MPIs, RSASSA-PKCS1-v1_5 or ECDSA."""
    hashed = Hashed.parse(signature.hashed, certification=signature.hashed[1] == 0x13)
    key = public_key_of(key_body)
    if signature.left16 != digest[:2]:
        raise InvalidSignature("the signature's left 16 bits are not the digest's")
    chosen = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
    pre = Prehashed(chosen[hashed.hash_algorithm])
    if isinstance(key, rsa.RSAPublicKey):
        if hashed.pubkey_algorithm != RSA or len(signature.mpis) != 1:
            raise InvalidSignature("not an RSA signature")
        value = signature.mpis[0]
        if value.bit_length() > key.key_size:
            raise InvalidSignature("the RSA signature is larger than the key's modulus")
        key.verify(value.to_bytes((key.key_size + 7) // 8, "big"), digest, padding.PKCS1v15(), pre)
    else:
        if hashed.pubkey_algorithm != ECDSA or len(signature.mpis) != 2:
            raise InvalidSignature("not an ECDSA signature")
        key.verify(encode_dss_signature(*signature.mpis), digest, ec.ECDSA(pre))


# Armor and cleartext signatures.


def _crc24(data: bytes) -> int:
    crc = _CRC24_INIT
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= _CRC24_POLY
    return crc & 0xFFFFFF


def armor(kind: str, data: bytes) -> str:
    """ASCII armor (§6.2) for "PUBLIC KEY BLOCK" or "SIGNATURE": no headers, base64 in
    64-character lines, the CRC-24 line."""
    if kind not in ARMOR_KINDS:
        raise ValueError(f"armor kind {kind!r} is not {' or '.join(ARMOR_KINDS)}")
    text = base64.b64encode(data).decode()
    lines = [text[i : i + _ARMOR_LINE] for i in range(0, len(text), _ARMOR_LINE)]
    crc = "=" + base64.b64encode(_crc24(data).to_bytes(3, "big")).decode()
    return "\n".join(
        [f"-----BEGIN PGP {kind}-----", "", *lines, crc, f"-----END PGP {kind}-----", ""]
    )


def unarmor(text: str) -> tuple[str, bytes]:
    """(kind, bytes) of one armored block; headers are skipped, the CRC-24 line is
    required and checked. PgpFormatError for anything else."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    begin = re.fullmatch(r"-----BEGIN PGP ([A-Z ]+)-----", lines[0] if lines else "")
    if not begin or begin[1] not in ARMOR_KINDS:
        raise PgpFormatError(f"no BEGIN PGP {' or '.join(ARMOR_KINDS)} line")
    kind = begin[1]
    if lines[-1] != f"-----END PGP {kind}-----":
        raise PgpFormatError(f"no END PGP {kind} line at the end")
    at = 1
    while at < len(lines) - 1 and _HEADER.match(lines[at]):
        at += 1
    if at >= len(lines) - 1 or lines[at]:
        raise PgpFormatError("no blank line after the armor headers")
    body = lines[at + 1 : -1]
    if not body or not body[-1].startswith("="):
        raise PgpFormatError("no CRC-24 checksum line")
    try:
        data = base64.b64decode("".join(body[:-1]), validate=True)
        crc = base64.b64decode(body[-1][1:], validate=True)
    except binascii.Error:
        raise PgpFormatError("the armor is not base64") from None
    if len(crc) != 3 or int.from_bytes(crc, "big") != _crc24(data):
        raise PgpFormatError("the armor's CRC-24 checksum does not match its data")
    return kind, data


def clearsign(text: bytes, signature: bytes) -> bytes:
    """A cleartext signed message (§7, apt's InRelease): the header with the signature's
    hash, the signed text (`cleartext_text`: trailing blanks dropped) dash-escaped with LF
    line endings, then the armored canonical text (0x01) signature packet over it (made
    from `cleartext_digest(text, ...)`)."""
    hashed = Hashed.parse(parse_signature_packet(signature).hashed)
    if hashed.sig_type != TEXT:
        raise ValueError("a cleartext signature is a canonical text (0x01) signature")
    _refuse_lone_cr(text)
    escaped = [b"- " + line if line.startswith(b"-") else line for line in _cleartext_lines(text)]
    head = f"-----BEGIN PGP SIGNED MESSAGE-----\nHash: {hashed.hash_algorithm.upper()}\n\n"
    return head.encode() + b"\n".join(escaped) + b"\n" + armor("SIGNATURE", signature).encode()
