"""`--format ssh`: SSH signatures (OpenSSH PROTOCOL.sshsig), what `ssh-keygen -Y verify`
and git (`gpg.format ssh`) check.

A typed request: the request carries the format's parameters and the artifacts'
own digests as its payload (canonical JSON `{"artifacts": [{"digest", "name"}],
"hash_algorithm", "namespace"}`), and the digests the token signs are derived
from it, one per artifact: the hash the key's SSH signature algorithm uses
(`ecdsa-sha2-nistp256`: SHA-256, `ecdsa-sha2-nistp384`: SHA-384, `rsa-sha2-512`:
SHA-512) of the SSHSIG signed data

    "SSHSIG" || string(namespace) || string("") || string(hash_algorithm)
             || string(H(file))

The server derives them itself and refuses a request whose digests are not
those; officers are shown the namespace and each file's own digest, and whether
the digests to sign are derived from them; an approval names the payload. The
output, per artifact `ARTIFACT.sig`, is the armored SSHSIG blob (the public key,
namespace, hash and signature), with the audit proof beside it, and the request's
evidence bundle beside the first (`ARTIFACT.sig.bundle.json`): `signer verify
--bundle` checks that the signed digests are those derived from the payload it
keeps, and that the file is one the payload lists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from signer.encoding import canonical_json
from signer.errors import ConfigError, InvalidArgumentError, TooLargeError, VerificationError
from signer.formats._payload import artifact_items, strict_json
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
from signer.verify import verify_digest

__all__ = [
    "ARTIFACT_HASHES",
    "PAYLOAD_TYPE",
    "SshFormat",
    "SshRequest",
    "armor",
    "check_namespace",
    "public_key_line",
    "signed_data",
    "ssh_algorithm",
    "write_signatures",
]

PAYLOAD_TYPE = "application/vnd.signer.sshsig.v1+json"
ARTIFACT_HASHES = ("sha512", "sha256")  # what SSHSIG allows for H(file); the first is git's
_MAX_PAYLOAD = 4 * 1024 * 1024
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}\Z")
_NAMESPACE_RULE = (
    "1-64 characters of letters, digits and . _ @ + -, starting with a letter or digit"
)
_BEGIN, _END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"

# Key algorithm -> (SSH signature algorithm, the hash it signs the signed data with).
_SSH_ALGORITHMS: dict[str, tuple[str, str]] = {
    "ecdsa-p256": ("ecdsa-sha2-nistp256", "sha256"),
    "ecdsa-p384": ("ecdsa-sha2-nistp384", "sha384"),
    "rsa-pkcs1-3072": ("rsa-sha2-512", "sha512"),
    "rsa-pkcs1-4096": ("rsa-sha2-512", "sha512"),
}


def ssh_algorithm(algorithm: str, key_name: str = "") -> tuple[str, str]:
    """(SSH signature algorithm, hash) for a key algorithm; InvalidArgumentError naming the
    key types to use if SSH signatures cannot be made with it."""
    try:
        return _SSH_ALGORITHMS[algorithm]
    except KeyError:
        key = f"key {key_name!r}" if key_name else "the key"
        raise InvalidArgumentError(
            f"{key} is {algorithm or 'of an unknown type'}: SSH signatures need an "
            "ecdsa-p256, ecdsa-p384, rsa-pkcs1-3072 or rsa-pkcs1-4096 key",
            reason="KEY_UNSUITABLE_FOR_FORMAT",
        ) from None


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE.match(namespace):
        raise InvalidArgumentError(
            f"SSH signature namespace {namespace[:80]!r} must be {_NAMESPACE_RULE} "
            "(git signs with namespace git)",
            reason="BAD_NAMESPACE",
        )
    return namespace


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _mpint(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big") if n else b""
    return _string(raw)


def signed_data(namespace: str, hash_algorithm: str, file_digest: bytes) -> bytes:
    """The SSHSIG signed data over a file's digest (PROTOCOL.sshsig §3)."""
    return (
        b"SSHSIG"
        + _string(namespace.encode())
        + _string(b"")
        + _string(hash_algorithm.encode())
        + _string(file_digest)
    )


class SshRequest:
    """A typed SSH request's payload: namespace, artifact hash, artifacts' own digests."""

    def __init__(self, namespace: str, hash_algorithm: str, artifacts: Sequence[Digest]):
        self.namespace = namespace
        self.hash_algorithm = hash_algorithm
        self.artifacts = tuple(artifacts)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "namespace": self.namespace,
                "hash_algorithm": self.hash_algorithm,
                "artifacts": [
                    {"name": a.artifact, "digest": a.value.hex()} for a in self.artifacts
                ],
            }
        )

    @classmethod
    def parse(cls, payload: bytes, max_artifacts: int = 10_000) -> SshRequest:
        """The payload, strictly: exact fields, canonical JSON, valid names and digests."""

        def build(d: Any) -> SshRequest:
            if not isinstance(d, dict) or set(d) != {"namespace", "hash_algorithm", "artifacts"}:
                raise ValueError("fields must be exactly artifacts, hash_algorithm, namespace")
            namespace, hash_algorithm, items = d["namespace"], d["hash_algorithm"], d["artifacts"]
            if not isinstance(namespace, str):
                raise ValueError("namespace must be a string")
            if hash_algorithm not in ARTIFACT_HASHES:
                raise ValueError(f"hash_algorithm must be {' or '.join(ARTIFACT_HASHES)}")
            listed = artifact_items(items, hash_algorithm, max_artifacts, {"name", "digest"})
            artifacts = [digest for _, digest in listed]
            check_namespace(namespace)
            return cls(namespace, hash_algorithm, artifacts)

        return strict_json(payload, _MAX_PAYLOAD, "SSH signature request", build)

    def signed_digests(self, algorithm: str) -> tuple[Digest, ...]:
        """What the token signs for each artifact with a key of `algorithm`."""
        _, hash_name = ssh_algorithm(algorithm)
        return tuple(
            Digest(
                hash_name,
                hashlib.new(
                    hash_name, signed_data(self.namespace, self.hash_algorithm, a.value)
                ).digest(),
                a.artifact,
            )
            for a in self.artifacts
        )


def _key_blob(public_key_pem: str) -> tuple[bytes, Any]:
    pub = serialization.load_pem_public_key(public_key_pem.encode())
    line = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1]), pub


def public_key_line(public_key_pem: str) -> str:
    """The key in OpenSSH's one-line form (`ecdsa-sha2-nistp256 AAAA...`)."""
    pub = serialization.load_pem_public_key(public_key_pem.encode())
    return pub.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _ssh_signature(algorithm: str, der_or_raw: bytes) -> bytes:
    """The token's signature in SSH's encoding: string(algorithm) || string(blob)."""
    name, _ = ssh_algorithm(algorithm)
    if name.startswith("ecdsa"):
        r, s = decode_dss_signature(der_or_raw)
        return _string(name.encode()) + _string(_mpint(r) + _mpint(s))
    return _string(name.encode()) + _string(der_or_raw)


def armor(
    public_key_pem: str, algorithm: str, namespace: str, hash_algorithm: str, signature: bytes
) -> str:
    """The armored SSHSIG file ssh-keygen writes, from the token's signature."""
    blob = (
        b"SSHSIG"
        + struct.pack(">I", 1)
        + _string(_key_blob(public_key_pem)[0])
        + _string(namespace.encode())
        + _string(b"")
        + _string(hash_algorithm.encode())
        + _string(_ssh_signature(algorithm, signature))
    )
    text = base64.b64encode(blob).decode()
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def string(self) -> bytes:
        (n,) = struct.unpack(">I", self.take(4))
        return self.take(n)


def _unarmor(text: str) -> dict[str, Any]:
    """The fields of an armored SSHSIG file; ValueError if it is not one."""
    lines = [x.strip() for x in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _BEGIN or lines[-1] != _END:
        raise ValueError("no SSH SIGNATURE armor")
    r = _Reader(base64.b64decode("".join(lines[1:-1]), validate=True))
    if r.take(6) != b"SSHSIG" or struct.unpack(">I", r.take(4))[0] != 1:
        raise ValueError("not an SSHSIG v1 blob")
    out = {
        "public_key": r.string(),
        "namespace": r.string().decode(),
        "reserved": r.string(),
        "hash_algorithm": r.string().decode(),
    }
    sig = _Reader(r.string())
    out["sig_algorithm"] = sig.string().decode()
    out["sig_blob"] = sig.string()
    if r.at != len(r.data) or sig.at != len(sig.data):
        raise ValueError("trailing bytes")
    return out


def write_signatures(signed: SignedRequest, targets: Sequence[Path]) -> list[tuple[Path, str, str]]:
    """Write each artifact's armored SSHSIG at its target, only if the signed digests are
    those derived from the request's payload; (path, namespace, artifact) of each."""
    if signed.payload_type != PAYLOAD_TYPE:
        raise InvalidArgumentError(
            f"request {signed.request_id} is not an SSH signature request; "
            "use the --format it was made with"
        )
    request = SshRequest.parse(signed.payload)
    if request.signed_digests(signed.algorithm) != signed.digests:
        raise VerificationError(
            f"request {signed.request_id}: the signed digests are not those of its files; "
            "not written"
        )
    expected, _ = _expected_algorithm(_key_blob(signed.public_key_pem)[1])
    if ssh_algorithm(signed.algorithm)[0] != expected:
        raise VerificationError(
            f"request {signed.request_id}: the key is said to be {signed.algorithm}, its public "
            "key is not; not written"
        )
    written = []
    for path, sig, a in zip(targets, signed.signatures, request.artifacts, strict=True):
        try:
            text = armor(
                signed.public_key_pem,
                signed.algorithm,
                request.namespace,
                request.hash_algorithm,
                sig,
            )
        except ValueError:
            raise VerificationError(
                f"request {signed.request_id}: a signature is not one the key makes; not written"
            ) from None
        path.write_text(text)
        written.append((path, request.namespace, a.artifact))
    return written


def _expected_algorithm(pub: Any) -> tuple[str, str]:
    """The SSH signature algorithm (and its hash) this service makes with `pub`."""
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1":
        return _SSH_ALGORITHMS["ecdsa-p256"]
    if isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1":
        return _SSH_ALGORITHMS["ecdsa-p384"]
    if isinstance(pub, rsa.RSAPublicKey):
        return _SSH_ALGORITHMS["rsa-pkcs1-3072"]
    raise ConfigError("the public key cannot make SSH signatures (P-256, P-384 or RSA)")


def _positive_mpint(b: bytes) -> int:
    """An SSH mpint that is positive and minimally encoded (RFC 4251 §5)."""
    if not b or b[0] & 0x80 or (b[0] == 0 and (len(b) == 1 or not b[1] & 0x80)):
        raise ValueError("not a minimal positive mpint")
    return int.from_bytes(b, "big")


class SshFormat(OutputFormat):
    name: ClassVar[str] = "ssh"
    summary: ClassVar[str] = "SSH signatures (ssh-keygen -Y verify, git)"
    suffix: ClassVar[str] = ".sig"
    per_artifact: ClassVar[bool] = True
    default_hash: ClassVar[str] = "sha512"
    key_bound: ClassVar[bool] = True
    payload_type: ClassVar[str] = PAYLOAD_TYPE
    payload_description: ClassVar[str] = "an SSH signature request"

    def carry(
        self,
        digests: Sequence[Digest],
        context: Mapping[str, str],
        hash_name: str,
        params: Mapping[str, str],
        algorithm: str = "",
    ) -> Carried:
        namespace = check_namespace(params.get("namespace", ""))
        if any(d.algorithm not in ARTIFACT_HASHES for d in digests):
            raise InvalidArgumentError(
                "SSH signatures are over SHA-512 (or SHA-256) file digests; use --hash sha512",
                reason="BAD_HASH_FOR_FORMAT",
            )
        if len({d.algorithm for d in digests}) > 1:
            raise InvalidArgumentError("give all files' digests with one hash")
        request = SshRequest(namespace, digests[0].algorithm, digests)
        return Carried(request.signed_digests(algorithm), PAYLOAD_TYPE, request.to_bytes())

    def check_payload(
        self, payload: bytes, digests: Sequence[Digest], max_subjects: int, key: PayloadKey
    ) -> None:
        derived = SshRequest.parse(payload, max_subjects).signed_digests(key.algorithm)
        if tuple(digests) != derived:
            raise InvalidArgumentError(
                "the digests are not the SSHSIG signed data of the files named in the payload "
                "for this key",
                reason="PAYLOAD_DIGEST_MISMATCH",
            )

    def artifacts(self, payload: bytes) -> tuple[Digest, ...] | None:
        return SshRequest.parse(payload).artifacts

    def describe(
        self, payload_type: str, payload: bytes, digests: Sequence[Digest], algorithm: str
    ) -> dict[str, Any]:
        try:
            request = SshRequest.parse(payload)
        except (InvalidArgumentError, TooLargeError) as e:
            return {"ssh_error": str(e), "payload_matches_digest": False}
        try:
            matches = request.signed_digests(algorithm) == tuple(digests)
        except InvalidArgumentError:
            matches = False
        return {
            "ssh": {
                "namespace": request.namespace,
                "hash_algorithm": request.hash_algorithm,
                "artifacts": [
                    {"name": a.artifact, "digest": a.value.hex()} for a in request.artifacts
                ],
            },
            "payload_matches_digest": matches,
        }

    def rows(self, described: Mapping[str, Any]) -> list[Row]:
        if "ssh" not in described:
            return [("ssh request", f"UNREADABLE: {described['ssh_error']}; do not approve")]
        ssh = described["ssh"]
        rows: list[Row] = [("ssh namespace", ssh["namespace"])]
        rows += [
            (f"file {i}", (a["name"], f"{ssh['hash_algorithm']}:{a['digest']}"))
            for i, a in enumerate(ssh["artifacts"])
        ]
        rows.append(
            (
                "payload check",
                "the digests to sign are the SSH signatures of these files"
                if described["payload_matches_digest"]
                else "MISMATCH: the digests to sign are NOT of these files; do not approve",
            )
        )
        return rows

    def problems(self, described: Mapping[str, Any]) -> list[str]:
        if "ssh" not in described:
            return [f"the SSH signature request cannot be shown: {described['ssh_error']}"]
        if not described["payload_matches_digest"]:
            return ["the digests to sign are not those of the files shown"]
        return []

    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        said = []
        for path, namespace, name in write_signatures(signed, targets):
            proof = path.with_name(path.name + ".audit.json")
            write_json(proof, signed.proof.to_json())
            said.append(
                f"SSH signature ({namespace}) of {name} written to {path} (audit proof: {proof})"
            )
        return [*said, write_beside(signed, targets[0])]

    def verify(self, evidence: Evidence) -> Verdict:
        """The armored SSHSIG over the file, by the pinned public key."""
        if evidence.public_key is None or evidence.file is None:
            raise ConfigError("an SSH signature is checked with a public key, over a --file")
        try:
            pem = evidence.public_key.read_text()
            blob, pub = _key_blob(pem)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"{evidence.public_key} is not a PEM public key") from None
        try:
            sig = _unarmor(evidence.path.read_text())
        except (ValueError, UnicodeDecodeError, binascii.Error, struct.error):
            raise VerificationError("not an SSH signature file") from None
        if sig["public_key"] != blob:
            raise VerificationError("the SSH signature is by another key: INVALID")
        if sig["hash_algorithm"] not in ARTIFACT_HASHES or sig["reserved"]:
            raise VerificationError("the SSH signature's hash is not sha512 or sha256: INVALID")
        if evidence.namespace and sig["namespace"] != evidence.namespace:
            raise VerificationError(
                f"the SSH signature is for namespace {sig['namespace'][:64]!r}, not "
                f"{evidence.namespace!r}: INVALID"
            )
        expected, hash_name = _expected_algorithm(pub)
        if sig["sig_algorithm"] != expected:
            raise VerificationError(
                f"the SSH signature is {sig['sig_algorithm'][:40]!r}; this key signs "
                f"{expected}: INVALID"
            )
        try:
            file_digest = hashlib.new(sig["hash_algorithm"], evidence.file.read_bytes()).digest()
        except OSError as e:
            raise ConfigError(f"cannot read {evidence.file}: {e.strerror}") from None
        data = signed_data(sig["namespace"], sig["hash_algorithm"], file_digest)
        try:
            raw = sig["sig_blob"]
            if isinstance(pub, ec.EllipticCurvePublicKey):
                r = _Reader(raw)
                rs = [_positive_mpint(r.string()) for _ in range(2)]
                if r.at != len(raw):
                    raise ValueError("trailing bytes after the ECDSA signature")
                raw = encode_dss_signature(*rs)
            verify_digest(pub, hash_name, hashlib.new(hash_name, data).digest(), raw, "pkcs1")
        except (InvalidSignature, ValueError, struct.error):
            raise VerificationError("SSH signature INVALID") from None
        return Verdict(
            f"SSH signature OK ({sig['sig_algorithm']}, namespace {sig['namespace']})",
            {"namespace": sig["namespace"], "algorithm": sig["sig_algorithm"]},
        )
