"""`--format openpgp`: OpenPGP v4 signatures (RFC 4880), what gpg, gpgv, sq, apt, rpm,
Maven Central and git check; and the key's self-signature (`signer keys openpgp`).

An OpenPGP signature's digest is H(file || trailer), the trailer holding the
signature's hashed part (type, key, hash, creation time, issuer fingerprint). The
requester, who has the file, hashes it up to its last partial block and sends that
state (`signer.sha2`); the server checks the hashed part and finishes every hash
itself over the file's tail and that trailer, so whatever the requester hashed,
what the token signs is a document signature ending in the checked trailer, never
a certification, subkey binding or revocation, nor a bare digest. The payload
(canonical JSON):

    {"mode": "binary" | "armor" | "cleartext" | "certify",
     "key": hex(public-key packet body), "hashed": hex(hashed part),
     "artifacts": [{"name", "digest": hex H(file) (a claim), "state": hex midstate,
                    "length": bytes hashed into it, "tail": hex rest}]   (not certify)
     "uid": "Release <rel@example.org>"}                                  (certify only)

The server checks the hashed part strictly (`signer.pgp.Hashed.parse`): signature
type (binary 0x00 for detached, canonical text 0x01 for cleartext, positive
certification 0x13 for certify), the key's public-key algorithm, a hash the key
may use, issuer fingerprint equal to this key's OpenPGP fingerprint (its public
key and the creation time the token keeps), the signature's creation time within
`SKEW` of the server's clock and not before the key's. A certification's digest is
derived from the user ID and the key. Officers see those fields and each file's
digest labelled as the requester's claim (the server cannot see the file it is
of). The evidence bundle (`ARTIFACT.bundle.json` beside the first output) keeps the
payload, so `signer verify --bundle B --file F` recomputes the signed digest from
F and catches a false claim.

Output: `ARTIFACT.sig` (binary, `mode` binary: rpm, apt's Release.gpg),
`ARTIFACT.asc` (armored: Maven Central, git), or with `cleartext` the cleartext
signed message (apt's InRelease), one per file, all from one request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature

from signer import pgp, sha2
from signer.algorithms import ALGORITHMS
from signer.approval.keys import spki_key_id
from signer.encoding import canonical_json
from signer.errors import ConfigError, InvalidArgumentError, TooLargeError, VerificationError
from signer.formats._payload import artifact_items, lower_hex, strict_json
from signer.formats.base import (
    Carried,
    Evidence,
    OutputFormat,
    PayloadKey,
    Row,
    SignedRequest,
    Verdict,
    write_json,
)
from signer.formats.bundle import write_beside
from signer.model import Digest
from signer.text import DISPLAY_RULE, MAX_ARTIFACT, is_artifact_name

__all__ = [
    "CERTIFICATION",
    "MAX_FILES",
    "MODES",
    "PAYLOAD_TYPE",
    "SKEW",
    "Artifact",
    "OpenPgpFormat",
    "OpenPgpRequest",
    "certification_request",
    "check_certificate",
    "document_request",
    "hash_file",
    "openpgp_algorithm",
    "signature_packets",
]

PAYLOAD_TYPE = "application/vnd.signer.openpgp.v1+json"
MODES = ("binary", "armor", "cleartext", "certify")
SKEW = 300  # seconds a signature's creation time may be off the server's clock
CERTIFICATION = "openpgp-certification"  # the artifact name of a self-signature's digest
_MAX_PAYLOAD = 4 * 1024 * 1024
MAX_FILES = 1000  # files one OpenPGP request signs: each costs the server a hash to finish
_SIG_TYPES = {
    "binary": pgp.BINARY,
    "armor": pgp.BINARY,
    "cleartext": pgp.TEXT,
    "certify": pgp.POSITIVE_CERTIFICATION,
}
_SUFFIXES = {"binary": ".sig", "armor": ".asc", "cleartext": ".asc"}
_KEY_FLAGS = 0x03  # certify + sign: what a self-signature here says the key is for
_SUITABLE = "an rsa-pkcs1-3072, rsa-pkcs1-4096, ecdsa-p256 or ecdsa-p384 key"


def openpgp_algorithm(algorithm: str, key_name: str = "") -> int:
    """The OpenPGP public-key algorithm (RSA 1, ECDSA 19) of a key algorithm;
    InvalidArgumentError naming the key types to use if OpenPGP cannot use it."""
    alg = ALGORITHMS.get(algorithm)
    if alg is None or alg.scheme not in ("pkcs1", "ecdsa"):
        key = f"key {key_name!r}" if key_name else "the key"
        why = " (gpg and sq refuse RSA-PSS)" if alg is not None and alg.scheme == "pss" else ""
        raise InvalidArgumentError(
            f"{key} is {algorithm or 'of an unknown type'}: OpenPGP signatures need "
            f"{_SUITABLE}{why}",
            reason="KEY_UNSUITABLE_FOR_FORMAT",
        )
    return pgp.RSA if alg.scheme == "pkcs1" else pgp.ECDSA


def _allowed_hashes(algorithm: str) -> tuple[str, ...]:
    """An ECDSA key signs with its curve's own hash (ECDSA truncates a longer one, so a
    SHA-512 request would be a SHA-384 or SHA-512/256 signature by another name); RSA
    with any SHA-2, which its DigestInfo names."""
    own = {"ecdsa-p256": ("sha256",), "ecdsa-p384": ("sha384",)}
    return own.get(algorithm, tuple(pgp.HASH_IDS))


def _refuse(message: str, reason: str = "BAD_OPENPGP_REQUEST") -> InvalidArgumentError:
    return InvalidArgumentError(message, reason=reason)


@dataclass(frozen=True)
class Artifact:
    """One file of a document request: its name, the requester's claim of its digest, and
    the hash of what is signed (the file, or its cleartext form) stopped before its last
    partial block, which the server finishes with the trailer."""

    name: str
    claimed: Digest  # H(file), shown to officers as the requester's claim
    mid: sha2.Midstate
    tail: bytes  # the bytes after the midstate's whole blocks, fewer than a block

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.claimed.value.hex(),
            "state": self.mid.state.hex(),
            "length": self.mid.length,
            "tail": self.tail.hex(),
        }

    def signed_digest(self, hashed: pgp.Hashed) -> bytes:
        """H(signed data || trailer), finished here from the midstate."""
        return sha2.finish(self.mid, self.tail + hashed.trailer())


def hash_file(name: str, chunks: Iterable[bytes], hash_name: str, mode: str) -> Artifact:
    """A file's `Artifact`: its own digest and the midstate of what a `mode` signature
    signs (the bytes as they are, or for cleartext its `pgp.cleartext_text`)."""
    own = hashlib.new(hash_name)
    if mode == "cleartext":
        data = b"".join(chunks)
        own.update(data)
        try:
            signed: Iterable[bytes] = [pgp.cleartext_text(data)]
        except ValueError as e:
            raise InvalidArgumentError(f"cannot clearsign {name}: {e}") from None
    else:

        def both() -> Iterator[bytes]:
            for chunk in chunks:
                own.update(chunk)
                yield chunk

        signed = both()
    mid, tail = sha2.midstate(hash_name, signed)
    return Artifact(name, Digest(hash_name, own.digest(), name), mid, tail)


class OpenPgpRequest:
    """A typed OpenPGP request's payload, parsed strictly (`parse`)."""

    def __init__(
        self,
        mode: str,
        key: bytes,
        hashed: pgp.Hashed,
        artifacts: Sequence[Artifact] = (),
        uid: str = "",
    ):
        self.mode, self.key, self.hashed = mode, key, hashed
        self.artifacts, self.uid = tuple(artifacts), uid

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {
            "mode": self.mode,
            "key": self.key.hex(),
            "hashed": self.hashed.encode().hex(),
        }
        if self.mode == "certify":
            d["uid"] = self.uid
        else:
            d["artifacts"] = [a.as_dict() for a in self.artifacts]
        return canonical_json(d)

    @property
    def fingerprint(self) -> bytes:
        return pgp.fingerprint(self.key)

    @property
    def key_created(self) -> int:
        return int.from_bytes(self.key[1:5], "big")

    @classmethod
    def parse(cls, payload: bytes, max_artifacts: int = 10_000) -> OpenPgpRequest:
        """The payload, strictly: exact fields, canonical JSON, a hashed part `signer.pgp`
        accepts of the mode's signature type, valid names and claimed digests."""

        def build(d: Any) -> OpenPgpRequest:
            if not isinstance(d, dict) or d.get("mode") not in MODES:
                raise ValueError(f"mode must be {', '.join(MODES)}")
            mode = d["mode"]
            last = "uid" if mode == "certify" else "artifacts"
            if set(d) != {"mode", "key", "hashed", last}:
                raise ValueError(f"fields must be exactly {last}, hashed, key, mode")
            key, hashed_hex = d["key"], d["hashed"]
            if not isinstance(key, str) or not isinstance(hashed_hex, str):
                raise ValueError("key and hashed must be hex strings")
            body = bytes.fromhex(key)
            pgp.public_key_of(body)  # a key this module reads
            try:
                hashed = pgp.Hashed.parse(bytes.fromhex(hashed_hex), certification=last == "uid")
            except pgp.PgpFormatError as e:
                raise _refuse(f"the OpenPGP hashed part: {e}", "BAD_HASHED_PART") from None
            if hashed.sig_type != _SIG_TYPES[mode]:
                raise _refuse(
                    f"a {mode} request signs with signature type {_SIG_TYPES[mode]:#04x}, "
                    f"the hashed part says {hashed.sig_type:#04x}",
                    "BAD_HASHED_PART",
                )
            if mode == "certify":
                uid = d["uid"]
                if not isinstance(uid, str) or not is_artifact_name(uid):
                    raise ValueError(f"uid must be 1-{MAX_ARTIFACT} characters {DISPLAY_RULE}")
                return cls(mode, body, hashed, uid=uid)
            limit = min(max_artifacts, MAX_FILES)
            artifacts = _artifacts(d["artifacts"], hashed.hash_algorithm, limit)
            return cls(mode, body, hashed, artifacts)

        return strict_json(payload, _MAX_PAYLOAD, "OpenPGP signature request", build)

    def check(self, key: PayloadKey) -> None:
        """The hashed part is one this key makes: algorithm, hash, issuer, times; with
        `key.public_key_pem`, that the payload's OpenPGP key is this public key. At the
        server (`key.now` set) also the key's stored creation time and the clock."""
        h = self.hashed
        if h.pubkey_algorithm != openpgp_algorithm(key.algorithm):
            raise _refuse(
                f"the hashed part is for public-key algorithm {h.pubkey_algorithm}; this key "
                f"is {key.algorithm}",
                "BAD_HASHED_PART",
            )
        if h.hash_algorithm not in _allowed_hashes(key.algorithm):
            raise _refuse(
                f"a {key.algorithm} key signs with {' or '.join(_allowed_hashes(key.algorithm))}, "
                f"not {h.hash_algorithm}",
                "BAD_HASH_FOR_FORMAT",
            )
        if key.now is not None:
            if key.openpgp_created is None:
                raise _refuse(
                    "this key has no OpenPGP creation time in the token, so no OpenPGP "
                    "fingerprint: the operator gives it one with `signer keys openpgp-created`",
                    "KEY_UNSUITABLE_FOR_FORMAT",
                )
            if self.key_created != key.openpgp_created:
                raise _refuse(
                    f"the key's OpenPGP creation time is {key.openpgp_created}, the request "
                    f"says {self.key_created}: see `signer public-key --format openpgp`",
                    "FOREIGN_ISSUER",
                )
        if key.public_key_pem or key.now is not None:
            try:
                own = pgp.public_key_body(key.public_key_pem, self.key_created)
            except ValueError as e:
                raise _refuse(f"the key cannot make OpenPGP signatures: {e}") from None
            if own != self.key:
                raise _refuse("the OpenPGP key in the request is not this key", "FOREIGN_ISSUER")
        if h.issuer_fingerprint != self.fingerprint:
            raise _refuse(
                f"the hashed part names issuer {h.issuer_fingerprint.hex().upper()}; this "
                f"key's OpenPGP fingerprint is {self.fingerprint.hex().upper()}",
                "FOREIGN_ISSUER",
            )
        if h.created < self.key_created:
            raise _refuse("the signature's creation time is before the key's", "CREATION_TIME_SKEW")
        if key.now is not None and abs(h.created - key.now) > SKEW:
            raise _refuse(
                f"the signature's creation time {_when(h.created)} is more than {SKEW} s "
                f"from the server's clock ({_when(key.now)})",
                "CREATION_TIME_SKEW",
            )
        if self.mode == "certify" and (
            h.key_flags != _KEY_FLAGS or h.preferred_hashes != (h.hash_algorithm,)
        ):
            raise _refuse(
                "a self-signature here says certify and sign (key flags 0x03) and prefers "
                "its own hash",
                "BAD_HASHED_PART",
            )

    def signed_digests(self) -> tuple[Digest, ...]:
        """What the token signs, derived from the payload: a certification's digest, or
        each file's hash finished over its tail and the checked trailer."""
        h = self.hashed
        if self.mode == "certify":
            value = pgp.certification_digest(self.key, self.uid, h)
            return (Digest(h.hash_algorithm, value, CERTIFICATION),)
        return tuple(Digest(h.hash_algorithm, a.signed_digest(h), a.name) for a in self.artifacts)

    def check_digests(self, digests: Sequence[Digest]) -> None:
        """The digests are those `signed_digests` derives; each is finished only after the
        ones before it matched, so a request of wrong digests costs one hash to refuse."""
        what = (
            "the certification of this user ID on this key"
            if self.mode == "certify"
            else "each file's hash finished with this trailer"
        )
        wrong = _refuse(f"the digests to sign are not {what}", "PAYLOAD_DIGEST_MISMATCH")
        h = self.hashed
        if self.mode == "certify":
            if tuple(digests) != self.signed_digests():
                raise wrong
            return
        if len(digests) != len(self.artifacts):
            raise wrong
        for d, a in zip(digests, self.artifacts, strict=True):
            if (d.algorithm, d.artifact) != (h.hash_algorithm, a.name):
                raise wrong
            if d.value != a.signed_digest(h):
                raise wrong

    @property
    def claimed(self) -> tuple[Digest, ...]:
        return tuple(a.claimed for a in self.artifacts)

    def file_digest(self, data: bytes) -> bytes:
        """The digest the signature over a file with these bytes signs."""
        if self.mode == "cleartext":
            return pgp.cleartext_digest(data, self.hashed)
        return pgp.document_digest(data, self.hashed)


_ARTIFACT_FIELDS = {"name", "digest", "state", "length", "tail"}


def _artifacts(items: Any, hash_name: str, limit: int) -> list[Artifact]:
    out: list[Artifact] = []
    for i, (a, claimed) in enumerate(artifact_items(items, hash_name, limit, _ARTIFACT_FIELDS)):
        state_size = 32 if hash_name == "sha256" else 64
        if not lower_hex(a["state"], 2 * state_size):
            raise ValueError(f"artifacts[{i}].state must be a {hash_name} state in lowercase hex")
        tail, length = a["tail"], a["length"]
        if not lower_hex(tail) or len(tail) >= 2 * sha2.BLOCK[hash_name]:
            raise ValueError(
                f"artifacts[{i}].tail must be lowercase hex, under one {hash_name} block"
            )
        if not isinstance(length, int) or isinstance(length, bool):
            raise ValueError(f"artifacts[{i}].length must be an integer")
        mid = sha2.Midstate(hash_name, bytes.fromhex(a["state"]), length)
        out.append(Artifact(claimed.artifact, claimed, mid, bytes.fromhex(tail)))
    return out


def _when(t: int) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fpr(fpr: bytes) -> str:
    text = fpr.hex().upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def _key_id(key_body: bytes) -> str:
    """The key id (hex SHA-256 of the SPKI DER) of the public key in an OpenPGP key body,
    "" if it holds none this service makes."""
    try:
        return spki_key_id(pgp.public_key_of(key_body))
    except (ValueError, TypeError):
        return ""


def _foreign_key(described: Mapping[str, Any]) -> bool:
    """Whether the request's OpenPGP key is not the key the request is signed with (its
    key id, beside the payload in a shown request)."""
    o = described["openpgp"]
    return "key_id" in described and o.get("key_id") != described["key_id"]


def document_request(
    mode: str,
    files: Sequence[tuple[str, Iterable[bytes]]],
    key: PayloadKey,
    hash_name: str,
) -> tuple[Carried, OpenPgpRequest]:
    """The request for signing `files` ((name, the file's bytes in chunks) each) in `mode`,
    made at `key.now`."""
    if mode not in ("binary", "armor", "cleartext"):
        raise InvalidArgumentError(f"OpenPGP mode {mode!r} is not binary, armor or cleartext")
    pk = openpgp_algorithm(key.algorithm)
    if key.openpgp_created is None or key.now is None:
        raise InvalidArgumentError(
            "the server gives this key no OpenPGP creation time: it cannot make OpenPGP "
            f"signatures (OpenPGP needs {_SUITABLE})",
            reason="KEY_UNSUITABLE_FOR_FORMAT",
        )
    if hash_name not in _allowed_hashes(key.algorithm):
        raise InvalidArgumentError(
            f"a {key.algorithm} key makes OpenPGP signatures with "
            f"{' or '.join(_allowed_hashes(key.algorithm))}; use --hash",
            reason="BAD_HASH_FOR_FORMAT",
        )
    names = [n for n, _ in files]
    if len(set(names)) != len(names):
        raise InvalidArgumentError("two files of one request have the same name")
    body = pgp.public_key_body(key.public_key_pem, key.openpgp_created)
    hashed = pgp.Hashed(_SIG_TYPES[mode], pk, hash_name, key.now, pgp.fingerprint(body))
    artifacts = [hash_file(n, chunks, hash_name, mode) for n, chunks in files]
    request = OpenPgpRequest(mode, body, hashed, artifacts)
    return Carried(request.signed_digests(), PAYLOAD_TYPE, request.to_bytes()), request


def certification_request(
    uid: str, key: PayloadKey, hash_name: str = ""
) -> tuple[Carried, OpenPgpRequest]:
    """The request for the key's self-signature on `uid`, made now."""
    if key.openpgp_created is None or key.now is None:
        raise InvalidArgumentError("the key has no OpenPGP creation time")
    pk = openpgp_algorithm(key.algorithm)
    hash_name = hash_name or ALGORITHMS[key.algorithm].default_hash
    body = pgp.public_key_body(key.public_key_pem, key.openpgp_created)
    hashed = pgp.Hashed(
        pgp.POSITIVE_CERTIFICATION,
        pk,
        hash_name,
        key.now,
        pgp.fingerprint(body),
        key_flags=_KEY_FLAGS,
        preferred_hashes=(hash_name,),
    )
    request = OpenPgpRequest("certify", body, hashed, uid=uid)
    return Carried(request.signed_digests(), PAYLOAD_TYPE, request.to_bytes()), request


def signature_packets(signed: SignedRequest) -> tuple[OpenPgpRequest, list[bytes]]:
    """The request's payload and one signature packet per digest, each checked to verify
    by the key in the payload, which must be the signed key (nothing else is written)."""
    if signed.payload_type != PAYLOAD_TYPE:
        raise InvalidArgumentError(
            f"request {signed.request_id} is not an OpenPGP signature request; "
            "use the --format it was made with"
        )
    request = OpenPgpRequest.parse(signed.payload)
    try:
        request.check(PayloadKey(signed.algorithm, signed.public_key_pem))
        request.check_digests(signed.digests)
    except InvalidArgumentError as e:
        raise VerificationError(f"request {signed.request_id}: {e}; not written") from None
    packets = []
    for d, sig in zip(signed.digests, signed.signatures, strict=True):
        try:
            packet = pgp.signature_packet(request.hashed, d.value, sig)
            pgp.verify_signature(request.key, pgp.parse_signature_packet(packet), d.value)
        except (ValueError, InvalidSignature):
            raise VerificationError(
                f"request {signed.request_id}: a signature is not one the key makes; not written"
            ) from None
        packets.append(packet)
    return request, packets


def _chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    try:
        with path.open("rb") as f:
            while chunk := f.read(size):
                yield chunk
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None


def check_certificate(cert: bytes, public_key_pem: str, created: int | None) -> pgp.Certificate:
    """A certificate of exactly this key (its public key, and the creation time the server
    gives) whose self-signature verifies; VerificationError otherwise."""
    try:
        c = pgp.parse_certificate(cert)
        own = pgp.public_key_body(public_key_pem, c.created)
    except ValueError as e:
        raise VerificationError(f"not an OpenPGP certificate of this key: {e}") from None
    if own != c.key_body or (created is not None and c.created != created):
        raise VerificationError("the OpenPGP certificate is of another key")
    if c.hashed.key_flags != _KEY_FLAGS:
        raise VerificationError("the certificate's self-signature does not say certify and sign")
    digest = pgp.certification_digest(c.key_body, c.uid, c.hashed)
    try:
        pgp.verify_signature(c.key_body, c.signature, digest)
    except (InvalidSignature, ValueError):
        raise VerificationError("the certificate's self-signature does not verify") from None
    return c


class OpenPgpFormat(OutputFormat):
    name: ClassVar[str] = "openpgp"
    summary: ClassVar[str] = "OpenPGP signatures (gpg, gpgv, sq, apt, rpm, Maven Central)"
    suffix: ClassVar[str] = ".sig"
    per_artifact: ClassVar[bool] = True
    key_bound: ClassVar[bool] = True
    hashes_files: ClassVar[bool] = True
    payload_type: ClassVar[str] = PAYLOAD_TYPE
    payload_description: ClassVar[str] = "an OpenPGP signature request"

    def carry(
        self,
        digests: Sequence[Digest],
        context: Mapping[str, str],
        hash_name: str,
        params: Mapping[str, str],
        algorithm: str = "",
    ) -> Carried:
        raise InvalidArgumentError(
            "an OpenPGP signature hashes the file with its trailer: give --file, not --digest"
        )

    def carry_files(
        self, files: Sequence[Path], params: Mapping[str, str], key: PayloadKey, hash_name: str
    ) -> Carried:
        named = [(f.name, _chunks(f)) for f in files]
        return document_request(params.get("mode", "binary"), named, key, hash_name)[0]

    def check_payload(
        self, payload: bytes, digests: Sequence[Digest], max_subjects: int, key: PayloadKey
    ) -> None:
        request = OpenPgpRequest.parse(payload, max_subjects)
        request.check(key)
        request.check_digests(digests)

    def check_file(self, payload: bytes, digests: Sequence[Digest], data: bytes, name: str) -> None:
        request = OpenPgpRequest.parse(payload)
        try:
            own = request.file_digest(data)
        except ValueError as e:
            raise VerificationError(f"{name}: {e}") from None
        index = [a.name for a in request.artifacts].index(name)
        if index >= len(digests) or digests[index].value != own:
            raise VerificationError(
                f"the OpenPGP signature digest of {name} is not the one signed: the "
                "requester's claim was false"
            )

    def local_files(
        self, payload: bytes, digests: Sequence[Digest], paths: Sequence[Path]
    ) -> list[list[str]]:
        """For each path, the artifacts this file is: its own digest is the claim, and its
        hash state the one the server finishes (a file whose digest is claimed while
        another's state was sent matches nothing)."""
        request = OpenPgpRequest.parse(payload)
        if request.mode == "certify":
            return [[] for _ in paths]
        by_state: dict[tuple[bytes, sha2.Midstate, bytes], list[str]] = {}
        for a in request.artifacts:
            by_state.setdefault((a.claimed.value, a.mid, a.tail), []).append(a.name)
        out = []
        for path in paths:
            own = hash_file(path.name, _chunks(path), request.hashed.hash_algorithm, request.mode)
            out.append(by_state.get((own.claimed.value, own.mid, own.tail), []))
        return out

    def artifacts(self, payload: bytes) -> tuple[Digest, ...] | None:
        request = OpenPgpRequest.parse(payload)
        return None if request.mode == "certify" else request.claimed

    def describe(
        self, payload_type: str, payload: bytes, digests: Sequence[Digest], algorithm: str
    ) -> dict[str, Any]:
        try:
            request = OpenPgpRequest.parse(payload)
        except (InvalidArgumentError, TooLargeError) as e:
            return {"openpgp_error": str(e), "payload_matches_digest": False}
        h = request.hashed
        shown: dict[str, Any] = {
            "mode": request.mode,
            "key_fingerprint": request.fingerprint.hex().upper(),
            "key_created": _when(request.key_created),
            "signature_created": _when(h.created),
            "hash_algorithm": h.hash_algorithm,
            "issuer_is_key": h.issuer_fingerprint == request.fingerprint,
            "key_id": _key_id(request.key),
        }
        try:
            request.check(PayloadKey(algorithm))  # what can be checked without the server
            request.check_digests(digests)
            matches = shown["issuer_is_key"]
        except InvalidArgumentError as e:
            shown["problem"] = str(e)
            matches = False
        if request.mode == "certify":
            shown["uid"] = request.uid
        else:
            shown["claimed_artifacts"] = [
                {"name": a.name, "digest": a.claimed.value.hex()} for a in request.artifacts
            ]
        return {"openpgp": shown, "payload_matches_digest": matches}

    def rows(self, described: Mapping[str, Any]) -> list[Row]:
        if "openpgp" not in described:
            return [
                ("openpgp request", f"UNREADABLE: {described['openpgp_error']}; do not approve")
            ]
        o = described["openpgp"]
        what = {
            "binary": "detached signatures (binary)",
            "armor": "detached signatures (armored)",
            "cleartext": "cleartext signature (apt InRelease)",
            "certify": "the key's certificate: a self-signature binding a user ID",
        }[o["mode"]]
        rows: list[Row] = [
            ("openpgp", what),
            ("key fingerprint", _fpr(bytes.fromhex(o["key_fingerprint"]))),
            ("key created", o["key_created"]),
            ("signature created", f"{o['signature_created']} ({o['hash_algorithm']})"),
        ]
        if o["mode"] == "certify":
            rows.append(("user id", o["uid"]))
            if not o["uid"].isascii():
                rows.append(("user id check", "NOT ASCII: look for look-alike characters"))
        else:
            rows += [
                (
                    f"file {i}",
                    (a["name"], f"{o['hash_algorithm']}:{a['digest']} (claimed by the requester)"),
                )
                for i, a in enumerate(o["claimed_artifacts"])
            ]
        if _foreign_key(described):
            rows.append(("key check", "ANOTHER KEY than the one it is signed with; do not approve"))
        if not described["payload_matches_digest"]:
            why = f" ({o['problem']})" if "problem" in o else ""
            check = (
                f"MISMATCH: the digests to sign do not follow from this request{why}; "
                "do not approve"
            )
        elif o["mode"] == "certify":
            check = "the digest to sign is this user ID's certification on this key"
        else:
            check = (
                "fields checked; each digest to sign is finished by the server over this "
                "trailer, from the requester's hash of the file: the evidence bundle lets "
                "anyone recompute it from the file"
            )
        rows.append(("payload check", check))
        return rows

    def problems(self, described: Mapping[str, Any]) -> list[str]:
        if "openpgp" not in described:
            return [f"the OpenPGP request cannot be shown: {described['openpgp_error']}"]
        problems = []
        if _foreign_key(described):
            problems.append(
                "the OpenPGP key in the request is not the key it is signed with: its "
                "fingerprint is not that key's"
            )
        if not described["payload_matches_digest"]:
            problems.append("the digests to sign do not follow from the OpenPGP request shown")
        return problems

    def targets(
        self, out: Path | None, files: Sequence[Path], payload: bytes = b""
    ) -> tuple[Path, ...]:
        if out is not None:
            return (out,)
        mode = OpenPgpRequest.parse(payload).mode if payload else "binary"
        if mode == "certify":
            raise InvalidArgumentError("a certification is written by `signer keys openpgp`")
        if not files:
            raise InvalidArgumentError("no --out and no --file to write beside")
        return tuple(f.with_name(f.name + _SUFFIXES[mode]) for f in files)

    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        request, packets = signature_packets(signed)
        if request.mode == "certify":
            raise InvalidArgumentError(
                f"request {signed.request_id} is a certification; `signer keys openpgp` "
                "writes the certificate"
            )
        sources = signed.files or (None,) * len(packets)
        outputs: list[tuple[Path, bytes, str]] = []  # every file checked before any is written
        for path, packet, a, d, source in zip(
            targets, packets, request.artifacts, signed.digests, sources, strict=False
        ):
            data = source.read_bytes() if source is not None else None
            if data is not None and request.file_digest(data) != d.value:
                raise VerificationError(f"{source} changed since it was hashed; nothing written")
            if request.mode == "binary":
                out = packet
            elif request.mode == "armor":
                out = pgp.armor("SIGNATURE", packet).encode()
            elif data is None:
                raise InvalidArgumentError("a cleartext signature is written with its --file")
            else:
                out = pgp.clearsign(data, packet)
            outputs.append((path, out, a.name))
        said = []
        for path, out, name in outputs:
            path.write_bytes(out)
            proof = path.with_name(path.name + ".audit.json")
            write_json(proof, signed.proof.to_json())
            said.append(
                f"OpenPGP signature ({request.mode}) of {name} written to {path} "
                f"(audit proof: {proof})"
            )
        return [*said, write_beside(signed, targets[0])]

    def verify(self, evidence: Evidence) -> Verdict:
        raise ConfigError(
            "check an OpenPGP signature with gpg, gpgv or sq against the key's certificate "
            "(`signer public-key --format openpgp`), or its evidence with `signer verify --bundle`"
        )
