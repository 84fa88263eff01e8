"""The policy parts of the server config: roles, officers' keys, OIDC issuers, keys, access.

Parsed from `[identities]`, `[approvers]`, `[oidc.NAME]`, `[keys.NAME]` (with
its `[[keys.NAME.oidc]]` claim rules) and `[access]`, each error naming the
file, the key and the fix. The rules upheld here, before the server starts:
- one person, one key: no two officers share an approval key (one key id),
  and each is a key of a kind `signer.approval.registry` knows, of an identity
  with the approver role;
- a key's threshold m is 1 <= m <= n over distinct approvers who all have a
  key; its requesters have the requester role, or it has claim rules;
- a claim rule names a configured issuer and at least one claim condition, and
  no pattern of only `*`: no rule lets any pipeline of an issuer sign; every
  claim a rule looks at is recorded with the request;
- an issuer is an https:// URL configured once, with an audience, one JWKS
  source (https:// or a file) and only RS256/ES256; identities starting with
  `oidc:` are reserved for its tokens;
- roles and access rules name only known roles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from signer.algorithms import ALGORITHMS
from signer.approval import registry
from signer.approval.keys import ApprovalKey
from signer.core.limits import COUNTS, MAX_AGE, MAX_COUNT, KeyLimits
from signer.core.policy import (
    MAX_REASON,
    ClaimRule,
    KeyPolicy,
    Revocation,
    key_id_problem,
    windows_of,
)
from signer.core.unusual import Unusual
from signer.core.windows import Window
from signer.encoding import parse_time
from signer.errors import ConfigError
from signer.formats import registry as formats
from signer.parsing import MAX_TTL
from signer.server._config_reader import _SECOND, _duration_of, _Reader
from signer.text import KEY_NAME

__all__ = [
    "ACTOR_CASES",
    "DEFAULT_RECORDED_CLAIMS",
    "JWT_ALGORITHMS",
    "ROLES",
    "IssuerConfig",
]

ROLES = ("requester", "approver", "auditor", "admin")
_NAME = KEY_NAME


JWT_ALGORITHMS = ("RS256", "ES256")
ACTOR_CASES = ("insensitive", "sensitive")  # how an issuer compares actor names (logins)
DEFAULT_RECORDED_CLAIMS = (
    "sub",
    "repository",
    "ref",
    "sha",
    "workflow",
    "job_workflow_ref",
    "environment",
    "actor",
    "run_id",
    "project_path",
    "pipeline_id",
    "user_login",
)


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted OIDC issuer: where its keys are and how its tokens are read."""

    name: str
    issuer: str
    audience: str
    jwks_file: Path | None
    jwks_url: str | None
    jwks_ca: Path | None = None
    algorithms: tuple[str, ...] = JWT_ALGORITHMS
    identity_claim: str = "sub"
    actor_claim: str = "actor"
    recorded_claims: tuple[str, ...] = DEFAULT_RECORDED_CLAIMS
    leeway: dt.timedelta = dt.timedelta(seconds=30)
    jwks_refresh: dt.timedelta = dt.timedelta(seconds=30)  # at most this often on unknown kid
    jwks_max_age: dt.timedelta = dt.timedelta(hours=1)
    officers: Mapping[str, str] = field(default_factory=dict)  # actor claim -> officer
    actor_case: str = "insensitive"  # GitHub and GitLab logins ignore case
    # SHA-256 of the files' contents at load: part of the policy (who may mint tokens)
    jwks_file_sha256: str = ""
    jwks_ca_sha256: str = ""

    def same_actor(self, a: str, b: str) -> bool:
        """Whether two actor names are one account, compared as the issuer compares them.

        Case-insensitive unless the issuer is configured `sensitive`: when in doubt,
        bar more officers, never fewer.
        """
        return a == b if self.actor_case == "sensitive" else a.casefold() == b.casefold()

    def as_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "audience": self.audience,
            "jwks": self.jwks_url or str(self.jwks_file),
            "algorithms": list(self.algorithms),
            "identity_claim": self.identity_claim,
            "actor_claim": self.actor_claim,
            "actor_case": self.actor_case,
            "recorded_claims": list(self.recorded_claims),
            "leeway_seconds": int(self.leeway.total_seconds()),
            "officers": dict(sorted(self.officers.items())),
            **({"jwks_file_sha256": self.jwks_file_sha256} if self.jwks_file_sha256 else {}),
            **({"jwks_ca_sha256": self.jwks_ca_sha256} if self.jwks_ca_sha256 else {}),
        }


def _identities(r: _Reader) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for identity in r.table:
        if identity.startswith("oidc:"):
            raise r.error(identity, "identities starting with oidc: are reserved for OIDC tokens")
        roles = r.names(identity)
        bad = [x for x in roles if x not in ROLES]
        if bad:
            raise r.error(identity, f"unknown role {bad[0]!r}; roles are {', '.join(ROLES)}")
        out[identity] = frozenset(roles)
    return out


def _approver_keys(r: _Reader, identities: Mapping[str, frozenset[str]]) -> dict[str, ApprovalKey]:
    out: dict[str, ApprovalKey] = {}
    for name in r.table:
        if "approver" not in identities.get(name, frozenset()):
            raise r.error(name, f"{name!r} has no approver role; add it under [identities]")
        p = r.path_of(name)
        assert p is not None
        try:
            data = p.read_bytes()
            # A PEM key (`approver keygen`), or an OpenSSH one (a key the officer keeps
            # in ssh-agent, a FIDO key among them: its .pub file as it is).
            key = (
                registry.key_from_openssh(data)
                if registry.is_openssh(data)
                else registry.key_for(serialization.load_pem_public_key(data))
            )
        except (OSError, ValueError, TypeError) as e:
            raise r.error(name, f"cannot load public key {p}: {e}") from None
        if key is None:
            raise r.error(
                name, f"{p} is not an {registry.supported()} public key (make one: approver keygen)"
            )
        twin = next((n for n, k in out.items() if k.key_id == key.key_id), None)
        if twin is not None:
            raise r.error(
                name,
                f"uses the same public key as {twin!r}; one person, one key (quorum counts people)",
            )
        out[name] = key
    return out


def _issuers(r: _Reader, approver_keys: Mapping[str, ApprovalKey]) -> dict[str, IssuerConfig]:
    out: dict[str, IssuerConfig] = {}
    for name in r.table:
        i = r.sub(name)
        i.only(
            "issuer",
            "audience",
            "jwks_file",
            "jwks_url",
            "jwks_ca",
            "algorithms",
            "identity_claim",
            "actor_claim",
            "actor_case",
            "claims",
            "leeway",
            "jwks_refresh",
            "jwks_max_age",
            "officers",
        )
        if not _NAME.match(name):
            raise r.error(name, "issuer names are 1-64 of A-Z a-z 0-9 . _ - ")
        issuer = i.get("issuer", str)
        if not issuer.startswith("https://"):
            raise i.error("issuer", f"{issuer!r} must be the https:// URL tokens carry in iss")
        if any(x.issuer == issuer for x in out.values()):
            raise i.error("issuer", f"{issuer!r} is configured twice")
        audience = i.get("audience", str)
        if not audience:
            raise i.error("audience", "must not be empty")
        jwks_file = i.path_of("jwks_file", None)
        jwks_url = i.get("jwks_url", str, None)
        if (jwks_file is None) == (jwks_url is None):
            raise i.error("jwks_url", "set exactly one of jwks_url or jwks_file")
        if jwks_url is not None and not jwks_url.startswith("https://"):
            raise i.error("jwks_url", f"{jwks_url!r} must be an https:// URL")
        if jwks_file is not None and not jwks_file.is_file():
            raise i.error("jwks_file", f"file {jwks_file} does not exist")
        jwks_ca = i.path_of("jwks_ca", None)
        if jwks_ca is not None and not jwks_ca.is_file():
            raise i.error("jwks_ca", f"file {jwks_ca} does not exist")
        algorithms = i.names("algorithms", list(JWT_ALGORITHMS))
        bad = [a for a in algorithms if a not in JWT_ALGORITHMS]
        if bad or not algorithms:
            raise i.error(
                "algorithms",
                f"{bad[0] if bad else 'none'!r}: allowed are {', '.join(JWT_ALGORITHMS)}",
            )
        officers_table = i.sub("officers", required=False)
        officers: dict[str, str] = {}
        for actor in officers_table.table:
            officer = officers_table.get(actor, str)
            if officer not in approver_keys:
                raise officers_table.error(
                    actor, f"{officer!r} is not an officer under [approvers]"
                )
            officers[actor] = officer
        identity_claim = i.get("identity_claim", str, "sub")
        actor_claim = i.get("actor_claim", str, "actor")
        actor_case = i.get("actor_case", str, "insensitive")
        if actor_case not in ACTOR_CASES:
            raise i.error(
                "actor_case",
                f"{actor_case!r}: must be insensitive (the default: GitHub, GitLab) or sensitive",
            )
        recorded = i.names("claims", list(DEFAULT_RECORDED_CLAIMS))
        out[name] = IssuerConfig(
            name=name,
            issuer=issuer,
            audience=audience,
            jwks_file=jwks_file,
            jwks_url=jwks_url,
            jwks_ca=jwks_ca,
            algorithms=tuple(algorithms),
            identity_claim=identity_claim,
            actor_claim=actor_claim,
            recorded_claims=tuple(dict.fromkeys((*recorded, identity_claim, actor_claim))),
            leeway=_duration_of(i, "leeway", "30s", dt.timedelta(0), dt.timedelta(minutes=5)),
            jwks_refresh=_duration_of(i, "jwks_refresh", "30s", _SECOND, dt.timedelta(hours=1)),
            jwks_max_age=_duration_of(
                i, "jwks_max_age", "1h", dt.timedelta(minutes=1), dt.timedelta(days=1)
            ),
            officers=officers,
            actor_case=actor_case,
            jwks_file_sha256=_file_sha256(i, "jwks_file", jwks_file),
            jwks_ca_sha256=_file_sha256(i, "jwks_ca", jwks_ca),
        )
    return out


def _file_sha256(r: _Reader, key: str, path: Path | None) -> str:
    """SHA-256 of the file's contents, "" without one: what a policy records of a file
    whose contents decide who is trusted (a key set, a CA)."""
    if path is None:
        return ""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise r.error(key, f"cannot read {path}: {e.strerror}") from None


def _record_rule_claims(issuer: IssuerConfig, rules: list[ClaimRule]) -> IssuerConfig:
    """Every claim a key's rule looks at is recorded with the request."""
    needed = [c for r in rules for c, _ in r.conditions]
    recorded = tuple(dict.fromkeys((*issuer.recorded_claims, *needed)))
    return dataclasses.replace(issuer, recorded_claims=recorded)


def _claim_rules(k: _Reader, issuers: Mapping[str, IssuerConfig]) -> tuple[ClaimRule, ...]:
    raw = k.table.get("oidc", [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise k.error("oidc", "must be a list of tables: [[keys.NAME.oidc]]")
    rules = []
    for n, table in enumerate(raw):
        r = _Reader(k.path, table, f"{k.prefix}.oidc[{n}]")
        issuer = r.get("issuer", str)
        if issuer not in issuers:
            raise r.error("issuer", f"{issuer!r} is not an issuer under [oidc]")
        conditions = []
        for claim, value in table.items():
            if claim == "issuer":
                continue
            patterns = [value] if isinstance(value, str) else value
            if (
                not isinstance(patterns, list)
                or not patterns
                or not all(isinstance(p, str) and p for p in patterns)
            ):
                raise r.error(claim, "must be a glob string or a non-empty list of them")
            if any(set(p) <= {"*"} for p in patterns):
                raise r.error(claim, "a pattern of only * matches anything; name the value")
            conditions.append((claim, tuple(patterns)))
        if not conditions:
            raise r.error(
                "issuer",
                'a rule needs at least one claim condition, e.g. repository = "org/app"; '
                "without one any pipeline of that issuer could sign",
            )
        rules.append(ClaimRule(issuer, tuple(conditions)))
    return tuple(rules)


def _keys(
    r: _Reader,
    identities: Mapping[str, frozenset[str]],
    approver_keys: Mapping[str, ApprovalKey],
    issuers: Mapping[str, IssuerConfig],
) -> dict[str, KeyPolicy]:
    out: dict[str, KeyPolicy] = {}
    for name in r.table:
        k = r.sub(name)
        k.only(
            "algorithm",
            "approvers",
            "threshold",
            "requesters",
            "max_ttl",
            "oidc",
            "formats",
            "lift_freeze",
            "key_id",
            "windows",
            "max_signatures_per_request",
            "max_signatures_per_day",
            "max_signatures_per_window",
            "approval_max_age",
            "outside_windows",
            "approval_kinds",
            "unusual",
        )
        if not _NAME.match(name):
            raise r.error(name, "key names are 1-64 of A-Z a-z 0-9 . _ - ")
        alg_name = k.get("algorithm", str, None)
        if alg_name is not None and alg_name not in ALGORITHMS:
            raise k.error("algorithm", f"unknown {alg_name!r}; one of {', '.join(ALGORITHMS)}")
        approvers = k.names("approvers")
        if len(set(approvers)) != len(approvers):
            raise k.error("approvers", "lists an approver twice")
        for a in approvers:
            if a not in approver_keys:
                raise k.error(
                    "approvers", f'{a!r} has no public key; add `{a} = "PATH"` under [approvers]'
                )
        threshold = k.get("threshold", int)
        if not 1 <= threshold <= len(approvers):
            raise k.error(
                "threshold",
                f"is {threshold} with {len(approvers)} approvers; "
                f"set 1 <= threshold <= {len(approvers)}",
            )
        requesters = k.names("requesters", [])
        oidc = _claim_rules(k, issuers)
        if not requesters and not oidc:
            raise k.error("requesters", "missing; name requesters or add [[keys.NAME.oidc]] rules")
        for q in requesters:
            if "requester" not in identities.get(q, frozenset()):
                raise k.error("requesters", f"{q!r} has no requester role under [identities]")
        max_ttl = _duration_of(k, "max_ttl", "1h", _SECOND, MAX_TTL)
        lift = k.get("lift_freeze", int, None)
        if lift is not None and (type(lift) is not int or lift < 0):
            raise k.error("lift_freeze", "must be the audit index of the key.frozen entry")
        key_id = k.get("key_id", str, "")
        if "key_id" in k.table and (problem := key_id_problem(key_id)) is not None:
            raise k.error("key_id", problem)
        twin = next((n for n, p in out.items() if key_id and p.key_id == key_id), None)
        if twin is not None:
            raise k.error("key_id", f"is also the key id of key {twin!r}: one key, one name")
        try:
            windows = windows_of(k.names("windows", []), "windows")
        except ValueError as e:
            raise k.error("windows", str(e).removeprefix("windows")) from None
        out[name] = KeyPolicy(
            name,
            ALGORITHMS[alg_name] if alg_name else None,
            approvers,
            threshold,
            requesters,
            max_ttl,
            oidc,
            _payload_types(k),
            lift,
            key_id,
            windows,
            _limits(k, windows),
            _approval_kinds(k, approvers, approver_keys),
            _unusual(k, len(approvers), threshold),
        )
    return out


def _unusual(k: _Reader, approvers: int, threshold: int) -> Unusual | None:
    """`[keys.NAME.unusual]`: how many more approvals an unusual request needs, and what
    makes one unusual (`signer.core.unusual`)."""
    if "unusual" not in k.table:
        return None
    u = k.sub("unusual")
    u.only("extra_approvals", "usual_hours", "first_signed")
    try:
        hours = windows_of(u.names("usual_hours", []), "usual_hours")
    except ValueError as e:
        raise u.error("usual_hours", str(e).removeprefix("usual_hours").lstrip(": ")) from None
    unusual = Unusual(u.get("extra_approvals", int), hours, u.names("first_signed", ()))
    if (problem := unusual.problem(approvers, threshold)) is not None:
        raise k.error("unusual", problem)
    return unusual


def _approval_kinds(
    k: _Reader, approvers: tuple[str, ...], approver_keys: Mapping[str, ApprovalKey]
) -> tuple[str, ...]:
    """The approval-key kinds a key takes; every one of its approvers must hold one."""
    kinds = k.names("approval_kinds", ())
    known = sorted({kind.kind for kind in registry.KINDS})
    for kind in kinds:
        if kind not in known:
            raise k.error("approval_kinds", f"{kind!r} is not a kind; kinds: {', '.join(known)}")
    for officer in approvers if kinds else ():
        kind = approver_keys[officer].kind
        if kind not in kinds:
            raise k.error(
                "approval_kinds",
                f"approver {officer!r} has a key of kind {kind}, which this key does not take; "
                f"give them a key of a kind listed ({', '.join(kinds)}) or list theirs",
            )
    return tuple(kinds)


def _limits(k: _Reader, windows: tuple[Window, ...]) -> KeyLimits:
    """A key's signature counts, approval age and what happens outside its windows."""
    counts: list[int | None] = []
    for name in COUNTS:
        value = k.get(name, int, None)
        if value is not None and not 1 <= value <= MAX_COUNT:
            raise k.error(name, f"must be from 1 to {MAX_COUNT}")
        counts.append(value)
    age = None
    if "approval_max_age" in k.table:
        age = _duration_of(k, "approval_max_age", "1h", dt.timedelta(minutes=1), MAX_AGE)
    outside = k.get("outside_windows", str, "refuse")
    if outside not in ("refuse", "hold"):
        raise k.error("outside_windows", f"must be refuse or hold, not {outside!r}")
    per_request, per_day, per_window = counts
    limits = KeyLimits(
        per_request, per_day, per_window, age, hold_outside_windows=outside == "hold"
    )
    if (problem := limits.windows_problem(windows)) is not None:
        setting = problem.split(" ", 1)[0]
        raise k.error(setting, problem.split(" ", 1)[1] + "; add `windows = [...]` to the key")
    return limits


def _revoked(
    path: Path, raw: Any, keys: Mapping[str, KeyPolicy], now: dt.datetime
) -> tuple[Revocation, ...]:
    """`[[revoked]]` tables: key_id, at (a TOML date-time with its offset, or RFC 3339
    text), reason. A revoked key id is no key's `key_id`; `at` is not in the future."""
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise ConfigError(f"{path}: revoked: must be a list of tables: [[revoked]]")
    out: list[Revocation] = []
    for n, table in enumerate(raw):
        r = _Reader(path, table, f"revoked[{n}]")
        r.only("key_id", "at", "reason")
        key_id = r.get("key_id", str)
        if (problem := key_id_problem(key_id)) is not None:
            raise r.error("key_id", problem)
        if any(x.key_id == key_id for x in out):
            raise r.error("key_id", "is revoked twice")
        at = r.table.get("at")
        if isinstance(at, str):
            try:
                at = parse_time(at)
            except ValueError:
                raise r.error("at", "must be an RFC 3339 UTC time") from None
        if not isinstance(at, dt.datetime) or at.tzinfo is None:
            raise r.error(
                "at", "missing or not a date-time with its offset, e.g. 2026-12-01T10:00:00Z"
            )
        at = at.astimezone(dt.UTC).replace(microsecond=0)
        if at > now:
            raise r.error("at", "is in the future; a revocation holds from a time already past")
        reason = r.get("reason", str)
        if not reason.strip() or len(reason) > MAX_REASON:
            raise r.error("reason", f"must say why, in 1 to {MAX_REASON} characters")
        signing = next((k for k, p in keys.items() if p.key_id == key_id), None)
        if signing is not None:
            raise r.error(
                "key_id",
                f"is the key id of key {signing!r}, which still signs with it: give that key "
                "its new key id (`signer keys rotate`) in the same version",
            )
        out.append(Revocation(key_id, at, reason))
    return tuple(out)


def _payload_types(k: _Reader) -> tuple[str, ...]:
    """`formats = ["ssh"]`: the typed formats (and `digests`, plain digests) a key's
    requests may use; absent: any. Recorded as the payload types they carry."""
    names = k.names("formats", [])
    if "formats" in k.table and not names:
        raise k.error("formats", "names no format; leave it out to allow any")
    typed = {f.name: f.payload_type for f in formats.FORMATS.values() if f.payload_type}
    known = {"digests": "", **typed}
    bad = [n for n in names if n not in known]
    if bad:
        raise k.error(
            "formats",
            f"unknown {bad[0]!r}; one of {', '.join(known)} (digests: raw, bundle and cosign)",
        )
    if len(set(names)) != len(names):
        raise k.error("formats", "lists a format twice")
    return tuple(known[n] for n in names)


def _access(r: _Reader) -> dict[str, frozenset[str]]:
    out = {}
    for method in r.table:
        if not method.startswith("/"):
            raise r.error(method, "must be a full method name like /signer.v1.AuditService/...")
        roles = r.names(method)
        bad = [x for x in roles if x not in ROLES and x != "*"]
        if bad:
            raise r.error(method, f"unknown role {bad[0]!r}; roles are {', '.join(ROLES)} or *")
        out[method] = frozenset(roles)
    return out


def _policy_officers(
    r: _Reader, approver_keys: Mapping[str, ApprovalKey]
) -> tuple[tuple[str, ...], int]:
    """`[policy]`: the officers who approve changes to the policy, and how many must."""
    r.only("officers", "threshold")
    officers = r.names("officers")
    if not officers:
        raise r.error("officers", "name at least one officer who approves policy changes")
    if len(set(officers)) != len(officers):
        raise r.error("officers", "lists an officer twice")
    for o in officers:
        if o not in approver_keys:
            raise r.error(
                "officers", f'{o!r} has no public key; add `{o} = "PATH"` under [approvers]'
            )
    threshold = r.get("threshold", int)
    if type(threshold) is not int or not 1 <= threshold <= len(officers):
        raise r.error(
            "threshold",
            f"is {threshold} with {len(officers)} officers; set 1 <= threshold <= {len(officers)}",
        )
    return tuple(officers), threshold
