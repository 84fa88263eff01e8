"""What the consumer of an evidence bundle pins, and what a bundle is checked against.

A trust file (TOML) pins either the signing key, the officers' approval keys and a
threshold, or one policy version (docs/architecture.md §11). With a policy pinned, `pins_for` walks
the bundle's chain from that version (`signer.policy_chain.check_chain`, each link
approved by a threshold of the officers before and after) and takes the key id, the
officers' keys and the threshold from the version it reaches; `check_signed_under`
then requires the signature's log entry to name that version and to be earlier than
any revocation of its key the verifier knows (from the bundle's chain or a newer one).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from signer.approval import registry
from signer.approval.keys import ApprovalKey
from signer.audit.entry import AuditEntry
from signer.audit.note import Verifier
from signer.core.policy import KeyPolicy, Revocation, key_id_problem, revocations_of
from signer.encoding import format_time
from signer.errors import ConfigError, PolicyChainError, VerificationError
from signer.policy_chain import Version, check_chain, version_of

if TYPE_CHECKING:
    from signer.formats.bundle import Bundle

__all__ = ["Pins", "Trust", "check_signed_under", "key_id", "pins_for"]


def key_id(public_key: PublicKeyTypes) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class Trust:
    """What the consumer of a signature pins, independently of the server: either the
    signing key, the officers' keys and a threshold, or one policy version (`policy`),
    from which the bundle's chain gives all three as in force when it was signed."""

    public_key: PublicKeyTypes | None
    approvers: Mapping[str, ApprovalKey]
    threshold: int
    audit_verifier: Verifier
    path: Path | None = None
    policy_sha256: str = ""  # a pinned policy version (its document's SHA-256)

    @classmethod
    def load(cls, path: Path) -> Trust:
        """Read a trust file (TOML): audit_verifier, and either public_key, threshold,
        [approvers], or policy (the SHA-256 of a policy version, `signer policy history`).
        Each key is a PEM public key written in the file (self-contained: a copy anywhere
        works), or the path of a PEM file, relative to the trust file."""
        path = path.resolve()
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read trust file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"trust file {path}: not valid TOML: {e}") from None
        pins_policy = "policy" in raw
        allowed = (
            {"policy", "audit_verifier"}
            if pins_policy
            else {"public_key", "threshold", "audit_verifier", "approvers"}
        )
        unknown = sorted(set(raw) - allowed)
        if unknown:
            also = " (a trust file that pins a policy version pins nothing else)"
            raise ConfigError(
                f"trust file {path}: unknown setting {unknown[0]!r}{also if pins_policy else ''}"
            )
        try:
            verifier = Verifier.parse(str(raw.get("audit_verifier", "")))
        except VerificationError as e:
            raise ConfigError(f"trust file {path}: audit_verifier: {e}") from None
        if pins_policy:
            pinned = raw["policy"]
            if not isinstance(pinned, str) or key_id_problem(pinned) is not None:
                raise ConfigError(
                    f"trust file {path}: policy must be the SHA-256 of a policy version "
                    "(64 lowercase hex digits, as `signer policy history --json` gives it)"
                )
            return cls(None, {}, 0, verifier, path, pinned)

        def pem(value: Any, what: str) -> PublicKeyTypes:
            """A public key written in the file (PEM), or in the PEM file it names."""
            if not isinstance(value, str):
                raise ConfigError(
                    f"trust file {path}: {what} must be a PEM public key, or a path to one"
                )
            if value.lstrip().startswith("-----BEGIN"):
                if value.count("-----BEGIN") != 1:
                    raise ConfigError(f"trust file {path}: {what}: give one PEM public key")
                try:
                    return serialization.load_pem_public_key(value.strip().encode())
                except ValueError as e:
                    raise ConfigError(
                        f"trust file {path}: {what}: not a PEM public key: {e}"
                    ) from None
            p = Path(value) if Path(value).is_absolute() else path.parent / value
            try:
                data = p.read_bytes()
                if data.count(b"-----BEGIN") > 1:
                    raise ValueError("it holds more than one PEM block; give one public key")
                return serialization.load_pem_public_key(data)
            except (OSError, ValueError) as e:
                raise ConfigError(f"trust file {path}: {what}: cannot load {p}: {e}") from None

        approvers_raw = raw.get("approvers")
        if not isinstance(approvers_raw, dict) or not approvers_raw:
            raise ConfigError(
                f"trust file {path}: [approvers] must name NAME = PEM (or PEM-PATH) entries"
            )
        approvers = {}
        for name, value in approvers_raw.items():
            k = registry.key_for(pem(value, f"approvers.{name}"))
            if k is None:
                raise ConfigError(
                    f"trust file {path}: approvers.{name} is not an {registry.supported()} key"
                )
            approvers[name] = k
        threshold = raw.get("threshold")
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise ConfigError(f"trust file {path}: threshold must be a positive integer")
        if threshold > len(approvers):
            raise ConfigError(
                f"trust file {path}: threshold {threshold} is more than the "
                f"{len(approvers)} approvers listed"
            )
        return cls(pem(raw.get("public_key"), "public_key"), approvers, threshold, verifier, path)


@dataclass(frozen=True)
class Pins:
    """What a bundle is checked against: the trust file's own pins, or those of the policy
    version it was signed under, reached from the pinned version."""

    public_key: PublicKeyTypes
    approvers: Mapping[str, ApprovalKey]
    threshold: int
    version: Version | None = None  # the version signed under, when the trust pins one
    revoked: Mapping[str, Revocation] = field(default_factory=dict)
    rule: KeyPolicy | None = None  # the key's rule in that version (its release windows)


def pins_for(bundle: Bundle, trust: Trust, newer: Bundle | None) -> Pins:
    if not trust.policy_sha256:
        assert trust.public_key is not None
        return Pins(trust.public_key, trust.approvers, trust.threshold)
    chain, version = _walk(bundle.policy_chain, trust.policy_sha256, "the bundle's")
    doc = version.document
    try:
        rule = KeyPolicy.from_dict(doc["keys"][bundle.key_name], f"keys.{bundle.key_name}")
        keys = {
            n: registry.key_from_policy(v)
            for n, v in doc["approver_keys"].items()
            if n in rule.approvers
        }
        revoked = dict(revocations_of(doc))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VerificationError(
            f"policy version {version.number} has no usable rule for key {bundle.key_name!r}: "
            f"{str(e)[:200]}"
        ) from None
    if rule.key_id != bundle.key_id:
        raise VerificationError(
            f"the bundle is for key {bundle.key_id[:16]}..., policy version {version.number} "
            f"pins {rule.key_id[:16] or 'no key'}... for {bundle.key_name!r}"
        )
    try:
        public = serialization.load_pem_public_key(bundle.public_key_pem.encode())
    except ValueError:
        raise VerificationError("the bundle's public key is not a PEM public key") from None
    if key_id(public) != bundle.key_id:
        raise VerificationError("the bundle's public key is not the key its key id names")
    if newer is not None:  # a later chain: the revocations known since
        later, latest = _walk(newer.policy_chain, trust.policy_sha256, "the newer bundle's")
        if [v.sha256 for v in later[: len(chain)]] != [v.sha256 for v in chain]:
            raise VerificationError(
                "the newer bundle's policy chain does not begin with this bundle's (up to "
                f"version {version.number}, which it was signed under): two histories"
            )
        try:
            revoked.update(revocations_of(latest.document))
        except ValueError as e:
            raise VerificationError(f"policy version {latest.number}: {e}") from None
    return Pins(public, keys, rule.threshold, version, revoked, rule)


def _walk(
    chain: Sequence[Mapping[str, Any]], pinned: str, whose: str
) -> tuple[list[Version], Version]:
    """The versions of `chain` and the last of them, once it is reached from the pinned one
    link by link."""
    if not chain:
        raise VerificationError(
            f"{whose} carries no policy chain; the trust file pins policy {pinned[:16]}..."
        )
    try:
        versions = [version_of(d, i) for i, d in enumerate(chain)]
        return versions, check_chain(versions, pinned)
    except PolicyChainError as e:
        raise VerificationError(f"{whose} policy chain: {e}") from None


def check_signed_under(pins: Pins, bundle: Bundle, approved_at: dt.datetime) -> None:
    """A pinned policy: the signature was logged under the version the chain reaches, by
    a key not revoked at the time it was logged, nor when the last counted officer
    approved it (`approved_at`: a time from an officer's clock, where the log's time is
    the server's)."""
    if pins.version is None:
        return
    entry = AuditEntry.from_bytes(bundle.audit.entry)  # verified by `verify_signed_proof`
    under = entry.details.get("policy_sha256")
    if under != pins.version.sha256:
        raise VerificationError(
            f"the signature was logged under policy {str(under)[:16]}..., not version "
            f"{pins.version.number} that the bundle's chain reaches"
        )
    if pins.rule is not None and (outside := pins.rule.signing_problem(entry.time)) is not None:
        raise VerificationError(f"the signature was logged at {format_time(entry.time)}: {outside}")
    revoked = pins.revoked.get(bundle.key_id)
    if revoked is None:
        return
    if entry.time >= revoked.at:
        raise VerificationError(
            f"key {bundle.key_id[:16]}... was revoked at {format_time(revoked.at)} "
            f"({revoked.reason}); this signature was logged after, at {format_time(entry.time)}"
        )
    if approved_at >= revoked.at:
        raise VerificationError(
            f"key {bundle.key_id[:16]}... was revoked at {format_time(revoked.at)} "
            f"({revoked.reason}); an officer approved this signature after, at "
            f"{format_time(approved_at)} (the log's earlier time is not believed)"
        )
