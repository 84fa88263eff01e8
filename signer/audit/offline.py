"""An auditor's offline verification of a fetched log (docs/architecture.md §6, invariant 4).

Needs only the directory written by `signer audit fetch` and the audit
verifier key. Checks, and names the first entry that fails:

- every checkpoint's signature (signed note, pinned verifier) and that no two
  checkpoints of one size differ (a fork);
- every entry is canonical JSON with the index of its position, each of its
  fields of its type (and each detail the checks below read), and the tree
  recomputed from the entries has, at each checkpoint's size, that
  checkpoint's root (so any edit, deletion, insertion or reordering shows);
- the semantics, under the policy in force (recorded whole in `server.started`,
  hash checked, read back strictly with `KeyPolicy.from_dict`, the officers'
  keys with `signer.approval.registry`, whatever their kind) and with the
  core's own rules (`signer.core.rules.RULES`, applied through `KeyPolicy`):
  every `request.created` is one its rules admit (the requester or the OIDC
  pipeline's claims, the lifetime), and every `request.signed` entry is backed
  by approval envelopes, each verified and bound (`dsse.Binding.check`) to the
  same request id, key name, key id and digests, none from the requester (nor
  the actor of an OIDC pipeline), no denial, whose approvers the rules let
  count and make a quorum (distinct people with distinct keys,
  `dsse.distinct_approvers`). Only what the log records is checked: an entry
  without an `expire_time` has no lifetime to check.

Whatever the files hold, the result is a report or one `VerificationError`
naming the entry and the field, never another exception. The files are read
through `LogDir` (no symbolic link is followed), one entry at a time: the tree
needs O(log n) hashes, the replay what it keeps of each request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signer.approval import registry
from signer.approval.keys import ApprovalKey
from signer.audit import merkle
from signer.audit.entry import EVENTS, AuditEntry
from signer.audit.logdir import LogDir
from signer.audit.note import Checkpoint, Verifier, open_checkpoint
from signer.core.limits import SignedCounts
from signer.core.policy import KeyPolicy, Revocation, revocations_of
from signer.core.rules import Ask
from signer.core.unusual import key_of, reasons_of, values_of
from signer.dsse import Binding, Envelope, PayloadBinding, distinct_approvers
from signer.encoding import canonical_json, parse_time
from signer.errors import (
    EnvelopeError,
    PolicyChainError,
    SignerError,
    StatementMismatchError,
    VerificationError,
)
from signer.fields import field, strings, typed
from signer.freeze import FRESHNESS, verify_freeze
from signer.model import Digest, TokenCaller, may_decide
from signer.policy_chain import Proposal, Version, check_next, new_lifts, version_of
from signer.policy_decisions import (
    APPROVAL_MAX_AGE,
    APPROVAL_SKEW,
    Proposed,
    proposal_of,
    verify_decision,
)
from signer.policy_denial import PolicyDenial

__all__ = ["PrefixTree", "Report", "parse_entry", "verify_dir"]


class PrefixTree:
    """Roots of every prefix of a stream of leaves, in O(log n) memory."""

    def __init__(self) -> None:
        self.stack: list[bytes] = []
        self.size = 0

    def push(self, leaf: bytes) -> None:
        h, n = leaf, self.size
        while n & 1:
            h = merkle.node_hash(self.stack.pop(), h)
            n >>= 1
        self.stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return merkle.EMPTY_ROOT
        h = self.stack[-1]
        for left in reversed(self.stack[:-1]):
            h = merkle.node_hash(left, h)
        return h


# -- the type of every field -------------------------------------------------------------


_ENTRY_FIELDS: dict[str, type] = {
    "index": int,
    "time": str,
    "event": str,
    "actor": str,
    "request_id": str,
    "details": dict,
}


def _entry_problem(raw: bytes, error: Exception) -> str:
    """Why `raw` is not an audit entry, naming the field where one is to blame."""
    try:
        d = json.loads(raw)
        typed(d, dict, "the entry")
        for key, kind in _ENTRY_FIELDS.items():
            field(d, key, kind, "entry")
    except (ValueError, RecursionError) as e:
        return str(e)[:200]
    return str(error)[:200]


def parse_entry(raw: bytes, position: int) -> AuditEntry:
    """The entry at `position`: canonical JSON, each field of its type, its own index."""
    try:
        entry = AuditEntry.from_bytes(raw)  # a time that parsed was a string
        for key, kind in _ENTRY_FIELDS.items():
            if key != "time":
                typed(getattr(entry, key), kind, f"entry.{key}")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise VerificationError(
            f"entry {position}: not a canonical audit entry: {_entry_problem(raw, e)}"
        ) from None
    if entry.index != position:
        raise VerificationError(
            f"entry {position}: says it is entry {entry.index}: entries were removed, "
            "inserted or reordered"
        )
    return entry


# -- the semantics -----------------------------------------------------------------------


@dataclass
class Report:
    entries: int = 0
    checkpoints: int = 0
    tree_size: int = 0
    signed: int = 0
    approvals: int = 0
    policies: int = 0
    policy_versions: int = 0  # links of the policy chain, each checked as the next
    policies_before_chain: int = 0  # server starts before version 1: v1 trusted on first use


@dataclass(frozen=True)
class _Policy:
    """A recorded policy in the core's model, every field checked for its type."""

    keys: dict[str, KeyPolicy]
    approver_keys: dict[str, ApprovalKey]
    officers: tuple[str, ...] = ()  # the policy officers (who approve policy changes)
    revoked: Mapping[str, Revocation] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, policy: Mapping[str, Any]) -> _Policy:
        where = "details.policy"
        keys = {}
        for name, rule in field(policy, "keys", dict, where, {}).items():
            at = f"{where}.keys.{name}"
            keys[name] = KeyPolicy.from_dict(rule, at)
            if keys[name].name != name:
                raise ValueError(f"{at}.name must be {name!r}, the name it is recorded under")
        approver_keys = {}
        for name, key in field(policy, "approver_keys", dict, where, {}).items():
            at = f"{where}.approver_keys.{name}"
            value = typed(key, str, at)
            try:
                approver_keys[name] = registry.key_from_policy(value)
            except ValueError as e:
                raise ValueError(f"{at} {e}") from None
        section = field(policy, "policy", dict, where, {})
        officers = tuple(strings(section, "officers", f"{where}.policy", []))
        return cls(keys, approver_keys, officers, revocations_of(policy))


def _digest(value: Any, where: str) -> Digest:
    typed(value, dict, where)
    for key in ("algorithm", "digest", "artifact"):
        field(value, key, str, where)
    try:
        return Digest.from_dict(value)
    except ValueError:
        raise ValueError(f"{where}.digest must be hex digits") from None


def _caller(d: Mapping[str, Any]) -> TokenCaller | None:
    """The OIDC pipeline that made a request, as recorded; None for an mTLS requester."""
    where = "details.caller"
    caller = field(d, "caller", dict, "details", None)
    if caller is None:
        return None
    barred = strings(caller, "barred_approvers", where, [])
    claims = field(caller, "claims", dict, where)
    for claim, value in claims.items():
        typed(value, str, f"{where}.claims.{claim}")
    return TokenCaller(
        field(caller, "issuer", str, where),
        field(caller, "identity", str, where),
        claims,
        field(caller, "actor", str, where, ""),
        tuple(barred),
    )


def _lifetime(e: AuditEntry) -> dt.timedelta | None:
    """How long the request was to live (its expire_time less its creation), if recorded."""
    expires = field(e.details, "expire_time", str, "details", None)
    if expires is None:
        return None
    try:
        return parse_time(expires) - e.time
    except ValueError:
        raise ValueError("details.expire_time must be an RFC 3339 time") from None


def _payload(d: Mapping[str, Any]) -> PayloadBinding | None:
    """The payload a request.created entry records (payload_type, base64 payload)."""
    if "payload_type" not in d and "payload" not in d:
        return None
    kind = field(d, "payload_type", str, "details")
    try:
        raw = base64.b64decode(field(d, "payload", str, "details"), validate=True)
    except binascii.Error:
        raise ValueError("details.payload must be base64") from None
    return PayloadBinding.of(kind, raw)


@dataclass
class _Request:
    key_name: str
    key_id: str
    digests: tuple[Digest, ...]
    requester: str
    barred: frozenset[str]  # the OIDC pipeline's actor, as mapped at creation
    payload: PayloadBinding | None  # of a typed request's carried payload
    values: dict[str, str]  # who and where it came from (`signer.core.unusual`)
    # approver -> the key their approval verified with, or None when the policy in force
    # then did not let them approve (the core would have refused it: it never counts)
    approvals: dict[str, ApprovalKey | None] = dataclasses.field(default_factory=dict)
    approved_at: dict[str, dt.datetime] = dataclasses.field(default_factory=dict)  # log times
    denied: bool = False
    signed: bool = False
    unusual: bool = False  # its entry records it unusual: it needs the extra approvals
    ended: str = ""  # the event that ended it unsigned: cancelled, expired or failed

    @classmethod
    def parse(cls, e: AuditEntry) -> tuple[_Request, Ask]:
        """The request an entry creates, and what the policy's rules check of it."""
        d = e.details
        digests = tuple(
            _digest(x, f"details.digests[{i}]")
            for i, x in enumerate(field(d, "digests", list, "details"))
        )
        caller = _caller(d)
        request = cls(
            field(d, "key_name", str, "details"),
            field(d, "key_id", str, "details"),
            digests,
            e.actor,
            frozenset(caller.barred if caller else ()),
            _payload(d),
            values_of(e.actor, caller),
        )
        payload_type = field(d, "payload_type", str, "details", "")
        return request, Ask(e.actor, caller, _lifetime(e), payload_type, e.time, len(digests))

    def binding(self, request_id: str) -> Binding:
        return Binding(request_id, self.key_name, self.key_id, self.digests, self.payload)


class _Semantics:
    """Replays the log and checks, under the policy in force, each request's creation and
    each signature's quorum with the core's own rules."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.policy = _Policy({}, {})
        self.requests: dict[str, _Request] = {}
        self.chain: Version | None = None  # the policy version in force, once there is one
        self.openpgp_created: dict[str, int] = {}  # key id -> its OpenPGP creation time
        self.frozen: dict[str, int] = {}  # key name -> the index of the freeze in force
        self.counts = SignedCounts()  # each key's recent signatures, for its limits
        self.signed_values: dict[str, set[tuple[str, str]]] = {}  # key -> (kind, value) signed
        self.proposals: dict[int, Proposal] = {}  # open proposals for the next version
        self.decided: dict[int, dict[str, str]] = {}  # proposal -> officer -> its decision

    def check(self, e: AuditEntry) -> None:
        if e.event not in EVENTS:
            raise ValueError(f"unknown event {e.event!r}")
        handler = getattr(self, "_" + e.event.replace(".", "_"), None)
        if handler is not None:
            handler(e)

    def _server_started(self, e: AuditEntry) -> None:
        policy = field(e.details, "policy", dict, "details")
        policy_hash = field(e.details, "policy_hash", str, "details")
        if hashlib.sha256(canonical_json(policy)).hexdigest() != policy_hash:
            raise ValueError("the recorded policy does not match its policy_hash")
        if self.chain is not None and policy_hash != self.chain.sha256:
            raise ValueError(
                f"the server started under a policy that is not version {self.chain.number} "
                "in force: the officers never approved it"
            )
        self.policy = _Policy.parse(policy)
        self.report.policies += 1
        if self.chain is None:
            self.report.policies_before_chain += 1

    def _key_generated(self, e: AuditEntry) -> None:
        created = e.details.get("openpgp_created")
        key_id = e.details.get("key_id")
        if created is not None and isinstance(key_id, str):
            self.openpgp_created[key_id] = typed(created, int, "details.openpgp_created")

    def _key_openpgp_created(self, e: AuditEntry) -> None:
        key_id = field(e.details, "key_id", str, "details")
        created = field(e.details, "openpgp_created", int, "details")
        known = self.openpgp_created.get(key_id)
        if known is not None and known != created:
            raise ValueError(
                f"key {key_id[:16]}... has OpenPGP creation time {known} already; another "
                "changes its OpenPGP fingerprint"
            )
        self.openpgp_created[key_id] = created

    def _policy_adopted(self, e: AuditEntry) -> None:
        try:
            version = version_of(e.details, e.index)
            check_next(self.chain, version)
        except PolicyChainError as x:
            raise ValueError(f"the policy chain breaks here: {x}") from None
        lifts = new_lifts(self.chain, version)
        self.chain = version
        # In force from here on, on every server (taken on without a restart).
        self.policy = _Policy.parse(version.document)
        self.proposals = {}
        self.decided = {}
        self.report.policy_versions += 1
        for name, index in lifts.items():
            if self.frozen.get(name) == index:
                del self.frozen[name]

    def _policy_proposed(self, e: AuditEntry) -> None:
        proposal = proposal_of(e, self.chain)
        if proposal is not None:  # else one for a version that never came next
            self.proposals[e.index] = proposal

    def _policy_approved(self, e: AuditEntry, approval: bool = True) -> None:
        """A decision recorded on an open proposal: signed by that officer over that
        version, issued within its lifetime before the entry, and not contradicting
        the officer's earlier decision on it."""
        index = field(e.details, "proposal", int, "details")
        proposal = self.proposals.get(index)
        if proposal is None:
            raise ValueError(f"a policy decision on entry {index}, which is no open proposal")
        try:
            raw = base64.b64decode(field(e.details, "envelope", str, "details"), validate=True)
            decision = verify_decision(
                Proposed(index, proposal, "", e.time), e.actor, raw, approval
            )
        except (binascii.Error, SignerError) as x:
            raise ValueError(f"the policy decision is not {e.actor}'s: {x}") from None
        recorded = (e.details.get("version"), e.details.get("sha256"))
        if recorded != (proposal.number, proposal.sha256) or (
            isinstance(decision, PolicyDenial) and e.details.get("reason") != decision.reason
        ):
            raise ValueError("the entry does not record the decision its envelope signs")
        if not e.time - APPROVAL_MAX_AGE <= decision.issued_at <= e.time + APPROVAL_SKEW:
            raise ValueError("the policy decision was issued too long before its entry")
        kind = "approve" if approval else "deny"
        earlier = self.decided.setdefault(index, {}).get(e.actor)
        if earlier is not None and (earlier != kind or kind == "deny"):
            raise ValueError(f"{e.actor} decided on this proposal already ({earlier})")
        self.decided[index][e.actor] = kind

    def _policy_denied(self, e: AuditEntry) -> None:
        self._policy_approved(e, approval=False)

    def _key_frozen(self, e: AuditEntry) -> None:
        key_name = field(e.details, "key_name", str, "details")
        policy = self._key_policy(key_name)
        key = self.policy.approver_keys.get(e.actor)
        if key is None or (e.actor not in policy.approvers and e.actor not in self.policy.officers):
            raise ValueError(f"{e.actor!r} may not freeze key {key_name!r} under the policy")
        envelope = field(e.details, "envelope", str, "details").encode()
        try:
            freeze = verify_freeze(envelope, key)
        except EnvelopeError as x:
            raise ValueError(f"the freeze is not signed by {e.actor}: {x}") from None
        recorded = (e.actor, key_name, field(e.details, "key_id", str, "details"))
        if (freeze.officer, freeze.key_name, freeze.key_id) != recorded:
            raise ValueError("the signed freeze is of another officer or key")
        if freeze.reason != field(e.details, "reason", str, "details"):
            raise ValueError("the recorded reason is not the signed one")
        if abs(freeze.issued_at - e.time) > FRESHNESS:
            raise ValueError(
                f"the freeze was issued at {freeze.issued_at.isoformat()}, not within "
                f"{FRESHNESS} of its entry (a replayed freeze?)"
            )
        self.frozen.setdefault(key_name, e.index)

    def _key_policy(self, key_name: str) -> KeyPolicy:
        policy = self.policy.keys.get(key_name)
        if policy is None:
            raise ValueError(f"no policy in force for key {key_name!r}")
        return policy

    def _request_created(self, e: AuditEntry) -> None:
        if e.request_id in self.requests:
            raise ValueError("request created twice")
        request, ask = _Request.parse(e)
        policy = self._key_policy(request.key_name)
        try:
            policy.check_request(ask)
        except SignerError as x:
            raise ValueError(f"the policy in force refuses this request: {x}") from None
        recorded = reasons_of(e.details, "details")
        if policy.unusual is not None:
            # As the server decides: what makes it unusual must be recorded (a server may
            # record more, never less: it only ever asks for more approvals).
            known = self.signed_values.get(request.key_name, set())
            found = policy.unusual.reasons(
                request.key_name, e.time, request.values, lambda k, v: (k, v) in known
            )
            missing = [r["message"] for r in found if key_of(r) not in recorded]
            if missing:
                raise ValueError(
                    f"the request was unusual ({'; '.join(missing)}) but its entry does not "
                    f"say so: it needed {policy.approvals_needed(unusual=True)} approvals"
                )
        request.unusual = bool(recorded)
        self.requests[e.request_id] = request

    def _request(self, e: AuditEntry) -> _Request:
        r = self.requests.get(e.request_id)
        if r is None:
            raise ValueError(f"{e.event} for a request never created")
        return r

    def _request_approved(self, e: AuditEntry) -> None:
        r = self._request(e)
        if r.denied or r.signed or r.ended or e.actor in r.approvals:
            raise ValueError(f"approval by {e.actor} after the request ended or twice")
        key = self._verify_envelope(e, r)
        r.approvals[e.actor] = key if self._key_policy(r.key_name).may_approve(e.actor) else None
        r.approved_at[e.actor] = e.time
        self.report.approvals += 1

    def _request_denied(self, e: AuditEntry) -> None:
        r = self._request(e)
        if r.signed or r.ended:
            raise ValueError(f"denial by {e.actor} after the request ended")
        self._verify_envelope(e, r, "deny")
        r.denied = True

    def _request_ended(self, e: AuditEntry) -> None:
        """Cancelled, expired or failed: nothing is decided or signed after it."""
        r = self._request(e)
        if r.signed or r.ended:
            raise ValueError(f"{e.event} after the request ended")
        r.ended = e.event

    _request_cancelled = _request_expired = _request_failed = _request_ended

    def _request_signed(self, e: AuditEntry) -> None:
        r = self._request(e)
        key_id = field(e.details, "key_id", str, "details")
        named = strings(e.details, "approvers", "details", [])
        if r.signed:
            raise ValueError("request signed twice")
        if r.key_name in self.frozen:
            raise ValueError(
                f"signed while key {r.key_name!r} was frozen "
                f"(since entry {self.frozen[r.key_name]})"
            )
        if r.denied:
            raise ValueError("request signed after a denial")
        if r.ended:
            raise ValueError(f"request signed after {r.ended}")
        policy = self._key_policy(r.key_name)
        if key_id != r.key_id:
            raise ValueError("signed with another key id than the request names")
        if policy.key_id and key_id != policy.key_id:
            raise ValueError(
                f"signed with key {key_id[:16]}..., not the key {policy.key_id[:16]}... the "
                f"policy in force pins for {r.key_name!r}"
            )
        signed_under = field(e.details, "policy_sha256", str, "details", None)
        if signed_under is not None and (self.chain is None or signed_under != self.chain.sha256):
            raise ValueError(
                f"signed under policy {signed_under[:16]}..., not the version in force "
                f"({self.chain.sha256[:16] + '...' if self.chain else 'none'})"
            )
        if key_id in self.policy.revoked:
            raise ValueError(f"signed with key {key_id[:16]}..., which the policy in force revokes")
        usage = self.counts.usage(r.key_name, policy.windows, len(r.digests), e.time)
        if (outside := policy.signing_problem(e.time, usage)) is not None:
            raise ValueError(f"signed at {e.time.isoformat()}, but {outside}")
        # As the core does at signing: an approval counts only under the approver key in
        # force now (a key rotated since the approval does not verify it any more).
        valid = {
            a: k
            for a, k in r.approvals.items()
            if k is not None
            and policy.may_approve(a)
            and may_decide(a, r.requester, r.barred)
            and _same_key(self.policy.approver_keys.get(a), k)
            and policy.approval_counts(r.approved_at[a], e.time)
            and policy.takes_kind(k.kind)
        }
        problem = policy.quorum_problem(distinct_approvers(valid.items()), r.unusual)
        if problem is not None:
            raise ValueError(f"signed with {problem}")
        if not set(named) <= set(valid):
            raise ValueError("the signed entry names approvers without a valid approval")
        r.signed = True
        self.counts.add(r.key_name, e.time, len(r.digests))
        self.signed_values.setdefault(r.key_name, set()).update(r.values.items())
        self.report.signed += 1

    def _verify_envelope(
        self, e: AuditEntry, r: _Request, decision: str = "approve"
    ) -> ApprovalKey:
        approver = field(e.details, "approver", str, "details")
        envelope = field(e.details, "envelope", str, "details")
        key = self.policy.approver_keys.get(e.actor)
        if key is None or approver != e.actor:
            raise ValueError(f"{e.actor!r} has no approval key in the policy in force")
        try:
            statement = Envelope.parse(envelope.encode()).verify(key)
        except EnvelopeError as x:
            raise ValueError(f"approval envelope by {e.actor} does not verify: {x}") from None
        try:
            r.binding(e.request_id).check(statement, e.actor, decision)
        except StatementMismatchError:
            raise ValueError(f"the {decision} by {e.actor} is not bound to this request") from None
        if not may_decide(e.actor, r.requester, r.barred):
            raise ValueError(
                f"{e.actor} decided on a request they made or whose pipeline they started"
            )
        return key


def verify_dir(path: Path, verifier: Verifier) -> Report:
    """Verify a fetched log; VerificationError names the first problem."""
    with LogDir(path) as log:
        if not log.has_checkpoint():
            raise VerificationError(f"{path} has no checkpoint; run `signer audit fetch` first")
        by_size = _checkpoints(log, verifier)
        report = Report(checkpoints=len(by_size), tree_size=max(by_size))
        tree, semantics = PrefixTree(), _Semantics(report)
        for i, raw in enumerate(log.read_entries()):
            entry = parse_entry(raw, i)
            tree.push(merkle.leaf_hash(raw))
            covering = by_size.get(tree.size)
            if covering is not None and covering.root != tree.root():
                raise VerificationError(
                    f"entry {i}: the log up to here does not match the signed checkpoint of "
                    f"size {tree.size}: an entry at or before {i} was changed, removed or "
                    "reordered"
                )
            _check_semantics(semantics, entry, i)
    report.entries = tree.size
    if tree.size != report.tree_size:
        raise VerificationError(
            f"the log has {tree.size} entries but its latest checkpoint covers {report.tree_size}"
        )
    return report


def _checkpoints(log: LogDir, verifier: Verifier) -> dict[int, Checkpoint]:
    """Every checkpoint of the copy by size, each signature verified; a fork is refused."""
    by_size: dict[int, Checkpoint] = {}
    for p, note in [*log.notes(), (log.checkpoint, log.read_checkpoint())]:
        cp = open_checkpoint(note, verifier, str(p))
        if cp.size in by_size and by_size[cp.size].root != cp.root:
            raise VerificationError(
                f"two checkpoints of size {cp.size} have different roots: the log forked"
            )
        by_size[cp.size] = cp
    return by_size


def _check_semantics(semantics: _Semantics, entry: AuditEntry, i: int) -> None:
    try:
        semantics.check(entry)
    except ValueError as e:
        raise VerificationError(f"entry {i} ({entry.event}): {e}") from None
    except (KeyError, TypeError, AttributeError) as e:  # a check that missed a type
        raise VerificationError(
            f"entry {i} ({entry.event}): malformed details ({type(e).__name__}: {e})"
        ) from None


def _same_key(a: ApprovalKey | None, b: ApprovalKey) -> bool:
    """The same key in the same kind: an Ed25519 key and a FIDO key on it share an id,
    but verify different signatures (the server verifies again under the key in force)."""
    return a is not None and a.policy_value() == b.policy_value()
