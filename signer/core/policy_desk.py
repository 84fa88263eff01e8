"""Policy changes decided online (DESIGN §11): officers approve or deny over gRPC.

A mixin of the core. `signer policy propose` records a `policy.proposed` entry; the
officers list the proposals for the next version (`policy_proposals`) and send their
signed approvals (`approve_policy`, the same envelopes `approver policy approve`
writes to a file) or denials (`deny_policy`, `signer.policy_denial`), each recorded as
a `policy.approved` or `policy.denied` entry. The approval that completes both
thresholds (the version in force's officers and the new version's, `check_next`)
adopts the version in the same transaction: its `policy.adopted` entry, the token's
record of the version in force (written before the commit, `PolicyHead`), and the
requests whose key's rule the version changes ended (`policy_log.adopt`). Every
server of the store then switches to it without a restart (`signer.server.app`).

A proposal is the next version only while the version it follows is in force: once
another is adopted, its approvals count for nothing and it is no longer listed. A
proposal whose denials leave fewer officers than either threshold is rejected.
The chain is read from the log and checked against the token's record in the same
transaction, so a database owner who hides the last version makes every decision
fail instead of forking the chain.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from signer.audit.entry import AuditEntry
from signer.bounds import echo
from signer.core import policy_log
from signer.core.events import Event, Hook, Kind
from signer.dsse import Envelope
from signer.encoding import canonical_json, format_time
from signer.errors import (
    ConflictError,
    EnvelopeError,
    NotFoundError,
    PermissionDeniedError,
    PolicyChainError,
    SignerError,
    StatementMismatchError,
)
from signer.model import State
from signer.policy_chain import (
    PAYLOAD_TYPE,
    Officers,
    PolicyApproval,
    Proposal,
    Version,
    new_lifts,
)
from signer.policy_denial import PolicyDenial, rejected, verify_denial
from signer.store.base import AuditFilter, Tx

__all__ = [
    "APPROVED",
    "DENIED",
    "PolicyDesk",
    "PolicyHead",
    "Proposed",
    "proposal_of",
    "verify_decision",
]

log = structlog.get_logger("signer.core.policy_desk")

APPROVED = "policy.approved"
DENIED = "policy.denied"
_PAGE = 200


class PolicyHead(Protocol):
    """The token's record of the version in force (`signer.server.policy_head`)."""

    def require(self, chain: list[Version]) -> None:
        """PolicyChainError unless `chain` (oldest first) reaches the recorded version."""
        ...

    def record(self, version: Version) -> None: ...

    def lift(self, key_name: str, index: int) -> None: ...


@dataclass(frozen=True)
class Proposed:
    """A proposal for the next version, with the officers' decisions so far."""

    index: int  # its `policy.proposed` entry
    proposal: Proposal
    proposed_by: str
    proposed_at: dt.datetime
    # officer -> (envelope, issued_at): only decisions that verify as that officer's
    approvals: Mapping[str, tuple[bytes, dt.datetime]] = field(default_factory=dict)
    denials: Mapping[str, str] = field(default_factory=dict)  # officer -> reason
    adopted: bool = False

    @property
    def sets(self) -> list[tuple[str, Officers]]:
        """Whose approvals it needs: the version in force's officers, and its own."""
        out = [("its own", Officers.of(self.proposal.document))]
        if self.proposal.previous_document is not None:
            number = self.proposal.number - 1
            out.insert(0, (f"version {number}'s", Officers.of(self.proposal.previous_document)))
        return out

    def fresh(self, now: dt.datetime) -> dict[str, bytes]:
        """The approvals that still count at `now` (issued within their lifetime)."""
        return {o: raw for o, (raw, at) in self.approvals.items() if _is_fresh(at, now)}

    @property
    def rejected(self) -> bool:
        """Whether its denials leave fewer officers than a threshold it needs (one whose
        officers cannot be read can never be decided: rejected too)."""
        try:
            return rejected(self.denials.keys(), [o for _, o in self.sets])
        except PolicyChainError:
            return True


class PolicyDesk:
    """The online side of policy changes; the core sets every attribute named here."""

    clock: Callable[[], dt.datetime]
    events: Hook
    policy_head: PolicyHead | None
    on_policy_adopted: Callable[[Version], None]

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def policy_proposals(self) -> list[Proposed]:
        """The proposals for the next version that are still open (neither rejected
        nor overtaken), oldest first."""
        with self._tx() as tx:
            previous, after = self._in_force(tx)
            return [p for p in _proposals(tx, previous, after) if not p.rejected]

    def approve_policy(self, actor: str, index: int, envelope: bytes) -> Proposed:
        """Record `actor`'s approval of the proposal at `index`; the one that completes
        both thresholds adopts it. An approval sent twice is recorded once."""
        now = self.clock()
        with self._tx() as tx:
            previous, after = self._in_force(tx)
            p = _find(tx, previous, after, index)
            statement = verify_decision(p, actor, envelope, approval=True)
            version = p.proposal.version
            _check_fresh(statement.issued_at, now, "approval")
            if p.rejected:
                raise ConflictError(
                    f"the proposal at audit entry {index} was rejected by "
                    f"{', '.join(sorted(p.denials))}",
                    reason="POLICY_REJECTED",
                )
            if actor in p.denials:
                raise ConflictError(f"{echo(actor)} denied this proposal", reason="POLICY_DENIED")
            if actor in p.fresh(now):
                return p
            # A first approval, or one that replaces this officer's approval grown too old.
            tx.append_audit(
                now,
                APPROVED,
                actor,
                "",
                "",
                {
                    "proposal": index,
                    "version": version.number,
                    "sha256": version.sha256,
                    "envelope": base64.b64encode(envelope).decode(),
                },
            )
            approvals = {**p.approvals, actor: (envelope, statement.issued_at)}
            p = Proposed(index, p.proposal, p.proposed_by, p.proposed_at, approvals, p.denials)
            counted = tuple(p.fresh(now).values())  # an approval grown too old counts for none
            candidate = Version(version.number, version.document, version.previous_sha256, counted)
            complete = all(
                len(candidate.approvers(officers)) >= officers.threshold for _, officers in p.sets
            )
            adopted = None
            ended: list[tuple[str, str, State]] = []
            if complete:
                adopted = policy_log.adopt(
                    tx, previous, version.document, list(counted), actor, now, ended
                )
                if self.policy_head is not None:
                    # The freezes it lifts first (a failure there leaves the rows, and the
                    # start marks them again), then the version, before the commit: a commit
                    # that fails leaves the token one version ahead, which `signer policy
                    # adopt` with the same approvals completes.
                    for name, lifted in new_lifts(previous, adopted).items():
                        self.policy_head.lift(name, lifted)
                    self.policy_head.record(adopted)
        if adopted is None:
            log.info("policy approval recorded", version=version.number, officer=actor)
            return p
        log.warning("policy version adopted", version=adopted.number, sha256=adopted.sha256)
        for rid, key_name, state in ended:
            kind = Kind.CANCELLED if state is State.CANCELLED else Kind.FAILED
            self.events.emit(Event(kind, rid, key_name, "signer"))
        self.on_policy_adopted(adopted)
        return Proposed(
            index, p.proposal, p.proposed_by, p.proposed_at, approvals, p.denials, adopted=True
        )

    def deny_policy(self, actor: str, index: int, envelope: bytes) -> Proposed:
        """Record `actor`'s signed denial of the proposal at `index` (once)."""
        now = self.clock()
        with self._tx() as tx:
            previous, after = self._in_force(tx)
            p = _find(tx, previous, after, index)
            denial = verify_decision(p, actor, envelope, approval=False)
            assert isinstance(denial, PolicyDenial)
            version = p.proposal.version
            _check_fresh(denial.issued_at, now, "denial")
            if actor in p.fresh(now):
                raise ConflictError(
                    f"{echo(actor)} approved this proposal already", reason="POLICY_APPROVED"
                )
            if actor in p.denials:
                return p
            denials = {**p.denials, actor: denial.reason}
            p = Proposed(index, p.proposal, p.proposed_by, p.proposed_at, p.approvals, denials)
            tx.append_audit(
                now,
                DENIED,
                actor,
                "",
                "",
                {
                    "proposal": index,
                    "version": version.number,
                    "sha256": version.sha256,
                    "reason": denial.reason,
                    "envelope": base64.b64encode(envelope).decode(),
                    "rejected": p.rejected,
                },
            )
        log.warning("policy proposal denied", version=version.number, officer=actor)
        return p

    def _in_force(self, tx: Tx) -> tuple[Version | None, int]:
        """The version in force, walked from version 1 and reaching the token's record,
        and the index of its entry (-1: none)."""
        walked = policy_log.walk(tx)
        if self.policy_head is not None:
            self.policy_head.require([v for v, _, _ in walked])
        if not walked:
            return None, -1
        version, _, entry = walked[-1]
        return version, entry.index


def _entries(tx: Tx, event: str, after: int) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    while True:
        page = tx.list_audit(AuditFilter(event=event), after, _PAGE)
        out += page
        if len(page) < _PAGE:
            return out
        after = page[-1].index


def proposal_of(e: AuditEntry, previous: Version | None) -> Proposal | None:
    """The proposal an entry records, if it is one for the version after `previous`."""
    d = e.details
    document = d.get("document")
    number = previous.number + 1 if previous is not None else 1
    if (
        d.get("version") != number
        or d.get("previous_sha256") != (previous.sha256 if previous else "")
        or not isinstance(document, dict)
    ):
        return None
    try:
        sha256 = hashlib.sha256(canonical_json(document)).hexdigest()
    except (ValueError, TypeError):
        return None
    if d.get("sha256") != sha256:
        return None
    return Proposal(
        number,
        previous.sha256 if previous else "",
        document,
        previous.document if previous is not None else None,
    )


def _proposals(tx: Tx, previous: Version | None, after: int) -> list[Proposed]:
    """Every proposal for the version after `previous` recorded after its adoption,
    with the decisions recorded on it."""
    found: dict[int, Proposed] = {}
    for e in _entries(tx, policy_log.PROPOSED, after):
        proposal = proposal_of(e, previous)
        if proposal is not None:
            found[e.index] = Proposed(e.index, proposal, e.actor, e.time, {}, {})
    # Each decision counts only if it verifies as its officer's, whatever the row says
    # (whoever owns the database may add rows): an approval replaces an older one of the
    # same officer, a denial counts once and its reason is the signed one.
    approvals: dict[int, dict[str, tuple[bytes, dt.datetime]]] = {i: {} for i in found}
    denials: dict[int, dict[str, str]] = {i: {} for i in found}
    for event, approval in ((APPROVED, True), (DENIED, False)):
        for e in _entries(tx, event, after):
            index, raw = e.details.get("proposal"), _envelope(e.details)
            if not isinstance(index, int) or index not in found or raw is None:
                continue
            try:
                decision = verify_decision(found[index], e.actor, raw, approval)
            except SignerError:
                continue
            if isinstance(decision, PolicyApproval):
                approvals[index][e.actor] = (raw, decision.issued_at)
            else:
                denials[index].setdefault(e.actor, decision.reason)
    return [
        Proposed(i, p.proposal, p.proposed_by, p.proposed_at, approvals[i], denials[i])
        for i, p in sorted(found.items())
    ]


def _envelope(details: Mapping[str, Any]) -> bytes | None:
    raw = details.get("envelope")
    try:
        return base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
    except (binascii.Error, ValueError):
        return None


def _find(tx: Tx, previous: Version | None, after: int, index: int) -> Proposed:
    for p in _proposals(tx, previous, after):
        if p.index == index:
            return p
    raise NotFoundError(
        f"no open proposal for policy version {previous.number + 1 if previous else 1} at "
        f"audit entry {index} (see `approver policy list`: another version may have been "
        "adopted since)",
        reason="UNKNOWN_PROPOSAL",
    )


def verify_decision(
    p: Proposed, actor: str, envelope: bytes, approval: bool
) -> PolicyApproval | PolicyDenial:
    """`actor`'s approval (or denial) of exactly `p`'s version, signed with their key
    as a version `p` needs records it; PermissionDenied if `actor` is an officer of
    neither, EnvelopeError or StatementMismatchError if it is not that decision."""
    keys = _keys_of(p, actor)
    version = p.proposal.version
    what = "approval" if approval else "denial"
    found: PolicyApproval | PolicyDenial | None = None
    for key in keys:
        try:
            if approval:
                env = Envelope.parse(envelope, PAYLOAD_TYPE)
                found = PolicyApproval.from_bytes(env.verified_payload(key))
            else:
                found = verify_denial(envelope, key)
            break
        except EnvelopeError:
            continue
    if found is None:
        raise EnvelopeError(
            f"the {what} is not signed with {echo(actor)}'s approval key as the policy records it"
        )
    if (found.version, found.policy_sha256, found.previous_sha256, found.officer) != (
        version.number,
        version.sha256,
        version.previous_sha256,
        actor,
    ):
        raise StatementMismatchError(
            f"the {what} is not {echo(actor)}'s of policy version {version.number} "
            f"({version.sha256[:16]}...)",
            ("version", "policy_sha256", "previous_sha256", "officer"),
        )
    return found


def _keys_of(p: Proposed, actor: str) -> list[Any]:
    """`actor`'s approval keys as the officer sets of `p` record them; PermissionDenied
    if `actor` is an officer of neither (their decision could not count)."""
    try:
        keys = [o.keys[actor] for _, o in p.sets if actor in o.names]
    except PolicyChainError as e:
        raise ConflictError(f"the proposal cannot be decided: {e}") from None
    if not keys:
        raise PermissionDeniedError(
            f"{echo(actor)} is not a policy officer of version {p.proposal.number} or the one "
            "in force; a decision from them would not count",
            reason="NOT_A_POLICY_OFFICER",
        )
    return keys


def _is_fresh(issued_at: dt.datetime, now: dt.datetime) -> bool:
    return now - policy_log.APPROVAL_MAX_AGE <= issued_at <= now + policy_log.APPROVAL_SKEW


def _check_fresh(issued_at: dt.datetime, now: dt.datetime, what: str) -> None:
    if not _is_fresh(issued_at, now):
        raise StatementMismatchError(
            f"the {what} was issued at {format_time(issued_at)}, not within the "
            f"{policy_log.APPROVAL_MAX_AGE.days} days before the server's clock; sign it again",
            ("issued_at",),
        )
