"""The signing policy: who may request a signature with each key, and who must approve.

Loaded from the server's config file (`signer.server.config` builds it and hashes
`as_dict()` into the audit log at start-up); the core decides with it alone, and
the offline audit verifier reads the recorded copy back with `from_dict`, which
refuses any field of the wrong type or unknown to it (a rule it cannot check).
`KeyPolicy` applies the rules registered in `signer.core.rules.RULES`, the same
ones for the core and the verifier (invariants 2 and 5). Loads nothing of the
state machine, the store or the token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signer.algorithms import ALGORITHMS, KeyAlgorithm
from signer.bounds import echo
from signer.core import rules
from signer.core.limits import FIELDS as LIMIT_FIELDS
from signer.core.limits import KeyLimits, Usage, window_opened
from signer.core.unusual import Unusual
from signer.core.windows import Window
from signer.encoding import format_time, parse_time
from signer.errors import SignerError
from signer.fields import field, strings, typed
from signer.parsing import MAX_TTL

__all__ = [
    "ClaimRule",
    "KeyPolicy",
    "Revocation",
    "key_id_problem",
    "revocation_problem",
    "revocations_of",
]

_KEY_FIELDS = frozenset(
    {
        "name",
        "algorithm",
        "approvers",
        "threshold",
        "requesters",
        "max_ttl_seconds",
        "oidc",
        "payload_types",
        "lift_freeze",
        "key_id",
        "windows",
        "approval_kinds",
        "unusual",
        *LIMIT_FIELDS,
    }
)
_REVOCATION_FIELDS = frozenset({"key_id", "at", "reason"})
MAX_REASON = 512


def key_id_problem(value: object) -> str | None:
    """Why `value` is not a key id (hex SHA-256 of a public key's SPKI DER), or None."""
    if not isinstance(value, str) or len(value) != 64 or value.strip("0123456789abcdef"):
        return "must be a key id: 64 lowercase hex digits, as `signer keys list` shows"
    return None


@dataclass(frozen=True)
class Revocation:
    """A signing key no longer trusted from `at` on: a signature logged after it fails
    verification, one logged before still passes. Never taken back (`check_next`)."""

    key_id: str
    at: dt.datetime
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "at": format_time(self.at), "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Revocation:
        """The inverse of `as_dict` (hostile input); ValueError names the field."""
        typed(d, dict, where)
        unknown = sorted(set(d) - _REVOCATION_FIELDS)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]} is not a revocation field this verifier knows")
        key_id = field(d, "key_id", str, where)
        if (problem := key_id_problem(key_id)) is not None:
            raise ValueError(f"{where}.key_id {problem}")
        reason = field(d, "reason", str, where)
        if not reason or len(reason) > MAX_REASON:
            raise ValueError(f"{where}.reason must be 1 to {MAX_REASON} characters")
        try:
            at = parse_time(field(d, "at", str, where))
        except ValueError:
            raise ValueError(f"{where}.at must be an RFC 3339 UTC time") from None
        return cls(key_id, at, reason)


@dataclass(frozen=True)
class ClaimRule:
    """Admits an OIDC requester to a key when every condition holds (globs, case-sensitive)."""

    issuer: str
    conditions: tuple[tuple[str, tuple[str, ...]], ...]  # claim -> any of these patterns

    def matches(self, issuer: str, claims: Mapping[str, str]) -> bool:
        return self.failed(issuer, claims) is None

    def failed(self, issuer: str, claims: Mapping[str, str]) -> str | None:
        """The first condition a token with these claims fails, in words; None if none."""
        if issuer != self.issuer:
            return f"the issuer is {echo(issuer)}, not {self.issuer!r}"
        for claim, patterns in self.conditions:
            value = claims.get(claim)
            if value is None:
                return f"the token has no {claim!r} claim"
            if not any(fnmatch.fnmatchcase(value, p) for p in patterns):
                wanted = " or ".join(repr(p) for p in patterns)
                return f"{claim} is {echo(value)}, which matches none of {wanted}"
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"issuer": self.issuer, **{c: list(p) for c, p in self.conditions}}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ClaimRule:
        """The inverse of `as_dict`, every field checked; ValueError names the field."""
        typed(d, dict, where)
        issuer = field(d, "issuer", str, where)
        conditions = tuple((c, tuple(strings(d, c, where))) for c in d if c != "issuer")
        return cls(issuer, conditions)


@dataclass(frozen=True)
class KeyPolicy:
    """Who may request and who must approve signatures with one key."""

    name: str
    algorithm: KeyAlgorithm | None
    approvers: tuple[str, ...]
    threshold: int
    requesters: tuple[str, ...]
    max_ttl: dt.timedelta
    oidc: tuple[ClaimRule, ...] = ()
    payload_types: tuple[str, ...] = ()  # the payloads its requests may carry ("": digests)
    lift_freeze: int | None = None  # the audit index of the freeze this version lifts
    key_id: str = ""  # the token key that signs (hex SHA-256 of its SPKI); "": not pinned
    windows: tuple[Window, ...] = ()  # when it takes requests and signs (none: always)
    # signature counts, approval age, holding requests made outside the windows
    limits: KeyLimits = dataclasses.field(default_factory=KeyLimits)
    # the approval-key kinds whose approvals count (none: any), e.g. FIDO keys only
    approval_kinds: tuple[str, ...] = ()
    # more approvals for a request made at an odd hour or from somewhere new
    unusual: Unusual | None = None

    def admits(self, issuer: str, claims: Mapping[str, str]) -> bool:
        """Whether an OIDC requester with these verified claims may use this key."""
        return any(rule.matches(issuer, claims) for rule in self.oidc)

    def not_admitted(self, issuer: str, claims: Mapping[str, str]) -> str:
        """Why no claim rule admits these claims: each rule's first failed condition."""
        if not self.oidc:
            return "the key admits no OIDC requesters"
        failed = [rule.failed(issuer, claims) or "it admits them" for rule in self.oidc]
        if len(failed) == 1:
            return failed[0]
        return "; ".join(f"rule {i}: {why}" for i, why in enumerate(failed, 1))

    # -- the rules, applied in the order `rules.RULES` lists them --------------------------

    def check_request(self, ask: rules.Ask) -> None:
        """Raise the first rule's refusal of `ask` (a `SignerError`)."""
        for rule in rules.RULES:
            rule.check_request(self, ask)

    def check_approver(self, approver: str) -> None:
        """Raise the first rule's refusal of `approver`'s decisions (a `SignerError`)."""
        for rule in rules.RULES:
            rule.check_approver(self, approver)

    def may_approve(self, approver: str) -> bool:
        """Whether every rule lets `approver`'s decisions on this key count."""
        try:
            self.check_approver(approver)
        except SignerError:
            return False
        return True

    def approvals_needed(self, unusual: bool = False) -> int:
        """The quorum of a request: the threshold, and the extra of an unusual one."""
        extra = self.unusual.extra_approvals if unusual and self.unusual else 0
        return self.threshold + extra

    def quorum_problem(self, counted: Sequence[str], unusual: bool = False) -> str | None:
        """What the first rule finds `counted` (distinct valid approvers) lacks, or None;
        `unusual` for a request its creation found unusual."""
        for rule in rules.RULES:
            problem = rule.quorum_problem(self, counted, unusual)
            if problem is not None:
                return problem
        return None

    def takes_kind(self, kind: str) -> bool:
        """Whether an approval made with a key of `kind` may count for this key."""
        return not self.approval_kinds or kind in self.approval_kinds

    def approval_counts(self, given: dt.datetime, at: dt.datetime) -> bool:
        """Whether every rule lets an approval given at `given` count at `at`."""
        return all(rule.approval_problem(self, given, at) is None for rule in rules.RULES)

    def signing_problem(self, at: dt.datetime, usage: Usage | None = None) -> str | None:
        """Why the first rule keeps the token from signing at `at`, or None; `usage` is the
        key's count of signatures then (None: not known, counts unchecked)."""
        for rule in rules.RULES:
            problem = rule.signing_problem(self, at, usage)
            if problem is not None:
                return problem
        return None

    def window_opened(self, at: dt.datetime) -> dt.datetime | None:
        """When the release window `at` is in opened (None: outside, or no windows)."""
        return window_opened(self.windows, at)

    # -- the recorded form -------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "algorithm": self.algorithm.name if self.algorithm else None,
            "approvers": sorted(self.approvers),
            "threshold": self.threshold,
            "requesters": sorted(self.requesters),
            "max_ttl_seconds": int(self.max_ttl.total_seconds()),
            "oidc": [r.as_dict() for r in self.oidc],
        }
        if self.payload_types:  # absent: any (what policies recorded before it said)
            d["payload_types"] = sorted(self.payload_types)
        if self.lift_freeze is not None:  # absent: lifts none
            d["lift_freeze"] = self.lift_freeze
        if self.key_id:  # absent from policies recorded before keys were pinned
            d["key_id"] = self.key_id
        if self.windows:  # absent: always (what policies recorded before it said)
            d["windows"] = [str(w) for w in self.windows]
        if self.approval_kinds:  # absent: any kind
            d["approval_kinds"] = sorted(self.approval_kinds)
        d.update(self.limits.as_dict())  # each absent while unset
        if self.unusual is not None:  # absent: no request needs more
            d["unusual"] = self.unusual.as_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "policy") -> KeyPolicy:
        """The inverse of `as_dict`, for a recorded policy (hostile input): each field of
        its type and range, no field it does not know; ValueError names the field.

        A missing `oidc` is no claim rules: logs from before OIDC requesters lack it;
        a missing `payload_types` is any payload, as before the rule.
        """
        typed(d, dict, where)
        unknown = sorted(set(d) - _KEY_FIELDS)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]} is not a policy field this verifier knows")
        approvers = strings(d, "approvers", where)
        if len(set(approvers)) != len(approvers):
            raise ValueError(f"{where}.approvers lists an approver twice")
        threshold = field(d, "threshold", int, where)
        if threshold < 1:
            raise ValueError(f"{where}.threshold must be at least 1, not {threshold}")
        ttl = field(d, "max_ttl_seconds", int, where)
        if not 1 <= ttl <= MAX_TTL.total_seconds():
            raise ValueError(
                f"{where}.max_ttl_seconds must be from 1 to {int(MAX_TTL.total_seconds())}"
            )
        windows = windows_of(strings(d, "windows", where, []), f"{where}.windows")
        return cls(
            name=field(d, "name", str, where),
            algorithm=_algorithm(d, where),
            approvers=tuple(approvers),
            threshold=threshold,
            requesters=tuple(strings(d, "requesters", where)),
            max_ttl=dt.timedelta(seconds=ttl),
            oidc=tuple(
                ClaimRule.from_dict(r, f"{where}.oidc[{i}]")
                for i, r in enumerate(field(d, "oidc", list, where, []))
            ),
            payload_types=_payload_types(d, where),
            lift_freeze=_lift_freeze(d, where),
            key_id=_key_id(d, where),
            windows=windows,
            limits=KeyLimits.from_dict(d, where, windows),
            approval_kinds=tuple(strings(d, "approval_kinds", where, [])),
            unusual=_unusual(d, where, len(approvers), threshold),
        )


def windows_of(texts: Sequence[str], where: str) -> tuple[Window, ...]:
    """Release windows as written; ValueError naming the first bad one."""
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(Window.parse(text))
        except ValueError as e:
            raise ValueError(f"{where}[{i}]: {e}") from None
    if len(set(out)) != len(out):
        raise ValueError(f"{where} lists a window twice")
    if len(out) > 32:
        raise ValueError(f"{where}: at most 32 windows")
    return tuple(out)


def _unusual(d: Mapping[str, Any], where: str, approvers: int, threshold: int) -> Unusual | None:
    if "unusual" not in d:
        return None
    unusual = Unusual.from_dict(d["unusual"], f"{where}.unusual", windows_of)
    if (problem := unusual.problem(approvers, threshold)) is not None:
        raise ValueError(f"{where}.unusual: {problem}")
    return unusual


def _key_id(d: Mapping[str, Any], where: str) -> str:
    value: str = field(d, "key_id", str, where, "")
    if "key_id" in d and (problem := key_id_problem(value)) is not None:
        raise ValueError(f"{where}.key_id {problem}")
    return value


def _lift_freeze(d: Mapping[str, Any], where: str) -> int | None:
    index: int | None = field(d, "lift_freeze", int, where, None)
    if index is not None and index < 0:
        raise ValueError(f"{where}.lift_freeze must be an audit index (0 or more)")
    return index


def _payload_types(d: Mapping[str, Any], where: str) -> tuple[str, ...]:
    kinds = strings(d, "payload_types", where, [])
    if "payload_types" in d and not kinds:
        raise ValueError(f"{where}.payload_types, when present, names at least one")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"{where}.payload_types lists one twice")
    return tuple(kinds)


def _algorithm(d: Mapping[str, Any], where: str) -> KeyAlgorithm | None:
    if "algorithm" not in d:
        raise ValueError(f"{where}.algorithm is missing")
    name = d["algorithm"]
    if name is None:
        return None
    if typed(name, str, f"{where}.algorithm") not in ALGORITHMS:
        raise ValueError(f"{where}.algorithm must be one of {', '.join(ALGORITHMS)} or null")
    return ALGORITHMS[name]


def revocations_of(document: Mapping[str, Any]) -> dict[str, Revocation]:
    """Key id -> its revocation, from a recorded policy document (hostile input: ValueError
    names the bad field)."""
    out: dict[str, Revocation] = {}
    for i, raw in enumerate(field(document, "revoked", list, "policy", [])):
        r = Revocation.from_dict(raw, f"policy.revoked[{i}]")
        if r.key_id in out:
            raise ValueError(f"policy.revoked[{i}] revokes key {r.key_id[:16]}... twice")
        out[r.key_id] = r
    return out


def revocation_problem(before: Mapping[str, Any] | None, document: Mapping[str, Any]) -> str | None:
    """What is wrong with `document`'s revocations after those of `before` (the version it
    follows), or None: a revocation is never taken back nor moved later, and no key of
    the document signs with a revoked key id."""
    try:
        now = revocations_of(document)
        earlier = revocations_of(before) if before is not None else {}
        keys = field(document, "keys", dict, "policy", {})
    except ValueError as e:
        return str(e)
    for key_id, r in earlier.items():
        kept = now.get(key_id)
        if kept is None or kept.at > r.at:
            return (
                f"it takes back the revocation of key {key_id[:16]}... (revoked at "
                f"{format_time(r.at)}: {r.reason}); a revocation is never taken back"
            )
    for name, rule in keys.items():
        signs = rule.get("key_id") if isinstance(rule, dict) else None
        if isinstance(signs, str) and signs in now:
            return f"its key {name!r} signs with key {signs[:16]}..., which it revokes"
    return None
