"""Policy changes decided online (docs/architecture.md §11): officers approve or deny over gRPC.

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
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import structlog

from signer.bounds import echo
from signer.core import policy_log
from signer.core.events import Event, Hook, Kind
from signer.encoding import format_time
from signer.errors import (
    ConflictError,
    NotFoundError,
    SignerError,
    StatementMismatchError,
)
from signer.model import State
from signer.policy_chain import (
    PolicyApproval,
    Version,
    new_lifts,
)
from signer.policy_decisions import (
    APPROVAL_MAX_AGE,
    Proposed,
    is_fresh,
    proposal_of,
    verify_decision,
)
from signer.policy_denial import PolicyDenial
from signer.store.base import Tx

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


class PolicyHead(Protocol):
    """The token's record of the version in force (`signer.server.policy_head`)."""

    def require(self, chain: list[Version]) -> None:
        """PolicyChainError unless `chain` (oldest first) reaches the recorded version."""
        ...

    def record(self, version: Version) -> None: ...

    def lift(self, key_name: str, index: int) -> None: ...


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
            _record(tx, now, APPROVED, actor, p, envelope, {})
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
            if actor in p.approvals:  # even one grown too old: a decision is not undone
                raise ConflictError(
                    f"{echo(actor)} approved this proposal already", reason="POLICY_APPROVED"
                )
            if actor in p.denials:
                return p
            denials = {**p.denials, actor: denial.reason}
            p = Proposed(index, p.proposal, p.proposed_by, p.proposed_at, p.approvals, denials)
            _record(
                tx,
                now,
                DENIED,
                actor,
                p,
                envelope,
                {"reason": denial.reason, "rejected": p.rejected},
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


def _proposals(tx: Tx, previous: Version | None, after: int) -> list[Proposed]:
    """Every proposal for the version after `previous` recorded after its adoption,
    with the decisions recorded on it."""
    found: dict[int, Proposed] = {}
    for e in policy_log.entries_of(tx, policy_log.PROPOSED, after):
        proposal = proposal_of(e, previous)
        if proposal is not None:
            found[e.index] = Proposed(e.index, proposal, e.actor, e.time, {}, {})
    # Each decision counts only if it verifies as its officer's, whatever the row says
    # (whoever owns the database may add rows): an approval replaces an older one of the
    # same officer, a denial counts once and its reason is the signed one.
    approvals: dict[int, dict[str, tuple[bytes, dt.datetime]]] = {i: {} for i in found}
    denials: dict[int, dict[str, str]] = {i: {} for i in found}
    for event, approval in ((APPROVED, True), (DENIED, False)):
        for e in policy_log.entries_of(tx, event, after):
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


def _record(
    tx: Tx,
    now: dt.datetime,
    event: str,
    actor: str,
    p: Proposed,
    envelope: bytes,
    extra: Mapping[str, Any],
) -> None:
    """`actor`'s decision on `p` as its audit entry records it."""
    details = {
        "proposal": p.index,
        "version": p.proposal.number,
        "sha256": p.proposal.sha256,
        **extra,
        "envelope": base64.b64encode(envelope).decode(),
    }
    tx.append_audit(now, event, actor, "", "", details)


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


def _check_fresh(issued_at: dt.datetime, now: dt.datetime, what: str) -> None:
    if not is_fresh(issued_at, now):
        raise StatementMismatchError(
            f"the {what} was issued at {format_time(issued_at)}, not within the "
            f"{APPROVAL_MAX_AGE.days} days before the server's clock; sign it again",
            ("issued_at",),
        )
