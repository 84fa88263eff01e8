"""Evidence bundles: a signature with the proof of its quorum and of its place in the log.

`signer sign --format bundle` writes one JSON file; `signer verify --bundle`
checks it offline against pinned trust only (the signing public key, the
officers' approval keys, the threshold the consumer demands, the audit
verifier key):

1. the key in the bundle is the pinned key (same key id);
2. the artifact's digest is one the bundle signs (for a DSSE bundle: a subject
   of the signed in-toto statement, whose PAE digest is the one signed; for a
   typed request's bundle (`--format ssh`): a file its payload lists, the signed
   digests being those the format derives from that payload), and
   every signature verifies with the pinned key under the key's scheme;
3. every approval envelope verifies with the pinned key of the officer it
   names and binds this request, key, key id and exactly these digests; at
   least `threshold` distinct officers (and distinct keys) approved;
4. the request.signed audit entry, naming this request, key and exactly these
   signatures, is included in a checkpoint signed by the pinned audit key.

Any failed check raises VerificationError naming it; nothing is partially
trusted. `BundleFormat` is the output format (`signer.formats.base`) that
writes and checks these files; every other format writes one beside its output
(`write_beside`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from signer.algorithms import ALGORITHMS, HASH_SIZES
from signer.approval.keys import ApprovalKey
from signer.audit.proofs import SignedProof, verify_signed_proof
from signer.dsse import Binding, Envelope, PayloadBinding, Statement, distinct_approvers
from signer.errors import (
    ConfigError,
    EnvelopeError,
    InvalidArgumentError,
    StatementMismatchError,
    TooLargeError,
    VerificationError,
)
from signer.formats.base import (
    Evidence,
    OutputFormat,
    PayloadKey,
    SignedRequest,
    Verdict,
    file_digests,
    write_json,
)
from signer.formats.intoto import PAYLOAD_TYPE, InTotoStatement, pae_digest
from signer.formats.trust import Pins, Trust, check_signed_under, key_id, pins_for
from signer.model import Digest
from signer.verify import verify_digest

__all__ = [
    "MEDIA_TYPE",
    "Bundle",
    "BundleFormat",
    "Trust",
    "VerifiedBundle",
    "verify_bundle",
    "verify_bundle_file",
    "write_beside",
]

MEDIA_TYPE = "application/vnd.signer.bundle.v1+json"
_MAX_BUNDLE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Bundle:
    request_id: str
    key_name: str
    key_id: str
    algorithm: str
    public_key_pem: str
    digests: tuple[Digest, ...]
    signatures: tuple[bytes, ...]
    threshold: int
    approvals: tuple[bytes, ...]  # the officers' DSSE envelopes, verbatim
    audit: SignedProof
    dsse: dict[str, Any] | None = None  # the signed envelope, for a DSSE bundle
    payload_type: str = ""  # a typed request's payload (not DSSE: the envelope holds that)
    payload: bytes = b""
    # The policy versions from 1 to the one it was signed under, as `policy.adopted`
    # entries record them: what a trust file that pins a version walks.
    policy_chain: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def of(cls, signed: SignedRequest, dsse: dict[str, Any] | None = None) -> Bundle:
        """The bundle of a verified signed request (and its DSSE envelope, if any)."""
        return cls(
            request_id=signed.request_id,
            key_name=signed.key_name,
            key_id=signed.key_id,
            algorithm=signed.algorithm,
            public_key_pem=signed.public_key_pem,
            digests=signed.digests,
            signatures=signed.signatures,
            threshold=signed.threshold,
            approvals=signed.approvals,
            audit=signed.proof,
            dsse=dsse,
            payload_type="" if dsse is not None else signed.payload_type,
            payload=b"" if dsse is not None else signed.payload,
            policy_chain=signed.policy_chain,
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": MEDIA_TYPE,
            "request_id": self.request_id,
            "key": {
                "name": self.key_name,
                "key_id": self.key_id,
                "algorithm": self.algorithm,
                "public_key_pem": self.public_key_pem,
            },
            "digests": [x.as_dict() for x in self.digests],
            "signatures": [base64.b64encode(s).decode() for s in self.signatures],
            "threshold": self.threshold,
            "approvals": [a.decode() for a in self.approvals],
            "audit": self.audit.to_json(),
        }
        if self.dsse is not None:
            d["dsse"] = self.dsse
        if self.payload_type:
            d["payload"] = {
                "type": self.payload_type,
                "payload": base64.b64encode(self.payload).decode(),
            }
        if self.policy_chain:
            d["policy"] = {"versions": [dict(v) for v in self.policy_chain]}
        return d

    @classmethod
    def from_json(cls, d: Any) -> Bundle:
        try:
            if not isinstance(d, dict) or d.get("mediaType") != MEDIA_TYPE:
                raise VerificationError(f"not a bundle: mediaType is not {MEDIA_TYPE}")
            key = d["key"]
            dsse = d.get("dsse")
            if dsse is not None and not isinstance(dsse, dict):
                raise TypeError("dsse must be an object")
            typed = d.get("payload", {"type": "", "payload": ""})
            if not isinstance(typed, dict) or set(typed) != {"type", "payload"}:
                raise TypeError("payload must be {type, payload}")
            if dsse is not None and typed["type"]:
                raise TypeError("a bundle carries a DSSE envelope or a typed payload, not both")
            policy = d.get("policy", {"versions": []})
            if not isinstance(policy, dict) or set(policy) != {"versions"}:
                raise TypeError("policy must be {versions}")
            chain = policy["versions"]
            if not isinstance(chain, list) or not all(isinstance(v, dict) for v in chain):
                raise TypeError("policy.versions must be a list of objects")
            return cls(
                request_id=str(d["request_id"]),
                key_name=str(key["name"]),
                key_id=str(key["key_id"]),
                algorithm=str(key["algorithm"]),
                public_key_pem=str(key["public_key_pem"]),
                digests=tuple(_digest(x) for x in d["digests"]),
                signatures=tuple(base64.b64decode(s, validate=True) for s in d["signatures"]),
                threshold=int(d["threshold"]),
                approvals=tuple(str(a).encode() for a in d["approvals"]),
                audit=SignedProof.from_json(d["audit"]),
                dsse=dsse,
                payload_type=str(typed["type"]),
                payload=base64.b64decode(str(typed["payload"]), validate=True),
                policy_chain=tuple(chain),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise VerificationError(f"malformed bundle: {str(e)[:200]}") from None

    @classmethod
    def read(cls, path: Path) -> Bundle:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise VerificationError(f"cannot read bundle {path}: {e.strerror}") from None
        if len(raw) > _MAX_BUNDLE_BYTES:
            raise VerificationError(f"bundle {path} is over {_MAX_BUNDLE_BYTES} bytes")
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise VerificationError(f"bundle {path} is not JSON: {e}") from None
        except RecursionError:
            raise VerificationError(f"bundle {path} is nested too deeply") from None
        return cls.from_json(doc)


class BundleFormat(OutputFormat):
    """`--format bundle`: one JSON bundle with the signatures, approvals and audit proof."""

    name: ClassVar[str] = "bundle"
    summary: ClassVar[str] = "an evidence bundle"
    suffix: ClassVar[str] = ".bundle.json"

    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        (path,) = targets
        write_json(path, Bundle.of(signed).to_json())
        return [f"bundle written to {path}"]

    def verify(self, evidence: Evidence) -> Verdict:
        return verify_bundle_file(evidence)


def verify_bundle_file(evidence: Evidence) -> Verdict:
    """`signer verify --bundle`: read the trust file and the bundle, then `verify_bundle`."""
    if evidence.file is None or evidence.trust is None:
        raise ConfigError("a bundle is checked against a file and a trust file")
    trust = Trust.load(evidence.trust)
    if evidence.chain is not None and not trust.policy_sha256:
        raise ConfigError("--chain needs a trust file that pins a policy version (policy = ...)")
    try:
        newer = Bundle.read(evidence.chain) if evidence.chain is not None else None
        result = verify_bundle(Bundle.read(evidence.path), trust, evidence.file, newer)
    except VerificationError as e:
        raise VerificationError(f"bundle INVALID: {e}") from None
    under = (
        f" under policy version {result.policy_version}, reached from the pinned one"
        if result.policy_version is not None
        else ""
    )
    text = (
        f"bundle OK: {evidence.file.name} signed by key {result.key_name} after approval by "
        f"{', '.join(result.approvers)} ({len(result.approvers)} of the required "
        f"{result.threshold}){under}; on the audit log at index {result.log_index} "
        f"(checkpoint of {result.tree_size} entries signed by {trust.audit_verifier.name})"
    )
    fields = {
        "request_id": result.request_id,
        "key_name": result.key_name,
        "artifact": result.artifact,
        "approvers": list(result.approvers),
        "log_index": result.log_index,
        "tree_size": result.tree_size,
        **({"policy_version": result.policy_version} if result.policy_version else {}),
    }
    return Verdict(text, fields)


def _digest(x: Any) -> Digest:
    """One signed digest of a bundle: a known hash algorithm and a digest of its size."""
    if not isinstance(x, dict):
        raise TypeError("a digest must be an object")
    alg, artifact = x["algorithm"], x["artifact"]
    if not isinstance(alg, str) or alg not in HASH_SIZES:
        raise ValueError(f"digest algorithm {str(alg)[:32]!r} is not one of sha256, sha384, sha512")
    if not isinstance(artifact, str):
        raise TypeError("a digest's artifact must be a string")
    d = Digest.from_dict(x)
    if len(d.value) != HASH_SIZES[alg]:
        raise ValueError(f"a {alg} digest is {HASH_SIZES[alg]} bytes, not {len(d.value)}")
    return d


@dataclass(frozen=True)
class VerifiedBundle:
    request_id: str
    key_name: str
    artifact: str
    approvers: tuple[str, ...]
    log_index: int
    tree_size: int
    statement: InTotoStatement | None = field(default=None)
    threshold: int = 0  # the threshold it was checked against
    policy_version: int | None = None  # the version signed under, for a pinned policy


def _file_digests(path: Path) -> dict[str, bytes]:
    """The file's digest with every hash; an unreadable file fails the verification."""
    try:
        return file_digests(path, HASH_SIZES)
    except ConfigError as e:
        raise VerificationError(str(e)) from None


def verify_bundle(
    bundle: Bundle, trust: Trust, artifact: Path, newer: Bundle | None = None
) -> VerifiedBundle:
    """Check signature, quorum and log inclusion offline; raise VerificationError. With a
    trust file that pins a policy version, what is checked comes from the version the
    bundle's chain reaches from it (and revocations also from `newer`'s chain)."""
    pins = pins_for(bundle, trust, newer)
    # 1. The pinned key.
    pinned_id = key_id(pins.public_key)
    if bundle.key_id != pinned_id:
        raise VerificationError(
            f"the bundle is for key {bundle.key_id[:16]}..., the pinned key is {pinned_id[:16]}..."
        )
    alg = ALGORITHMS.get(bundle.algorithm)
    if alg is None or not alg.signs_digests:
        raise VerificationError(f"unknown signing algorithm {bundle.algorithm!r}")
    if not bundle.digests or len(bundle.digests) != len(bundle.signatures):
        raise VerificationError("the bundle needs one signature per digest")
    # 2. The artifact is covered, and every signature verifies.
    for d, sig in zip(bundle.digests, bundle.signatures, strict=True):
        try:
            verify_digest(pins.public_key, d.algorithm, d.value, sig, alg.scheme)
        except (InvalidSignature, InvalidArgumentError, ValueError) as e:
            raise VerificationError(
                f"the signature over {d.artifact} does not verify with the pinned key"
            ) from e
    file_digests = _file_digests(artifact)
    statement = None
    if bundle.dsse is not None:
        statement, covered = _check_dsse(bundle, file_digests, artifact)
    elif bundle.payload_type:
        covered = _check_typed(bundle, file_digests, artifact, pins.public_key)
    else:
        found = next((d for d in bundle.digests if file_digests.get(d.algorithm) == d.value), None)
        if found is None:
            raise VerificationError(f"{artifact.name}'s digest is not one the bundle signs")
        covered = found.artifact
    # 3. The quorum.
    approvers, approved_at = _check_approvals(bundle, pins)
    # 4. On the record (under the version the chain reaches, by a key not revoked then).
    checkpoint = verify_signed_proof(
        bundle.audit,
        trust.audit_verifier,
        bundle.request_id,
        bundle.key_id,
        list(bundle.signatures),
    )
    check_signed_under(pins, bundle, approved_at)
    return VerifiedBundle(
        bundle.request_id,
        bundle.key_name,
        covered,
        approvers,
        bundle.audit.index,
        checkpoint.size,
        statement,
        pins.threshold,
        pins.version.number if pins.version is not None else None,
    )


def _check_typed(
    bundle: Bundle, file_digests: Mapping[str, bytes], artifact: Path, pinned: PublicKeyTypes
) -> str:
    """A typed request's bundle: the signed digests are those its format derives from the
    payload for this key, and the file is one of the artifacts the payload lists."""
    from signer.formats import registry as formats  # the registry imports this module

    try:
        fmt = formats.for_payload_type(bundle.payload_type)
        fmt.check_payload(
            bundle.payload,
            bundle.digests,
            len(bundle.digests),
            PayloadKey(bundle.algorithm, _pem(pinned)),  # the pinned key, not the bundle's
        )
        listed = fmt.artifacts(bundle.payload) or ()
    except (InvalidArgumentError, TooLargeError) as e:
        raise VerificationError(f"the bundle's {bundle.payload_type} payload: {e}") from None
    found = next((a for a in listed if file_digests.get(a.algorithm) == a.value), None)
    if found is None:
        raise VerificationError(f"{artifact.name} is not a file the bundle's request signs")
    if fmt.hashes_files:  # the signed digest is over the file and more: recompute it
        try:
            data = artifact.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read {artifact}: {e.strerror}") from None
        fmt.check_file(bundle.payload, bundle.digests, data, found.artifact)
    return found.artifact


def _pem(key: PublicKeyTypes) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def write_beside(signed: SignedRequest, first: Path) -> str:
    """The request's evidence bundle beside a format's (first) output file; what to say."""
    path = first.with_name(first.name + BundleFormat.suffix)
    write_json(path, Bundle.of(signed).to_json())
    files = len(signed.digests)
    return f"evidence bundle written to {path}" + (
        f" (one for all {files} files)" if files > 1 else ""
    )


def _check_dsse(
    bundle: Bundle, file_digests: Mapping[str, bytes], artifact: Path
) -> tuple[InTotoStatement, str]:
    env = bundle.dsse
    assert env is not None
    try:
        payload = base64.b64decode(env["payload"], validate=True)
        payload_type = env["payloadType"]
        sigs = env["signatures"]
        sig = base64.b64decode(sigs[0]["sig"], validate=True)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise VerificationError(f"malformed DSSE envelope in the bundle: {e!r}") from None
    if payload_type != PAYLOAD_TYPE:
        raise VerificationError(f"the DSSE payload type is not {PAYLOAD_TYPE}")
    if len(sigs) != 1 or len(bundle.digests) != 1 or sig != bundle.signatures[0]:
        raise VerificationError("the DSSE signature is not the bundle's one signature")
    d = bundle.digests[0]
    if pae_digest(payload_type, payload, d.algorithm) != d.value:
        raise VerificationError("the signed digest is not that of the DSSE payload")
    try:
        statement = InTotoStatement.parse(payload)
    except InvalidArgumentError as e:
        raise VerificationError(str(e)) from None
    subject = statement.covers(None, file_digests)
    if subject is None:
        raise VerificationError(f"{artifact.name} is not a subject of the signed statement")
    return statement, subject.name


def _verify_by_any(
    env: Envelope, approvers: Mapping[str, ApprovalKey]
) -> tuple[str, ApprovalKey, Statement] | None:
    """The pinned officer whose key verifies the envelope, and what they signed."""
    for name, key in sorted(approvers.items()):
        try:
            return name, key, env.verify(key)
        except EnvelopeError:
            continue
    return None


def _payload_of(bundle: Bundle) -> PayloadBinding | None:
    """The payload the bundle's request carried: a typed payload, or a DSSE envelope's
    (checked before)."""
    if bundle.payload_type:
        return PayloadBinding.of(bundle.payload_type, bundle.payload)
    if bundle.dsse is None:
        return None
    try:
        payload = base64.b64decode(bundle.dsse["payload"], validate=True)
        return PayloadBinding.of(str(bundle.dsse["payloadType"]), payload)
    except (KeyError, TypeError, ValueError):
        raise VerificationError("the bundle's DSSE envelope is malformed") from None


def _check_approvals(bundle: Bundle, trust: Pins) -> tuple[tuple[str, ...], dt.datetime]:
    """Who approved (a quorum under `trust`), and when the last of them did (their own
    statements' time)."""
    binding = Binding(
        bundle.request_id, bundle.key_name, bundle.key_id, bundle.digests, _payload_of(bundle)
    )
    valid: list[tuple[str, ApprovalKey]] = []
    latest = dt.datetime.min.replace(tzinfo=dt.UTC)
    for i, raw in enumerate(bundle.approvals):
        try:
            env = Envelope.parse(raw)
        except EnvelopeError as e:
            raise VerificationError(f"approval {i} is malformed: {e}") from None
        found = _verify_by_any(env, trust.approvers)
        if found is None:
            raise VerificationError(f"approval {i} is not signed by any pinned officer's key")
        claimed, key, st = found
        try:
            binding.check(st, claimed, "approve")
        except StatementMismatchError as e:
            raise VerificationError(
                f"approval {i} ({claimed}) is not for this signature: {', '.join(e.fields)} differ"
            ) from None
        valid.append((claimed, key))
        latest = max(latest, st.issued_at)
        if len(distinct_approvers(valid)) < len(valid):
            raise VerificationError(f"approval {i}: {claimed} is counted twice")
    if len(valid) < trust.threshold:
        raise VerificationError(
            f"{len(valid)} distinct officers approved; the pinned threshold is {trust.threshold}"
        )
    return tuple(sorted(name for name, _ in valid)), latest
