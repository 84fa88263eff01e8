"""The policy chain (docs/architecture.md §11): no one alone changes who may sign.

The security policy is a canonical document (`signer.server.config.Config.policy_document`:
keys, identities, approver keys, access, OIDC issuers, and its `policy` officers).
Each version names the SHA-256 of the one before it, and is in force only with
approvals from a threshold of the previous version's policy officers **and** a
threshold of its own, each counted as distinct people and distinct approval keys
(`signer.dsse.distinct_approvers`) — TUF's root-rotation rule, so neither the old
officers alone nor a new set they never approved can take over. Version 1 is
approved by a threshold of its own officers.

An approval is a DSSE envelope (payload type `PAYLOAD_TYPE`, never an approval of a
signing request) over the canonical JSON statement

    {"version": N, "policy_sha256": hex, "previous_sha256": hex or "",
     "officer": NAME, "issued_at": RFC 3339}

signed with the officer's approval key as the policy that counts it records it.
`check_next` is the one rule: the server (at start and at every change), the
offline audit verifier and bundle verification call it, and its errors name what
is missing.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signer.approval import registry
from signer.approval.keys import ApprovalKey, ApprovalSigner
from signer.core.policy import revocation_problem
from signer.dsse import Envelope, distinct_approvers, sign_payload
from signer.encoding import canonical_json, format_time, parse_time
from signer.errors import EnvelopeError, PolicyChainError

__all__ = [
    "MAX_APPROVALS",
    "PAYLOAD_TYPE",
    "PROPOSAL_TYPE",
    "Officers",
    "PolicyApproval",
    "Proposal",
    "Version",
    "check_chain",
    "check_next",
    "details_of",
    "diff",
    "lifted_freezes",
    "new_lifts",
    "sign_approval",
    "version_of",
]

PAYLOAD_TYPE = "application/vnd.signer.policy-approval.v1+json"
_FIELDS = {"version", "policy_sha256", "previous_sha256", "officer", "issued_at"}


def _sha256_hex(value: Any, where: str, empty: bool = False) -> str:
    if not isinstance(value, str) or not (
        (empty and value == "")
        or (len(value) == 64 and all(c in "0123456789abcdef" for c in value))
    ):
        raise ValueError(f"{where} must be 64 lowercase hex digits{' or empty' if empty else ''}")
    return value


@dataclass(frozen=True)
class PolicyApproval:
    """One officer's approval of one policy version, as signed."""

    version: int
    policy_sha256: str
    previous_sha256: str
    officer: str
    issued_at: dt.datetime

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "version": self.version,
                "policy_sha256": self.policy_sha256,
                "previous_sha256": self.previous_sha256,
                "officer": self.officer,
                "issued_at": format_time(self.issued_at),
            }
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> PolicyApproval:
        """The statement, strictly: exact fields, canonical form; EnvelopeError if not."""
        try:
            d = json.loads(payload)
            if not isinstance(d, dict) or set(d) != _FIELDS:
                raise ValueError(f"fields must be exactly {', '.join(sorted(_FIELDS))}")
            version = d["version"]
            if type(version) is not int or version < 1:
                raise ValueError("version must be a positive integer")
            if not isinstance(d["officer"], str) or not d["officer"]:
                raise ValueError("officer must be a name")
            approval = cls(
                version,
                _sha256_hex(d["policy_sha256"], "policy_sha256"),
                _sha256_hex(d["previous_sha256"], "previous_sha256", empty=version == 1),
                d["officer"],
                parse_time(d["issued_at"]),
            )
        except (ValueError, TypeError, RecursionError) as e:
            raise EnvelopeError(f"not a policy approval: {str(e)[:200]}") from None
        if approval.to_bytes() != payload:
            raise EnvelopeError("the policy approval is not in canonical JSON form")
        return approval


@dataclass(frozen=True)
class Officers:
    """Who approves changes to a policy version: its `policy` officers, how many of them,
    and their approval keys as that version records them."""

    names: tuple[str, ...]
    threshold: int
    keys: Mapping[str, ApprovalKey]

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> Officers:
        """The officers of a policy document; PolicyChainError naming what is wrong."""
        section = document.get("policy")
        if not isinstance(section, dict) or set(section) != {"officers", "threshold"}:
            raise PolicyChainError("the policy names no policy officers ([policy] officers)")
        names, threshold = section["officers"], section["threshold"]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
        ):
            raise PolicyChainError("[policy] officers must be a list of distinct names")
        if type(threshold) is not int or not 1 <= threshold <= len(names):
            raise PolicyChainError(
                f"[policy] threshold must be 1 to {len(names)} (the number of officers)"
            )
        recorded = document.get("approver_keys")
        keys: dict[str, ApprovalKey] = {}
        for name in names:
            value = recorded.get(name) if isinstance(recorded, dict) else None
            if not isinstance(value, str):
                raise PolicyChainError(f"policy officer {name!r} has no approval key")
            try:
                keys[name] = registry.key_from_policy(value)
            except ValueError as e:
                raise PolicyChainError(f"policy officer {name!r}: {e}") from None
        return cls(tuple(names), threshold, keys)


@dataclass(frozen=True)
class Version:
    """One link of the chain: its number, document, the hash it names, its approvals."""

    number: int
    document: Mapping[str, Any]
    previous_sha256: str
    approvals: tuple[bytes, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(dict(self.document))).hexdigest()

    def approvers(self, officers: Officers) -> list[str]:
        """The distinct people among `officers` whose approvals of exactly this version
        verify with the keys `officers` records."""
        valid: list[tuple[str, ApprovalKey]] = []
        for raw in self.approvals:
            try:
                env = Envelope.parse(raw, PAYLOAD_TYPE)
            except EnvelopeError:
                continue
            for name in officers.names:
                key = officers.keys[name]
                try:
                    statement = PolicyApproval.from_bytes(env.verified_payload(key))
                except EnvelopeError:
                    continue
                if statement == PolicyApproval(
                    self.number, self.sha256, self.previous_sha256, name, statement.issued_at
                ):
                    valid.append((name, key))
                break
        return distinct_approvers(valid)


PROPOSAL_TYPE = "signer policy proposal v1"
MAX_PROPOSAL_BYTES = 1 << 20


@dataclass(frozen=True)
class Proposal:
    """What officers are asked to approve: version `number` with `document`, after the
    version whose hash is `previous_sha256` (its document beside it, for the diff)."""

    number: int
    previous_sha256: str
    document: Mapping[str, Any]
    previous_document: Mapping[str, Any] | None

    @property
    def version(self) -> Version:
        return Version(self.number, self.document, self.previous_sha256, ())

    @property
    def sha256(self) -> str:
        return self.version.sha256

    def to_json(self) -> dict[str, Any]:
        return {
            "type": PROPOSAL_TYPE,
            "version": self.number,
            "sha256": self.sha256,
            "previous_sha256": self.previous_sha256,
            "document": dict(self.document),
            "previous_document": (
                dict(self.previous_document) if self.previous_document is not None else None
            ),
        }

    @classmethod
    def from_bytes(cls, raw: bytes) -> Proposal:
        """A proposal file, strictly; ValueError naming what is wrong."""
        if len(raw) > MAX_PROPOSAL_BYTES:
            raise ValueError(f"larger than {MAX_PROPOSAL_BYTES} bytes")
        try:
            d = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ValueError(f"not JSON: {str(e)[:200]}") from None
        fields = {"type", "version", "sha256", "previous_sha256", "document", "previous_document"}
        if not isinstance(d, dict) or set(d) != fields or d["type"] != PROPOSAL_TYPE:
            raise ValueError(f"not a {PROPOSAL_TYPE} (fields: {', '.join(sorted(fields))})")
        number, previous, document, before = (
            d["version"],
            d["previous_sha256"],
            d["document"],
            d["previous_document"],
        )
        if type(number) is not int or number < 1:
            raise ValueError("version must be a positive integer")
        if not isinstance(previous, str) or not isinstance(document, dict):
            raise ValueError("previous_sha256 must be a string and document an object")
        if (number == 1) != (before is None) or not isinstance(before, dict | None):
            raise ValueError("previous_document must be an object, null only for version 1")
        if number == 1 and previous:
            raise ValueError("version 1 follows no version")
        if before is not None and _sha256(before) != previous:
            raise ValueError("previous_document is not the version whose hash it names")
        proposal = cls(number, previous, document, before)
        if d["sha256"] != proposal.sha256:
            raise ValueError("sha256 is not the document's")
        return proposal


def _sha256(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(dict(document))).hexdigest()


def check_next(previous: Version | None, version: Version) -> tuple[str, ...]:
    """Raise PolicyChainError unless `version` is exactly the next link after `previous`
    (None: `version` is the first); return who approved it. The message names what is
    missing: the number, the hash, or whose approvals."""
    if previous is None:
        if version.number != 1 or version.previous_sha256:
            raise PolicyChainError(
                f"policy version {version.number} is not the first: the chain starts at "
                "version 1, which names no previous version"
            )
    else:
        if version.number != previous.number + 1:
            what = "a replay of an older version" if version.number <= previous.number else "skips"
            raise PolicyChainError(
                f"policy version {version.number} cannot follow version {previous.number} "
                f"({what}); the next is version {previous.number + 1}"
            )
        if version.previous_sha256 != previous.sha256:
            raise PolicyChainError(
                f"policy version {version.number} names previous version "
                f"{version.previous_sha256[:16] or 'none'}..., but version {previous.number} "
                f"in force is {previous.sha256[:16]}... (a fork)"
            )
    problem = revocation_problem(previous.document if previous else None, version.document)
    if problem is not None:
        raise PolicyChainError(f"policy version {version.number} is refused: {problem}")
    own = Officers.of(version.document)
    needed = [("its own", own)]
    if previous is not None:
        needed.insert(0, (f"version {previous.number}'s", Officers.of(previous.document)))
    approvers: set[str] = set()
    for whose, officers in needed:
        found = version.approvers(officers)
        if len(found) < officers.threshold:
            missing = [n for n in officers.names if n not in found]
            raise PolicyChainError(
                f"policy version {version.number} has {len(found)} of the "
                f"{officers.threshold} approvals it needs from {whose} policy officers "
                f"({', '.join(found) or 'none'} approved; still needed from "
                f"{', '.join(missing)})",
                details={"missing": missing},
            )
        approvers.update(found)
    return tuple(sorted(approvers))


def check_chain(versions: Sequence[Version], pinned_sha256: str = "") -> Version:
    """Walk `versions` (oldest first) and return the one in force. From the version whose
    hash is `pinned_sha256` (trusted as it is, as a verifier who pinned it does), else
    from version 1 (checked as the first link); PolicyChainError at the first bad link."""
    if not versions:
        raise PolicyChainError("no policy versions")
    start = 0
    if pinned_sha256:
        found = [i for i, v in enumerate(versions) if v.sha256 == pinned_sha256]
        if not found:
            raise PolicyChainError(f"the pinned policy {pinned_sha256[:16]}... is not in the chain")
        start = found[0]
    else:
        check_next(None, versions[0])
    for previous, version in zip(versions[start:], versions[start + 1 :], strict=False):
        check_next(previous, version)
    return versions[-1]


def sign_approval(
    version: Version, officer: str, signer: ApprovalSigner, now: dt.datetime
) -> bytes:
    """`officer`'s approval envelope of `version`, signed with their approval key."""
    statement = PolicyApproval(
        version.number, version.sha256, version.previous_sha256, officer, now
    )
    return sign_payload(PAYLOAD_TYPE, statement.to_bytes(), signer)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def _flat(value: Any, path: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for k in sorted(value):
            # A key that is not plain is shown quoted, so no two paths read the same
            # (issuers `gh` and `gh.officers`).
            part = k if _PLAIN_KEY.match(str(k)) else json.dumps(str(k), ensure_ascii=False)
            _flat(value[k], f"{path}.{part}" if path else part, out)
    else:
        out[path] = json.dumps(value, sort_keys=True, ensure_ascii=False)


def diff(
    before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> list[tuple[str, str | None, str | None]]:
    """What changes from policy `before` to `after`: (dotted path, old value, new value),
    a value as JSON, None where the path is absent; sorted by path. Every path of
    `after` if there is no `before` (version 1)."""
    old: dict[str, str] = {}
    new: dict[str, str] = {}
    if before is not None:
        _flat(dict(before), "", old)
    _flat(dict(after), "", new)
    return [
        (path, old.get(path), new.get(path))
        for path in sorted(set(old) | set(new))
        if old.get(path) != new.get(path)
    ]


# -- a version as its `policy.adopted` audit entry records it ------------------------

MAX_APPROVALS = 64  # envelopes kept with one version


def details_of(version: Version, approvers: Sequence[str]) -> dict[str, Any]:
    """A version as its `policy.adopted` entry records it."""
    return {
        "version": version.number,
        "sha256": version.sha256,
        "previous_sha256": version.previous_sha256,
        "document": dict(version.document),
        "approvals": [base64.b64encode(a).decode() for a in version.approvals],
        "approvers": list(approvers),
    }


def version_of(details: Mapping[str, Any], index: int) -> Version:
    """The version a `policy.adopted` entry (at log `index`) records; PolicyChainError
    naming the entry if it is not one."""
    try:
        number, document = details["version"], details["document"]
        previous, approvals = details["previous_sha256"], details["approvals"]
        if type(number) is not int or not isinstance(document, dict):
            raise TypeError("version or document")
        if not isinstance(previous, str) or not isinstance(approvals, list):
            raise TypeError("previous_sha256 or approvals")
        if len(approvals) > MAX_APPROVALS:
            raise ValueError(f"more than {MAX_APPROVALS} approvals")
        raw = tuple(base64.b64decode(a, validate=True) for a in approvals)
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise PolicyChainError(f"audit entry {index} is not a policy version: {e}") from None
    version = Version(number, document, previous, raw)
    try:
        sha256 = version.sha256
    except (ValueError, TypeError):  # no canonical JSON: a float, a lone surrogate
        raise PolicyChainError(
            f"audit entry {index}: its policy document is not canonical JSON"
        ) from None
    if details.get("sha256") != sha256:
        raise PolicyChainError(f"audit entry {index}: its policy hash is not its document's")
    return version


def lifted_freezes(document: Mapping[str, Any]) -> dict[str, int]:
    """Key name -> the audit index of the freeze a policy document lifts (its keys'
    `lift_freeze`)."""
    keys = document.get("keys")
    out = {}
    for name, rule in keys.items() if isinstance(keys, dict) else ():
        index = rule.get("lift_freeze") if isinstance(rule, dict) else None
        if type(index) is int:
            out[name] = index
    return out


def new_lifts(previous: Version | None, version: Version) -> dict[str, int]:
    """The freezes `version` lifts: its keys' `lift_freeze` that the version before it
    did not already name (an old value carried on lifts nothing again)."""
    before = lifted_freezes(previous.document) if previous is not None else {}
    return {n: i for n, i in lifted_freezes(version.document).items() if before.get(n) != i}
