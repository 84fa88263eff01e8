"""The request state machine: create, decide, cancel, wait, expire, record.

`PENDING -> APPROVED -> SIGNED`, or `DENIED`, `EXPIRED`, `CANCELLED`, `FAILED`
(docs/architecture.md §4). Knows nothing of gRPC, SQL or PKCS#11: it talks to a `Store`, a
token-like `DigestSigner` and a `Notifier`. The signing step is `Signing`, the
audit log's read side `AuditReader` (both mixins of `Core`); input checks are in
`intake`, the quorum in `quorum`, the key policy's rules in `rules`.
Invariants upheld here:

- (2) a decision counts only from an officer the key's rules admit (and not the
  requester), bound to this request; the quorum reached moves the request to
  APPROVED and the signing step re-checks it before the token signs.
- (3) every state change appends its audit entry in the same store
  transaction; a failed audit write raises `StoreError` and nothing happens.
- (8) input is validated before any write; bad input changes nothing.
- (9) an APPROVED request left unsigned by a crash is signed by `recover()`;
  the idempotency key makes a retried create return the same request.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import structlog

from signer.approval.keys import ApprovalKey
from signer.audit.checkpoint import Checkpointer
from signer.audit.entry import AuditEntry
from signer.bounds import echo
from signer.core import intake, policy_log
from signer.core.alert_watch import AlertWatch
from signer.core.alerts import AlertRules
from signer.core.audit_reader import AuditReader
from signer.core.enforced import Enforced
from signer.core.events import Event, Hook, Kind
from signer.core.intake import LIMITS, Limits, find_request, is_request_id, require_unfrozen
from signer.core.notifier import Notifier
from signer.core.policy import KeyPolicy
from signer.core.policy_desk import PolicyDesk, PolicyHead
from signer.core.quorum import check_statement
from signer.core.recording import Recording
from signer.core.rules import Ask, not_an_approver
from signer.core.signing import DigestSigner, FreezeMarks, Signing, usage_of
from signer.dsse import Envelope
from signer.encoding import format_time
from signer.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StatementMismatchError,
    StoreError,
    TooLargeError,
)
from signer.freeze import FRESHNESS, verify_freeze
from signer.model import Approval, Digest, KeySpec, Request, State, TokenCaller
from signer.policy_chain import Version
from signer.store.base import PAGE_BYTES, FrozenKey, Store, Tx
from signer.store.group import GroupCommit

__all__ = ["Core", "Enforced"]

log = structlog.get_logger("signer.core.machine")

_REREAD_SECONDS = 5.0  # a waiter reads its request at least this often


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Core(Signing, Recording, AuditReader, PolicyDesk, AlertWatch):
    """The signing core over one store, one token and the loaded keys and policies."""

    def __init__(
        self,
        store: Store,
        token: DigestSigner,
        keys: Mapping[str, KeySpec],
        policies: Mapping[str, KeyPolicy],
        approver_keys: Mapping[str, ApprovalKey],
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        limits: Limits = LIMITS,
        notifier: Notifier | None = None,
        checkpointer: Checkpointer | None = None,
        events: Hook | None = None,
        policy_officers: Sequence[str] = (),
        superseded: Callable[[], str | None] = lambda: None,
        superseded_now: Callable[[], str | None] | None = None,
        freeze_marks: FreezeMarks | None = None,
        policy_sha256: str = "",
        policy_number: int = 0,
        policy_head: PolicyHead | None = None,
        on_policy_adopted: Callable[[Version], None] = lambda version: None,
        alert_rules: AlertRules | None = None,
    ) -> None:
        self.store = store
        self.alert_rules = alert_rules
        self.token = token
        self.enforced = Enforced(
            keys, policies, approver_keys, tuple(policy_officers), policy_sha256, policy_number
        )
        self.policy_head = policy_head
        self.on_policy_adopted = on_policy_adopted
        self.superseded = superseded
        # Read again in the transaction that records a signature (one adopted since the
        # last cached read must not be signed under): by default the same check.
        self.superseded_now = superseded_now or superseded
        self.freeze_marks = freeze_marks
        self.clock = clock
        self.limits = limits
        self.notifier = notifier or Notifier()
        self.checkpointer = checkpointer
        # Transitions are told through one hook; waiters subscribe first.
        self.events = events or Hook()
        self.events.subscribe(self._wake_waiters)
        self.group = GroupCommit(
            store, before_commit=checkpointer.cover if checkpointer is not None else None
        )
        self._signing = set()
        self._signing_lock = threading.Lock()
        self._rejections: dict[str, tuple[int, int, int]] = {}  # minute, recorded, suppressed
        self._rejections_lock = threading.Lock()

    # The policy in force, each read from the one snapshot.
    @property
    def keys(self) -> Mapping[str, KeySpec]:
        return self.enforced.keys

    @property
    def policies(self) -> Mapping[str, KeyPolicy]:
        return self.enforced.policies

    @property
    def approver_keys(self) -> Mapping[str, ApprovalKey]:
        return self.enforced.approver_keys

    @property
    def policy_officers(self) -> tuple[str, ...]:
        return self.enforced.officers

    @property
    def policy_sha256(self) -> str:
        return self.enforced.sha256

    def enforce(self, enforced: Enforced) -> None:
        """From now on, `enforced` is the policy in force (a version adopted while this
        core ran). A request whose quorum was counted under the one before is signed
        only once counted again under this one (`Signing._record_signed`)."""
        self.enforced = enforced
        log.warning("policy in force", version=enforced.number, sha256=enforced.sha256)

    def _wake_waiters(self, event: Event) -> None:
        """Waiters hear of every change of a request (a quorum is told by its approval)."""
        if event.request_id and event.kind not in (Kind.QUORUM, Kind.REJECTED, Kind.ALERT):
            self.notifier.publish(event.request_id, terminal=event.terminal)

    def _tx(self) -> AbstractContextManager[Tx]:
        """A store transaction, shared with concurrent ones (group commit), that ends
        with one signed checkpoint over everything the group appended."""
        return self.group.transaction()

    # -- requests -----------------------------------------------------------

    def create(
        self,
        actor: str,
        key_name: str,
        digests: list[Digest],
        context: Mapping[str, str],
        ttl: dt.timedelta | None,
        idempotency_key: str = "",
        *,
        caller: TokenCaller | None = None,
        payload_type: str = "",
        payload: bytes = b"",
    ) -> Request:
        """Create a PENDING request, or return the one made earlier with the same key.

        `caller` is set for a requester that came with an OIDC token: the key's
        claim rules decide, not its requester list. With `payload` (a DSSE
        payload), the one digest must be of its PAE.
        """
        enforced = self.enforced  # one version throughout
        policy, spec = self._key(key_name, enforced)
        lifetime = intake.lifetime(ttl, policy)
        now = self.clock()
        try:
            policy.check_request(Ask(actor, caller, lifetime, payload_type, now, len(digests)))
        except PermissionDeniedError as e:
            # A retry of a request taken inside a window, arriving after it closed, is
            # answered with that request, as any retry is.
            if not idempotency_key or e.reason != "OUTSIDE_RELEASE_WINDOW":
                raise
            params = intake.parameters_hash(key_name, digests, context, payload_type, payload)
            with self._tx() as tx:
                found = tx.find_idempotent(actor, idempotency_key)
            if found is None or found[1] != params or found[0].key_name != key_name:
                raise
            return found[0]
        intake.check_digests(digests, spec, self.limits)
        intake.check_context(context, self.limits)
        intake.check_payload(payload_type, payload, digests, spec, self.limits, now)
        intake.check_ttl(ttl, self.limits)
        intake.check_idempotency_key(idempotency_key)
        params = intake.parameters_hash(key_name, digests, context, payload_type, payload)
        request = intake.new_request(
            actor,
            key_name,
            spec,
            digests,
            context,
            now,
            lifetime,
            idempotency_key,
            caller,
            payload_type,
            payload,
        )
        details = intake.created_details(request, policy)
        if (why := self.superseded()) is not None:
            raise ConflictError(why, reason="POLICY_SUPERSEDED")
        with self._tx() as tx:
            if idempotency_key:
                found = tx.find_idempotent(actor, idempotency_key)
                if found is not None:
                    earlier, earlier_params = found
                    if earlier_params != params:
                        raise AlreadyExistsError(
                            f"idempotency key {echo(idempotency_key)} was used for request "
                            f"{earlier.id} with other parameters; use a new key"
                        )
                    return earlier
            require_unfrozen(self._held(tx, key_name), key_name)
            # Read now, where it is recorded: a version adopted since the cached read
            # (its token record precedes its commit) is never created under the one
            # before, which the adoption's end of changed requests would not see.
            if (why := self.superseded_now()) is not None or self.enforced is not enforced:
                raise ConflictError(
                    why or "the policy in force changed while the request was made; ask again",
                    reason="POLICY_SUPERSEDED",
                )
            if tx.count_pending(actor) >= self.limits.max_pending_per_requester:
                raise TooLargeError(
                    f"{echo(actor)} already has {self.limits.max_pending_per_requester} pending "
                    "requests; wait for decisions or cancel some",
                    reason="TOO_MANY_PENDING",
                )
            request, details = intake.unusual_of(tx, policy, request, details)
            tx.insert_request(request, params)
            tx.append_audit(now, "request.created", actor, request.id, key_name, details)
        self.events.emit(Event(Kind.CREATED, request.id, key_name, actor))
        log.info("request created", request_id=request.id, key_name=key_name, digests=len(digests))
        return request

    def get_for_requester(self, actor: str, request_id: str) -> Request:
        request = self._get(request_id)
        if request.requester != actor:
            raise PermissionDeniedError(
                f"request {request_id} was made by another requester", reason="NOT_YOUR_REQUEST"
            )
        return request

    def list_for_requester(
        self, actor: str, states: frozenset[State], after: int, limit: int
    ) -> list[tuple[int, Request]]:
        """A page of the requests `actor` made, as `list_for_approver` pages them."""
        with self._tx() as tx:
            return tx.list_requests(states, None, after, limit, PAGE_BYTES, requester=actor)

    def get_for_approver(self, actor: str, request_id: str) -> Request:
        request = self._get(request_id)
        self._approver_policy(actor, request.key_name)
        return request

    def wait(
        self,
        actor: str,
        request_id: str,
        timeout: dt.timedelta,
        alive: Callable[[], bool] = lambda: True,
    ) -> Request:
        """Return once the request is terminal, `timeout` has passed or the caller left."""
        deadline = self.clock() + timeout
        since = self.notifier.version
        request = self.get_for_requester(actor, request_id)
        if not request.terminal:  # from here on, every change to the request is heard
            log.info("waiting for a decision", request_id=request_id)
        last_read = time.monotonic()
        while True:
            remaining = (deadline - self.clock()).total_seconds()
            if request.terminal:
                return request
            if remaining <= 0 or not alive():  # as it is now, approvals included
                return self.get_for_requester(actor, request_id)
            # Wake at expiry time too, so an EXPIRED state is seen promptly, and at least
            # every second to notice a caller that went away; read the request again
            # only when it changed (not on every other request's change).
            until_expiry = (request.expires - self.clock()).total_seconds() + 0.05
            since, changed = self.notifier.wait_for(
                request_id, since, min(remaining, max(until_expiry, 0.05), 1.0)
            )
            if request.state is State.PENDING and self.clock() >= request.expires:
                self.expire_due()
                changed = True
            # A change can go unheard (another replica's, while the database listener
            # reconnects): read the request again every few seconds regardless.
            if changed or time.monotonic() >= last_read + _REREAD_SECONDS:
                last_read = time.monotonic()
                request = self.get_for_requester(actor, request_id)

    def cancel(self, actor: str, request_id: str, reason: str) -> Request:
        intake.check_reason(reason, self.limits)
        self._expire_if_due(request_id)
        now = self.clock()
        with self._tx() as tx:
            request = find_request(tx, request_id)
            if request.requester != actor:
                raise PermissionDeniedError(
                    f"only the requester of {request_id} may cancel it", reason="NOT_YOUR_REQUEST"
                )
            # An approved request the key may not sign yet (its window is closed, its
            # count is full) waits for its requester too: they may call it off.
            if request.state is not State.APPROVED or self._waiting_why(tx, request, now) is None:
                self._require_pending(request, now, "cancel")
            tx.set_state(request_id, State.CANCELLED, now, reason)
            tx.append_audit(
                now, "request.cancelled", actor, request_id, request.key_name, {"reason": reason}
            )
        self.events.emit(Event(Kind.CANCELLED, request_id, request.key_name, actor))
        return self._get(request_id)

    def _waiting_why(self, tx: Tx, request: Request, now: dt.datetime) -> str | None:
        """Why an APPROVED request is held unsigned now (its key's windows or counts)."""
        policy = self.enforced.policies.get(request.key_name)
        if policy is None:
            return None
        usage = usage_of(tx, policy, request, now) if policy.limits.counted else None
        return policy.signing_problem(now, usage)

    def list_for_approver(
        self, actor: str, states: frozenset[State], after: int, limit: int
    ) -> list[tuple[int, Request]]:
        """A page of requests on keys `actor` approves for: at most `limit`, and as many
        large batches as fit in one page's bytes (one at least)."""
        keys = frozenset(n for n, p in self.policies.items() if p.may_approve(actor))
        if not keys:
            return []
        with self._tx() as tx:
            return tx.list_requests(states, keys, after, limit, PAGE_BYTES)

    # -- approvals ------------------------------------------------------------

    def decide(self, actor: str, request_id: str, envelope: bytes, decision: str) -> Request:
        """Record an approval or denial; sign once the quorum is met."""
        env = Envelope.parse(envelope)
        approver_key = self.approver_keys.get(actor)
        if approver_key is None:
            raise PermissionDeniedError(
                f"{echo(actor)} has no registered approval key", reason="NOT_AN_APPROVER"
            )
        statement = env.verify(approver_key)
        self._expire_if_due(request_id)
        now = self.clock()
        with self._tx() as tx:
            request = find_request(tx, request_id)
            policy = self._approver_policy(actor, request.key_name)
            if not request.may_decide(actor):
                raise PermissionDeniedError(
                    f"{echo(actor)} made request {request_id} (or started its pipeline) "
                    "and cannot decide on it",
                    reason="REQUESTER_CANNOT_APPROVE",
                )
            check_statement(statement, request, actor, decision, self.clock(), self.limits)
            self._require_pending(request, now, decision)
            if any(a.approver == actor for a in request.approvals):
                raise ConflictError(
                    f"{echo(actor)} has already decided on request {request_id}; "
                    "each officer counts once",
                    reason="ALREADY_DECIDED",
                )
            tx.insert_approval(
                Approval(request_id, actor, decision, envelope, now, statement.reason)
            )
            entry = {"approver": actor, "envelope": envelope.decode()}
            reached = False
            if decision == "deny":
                denied = {**entry, "reason": statement.reason}
                tx.append_audit(now, "request.denied", actor, request_id, request.key_name, denied)
                why = f"denied by {actor}: {statement.reason}"
                tx.set_state(request_id, State.DENIED, now, why)
            else:
                reached = self._approve(tx, request, actor, entry, policy, now)
            result = find_request(tx, request_id)
        kind = Kind.DENIED if decision == "deny" else Kind.APPROVED
        self.events.emit(Event(kind, request_id, request.key_name, actor))
        if reached:
            self.events.emit(Event(Kind.QUORUM, request_id, request.key_name, actor))
        log.info("decision recorded", request_id=request_id, decision=decision, approver=actor)
        if reached:
            try:
                return self._sign(request_id) or self._get(request_id)
            except StoreError as e:
                # The approval is durable; the signature is not released until its
                # audit entry is. The sweeper (or recovery at start) signs it later.
                log.error("signature not recorded; will retry", request_id=request_id, error=str(e))
                return self._get(request_id)
        return result

    def _approve(
        self,
        tx: Tx,
        request: Request,
        actor: str,
        entry: dict[str, Any],
        policy: KeyPolicy,
        now: dt.datetime,
    ) -> bool:
        """Record an approval; True when it completes the quorum (the request is APPROVED)."""
        tx.append_audit(now, "request.approved", actor, request.id, request.key_name, entry)
        approvers = self._quorum(find_request(tx, request.id))
        if approvers is None:
            return False
        tx.set_state(request.id, State.APPROVED, now)
        tx.append_audit(
            now,
            "request.quorum",
            actor,
            request.id,
            request.key_name,
            {"approvers": approvers, "threshold": policy.approvals_needed(bool(request.unusual))},
        )
        return True

    # -- break glass -------------------------------------------------------------

    def freeze(self, actor: str, key_name: str, envelope: bytes) -> FrozenKey:
        """Freeze `key_name` at once on `actor`'s signed word (an approver of the key or a
        policy officer): a `key.frozen` entry, and no server on this store signs with it
        or takes a request for it until a policy version lifts it. A key frozen already
        stays frozen as it was (no second entry)."""
        policy, spec = self._key(key_name)
        approver_key = self.approver_keys.get(actor)
        if approver_key is None or (
            actor not in policy.approvers and actor not in self.policy_officers
        ):
            raise PermissionDeniedError(
                f"{echo(actor)} is neither an approver of key {echo(key_name)} nor a policy "
                "officer, and may not freeze it",
                reason="NOT_AN_APPROVER",
            )
        freeze = verify_freeze(envelope, approver_key)
        now = self.clock()
        if (freeze.officer, freeze.key_name, freeze.key_id) != (actor, key_name, spec.key_id):
            raise StatementMismatchError(
                f"the freeze is not {echo(actor)}'s of key {echo(key_name)} "
                f"({spec.key_id[:16]}...)",
                ("officer", "key_name", "key_id"),
            )
        if abs(freeze.issued_at - now) > FRESHNESS:
            raise StatementMismatchError(
                f"the freeze was issued at {format_time(freeze.issued_at)}, not within "
                f"{FRESHNESS} of the server's clock; check the clock",
                ("issued_at",),
            )
        with self._tx() as tx:
            held = self._held(tx, key_name)
            if held is not None:
                if tx.frozen_key(key_name) is None:  # its row was deleted: given back
                    tx.freeze_key(held)
                return held
            entry = tx.append_audit(
                now,
                "key.frozen",
                actor,
                "",
                key_name,
                {
                    "key_name": key_name,
                    "key_id": spec.key_id,
                    "reason": freeze.reason,
                    "envelope": envelope.decode(),
                },
            )
            held = tx.freeze_key(FrozenKey(key_name, entry.index, actor, freeze.reason, now))
        if self.freeze_marks is not None:  # in the token too, once recorded (see `reconcile`)
            self.freeze_marks.mark(key_name, held.since_index)
        log.warning("key frozen", key_name=key_name, officer=actor, index=held.since_index)
        self.events.emit(Event(Kind.ALERT, "", key_name, actor, {"alert": "frozen"}))
        return held

    def policy_chain(self) -> list[AuditEntry]:
        """The policy chain as the log holds it: every `policy.adopted` entry, oldest
        first (checked by whoever reads it: a bundle's verifier walks it)."""
        with self._tx() as tx:
            return policy_log.adopted_entries(tx)

    def reconcile_freezes(self) -> None:
        """At start: mark in the token every freeze the database holds (one recorded
        just before a crash), and give back its row to every freeze the token marks (a
        row someone deleted), so that only a policy version lifts it."""
        if self.freeze_marks is None:
            return
        marks = {name: self.freeze_marks.marks(name) for name in self.keys}
        with self._tx() as tx:
            rows = {h.key_name: h for h in tx.frozen_keys()}
            for name, marked in marks.items():
                if marked and name not in rows:
                    log.error("freeze restored from the token", key_name=name, index=marked[0])
                    rows[name] = tx.freeze_key(
                        FrozenKey(
                            name, marked[0], "an officer", "restored from the token", self.clock()
                        )
                    )
        for held in rows.values():
            if held.since_index not in marks.get(held.key_name, []):
                self.freeze_marks.mark(held.key_name, held.since_index)

    # -- expiry ----------------------------------------------------------------

    def expire_due(self) -> int:
        """Move PENDING requests past their TTL to EXPIRED, with audit entries."""
        now = self.clock()
        with self._tx() as tx:
            ids = tx.pending_due(now)
            for rid in ids:
                request = find_request(tx, rid)
                tx.set_state(rid, State.EXPIRED, now, "no quorum before the request expired")
                tx.append_audit(
                    now,
                    "request.expired",
                    "signer",
                    rid,
                    request.key_name,
                    {"expire_time": format_time(request.expires)},
                )
        for rid in ids:
            self.events.emit(Event(Kind.EXPIRED, rid, actor="signer"))
        return len(ids)

    def _expire_if_due(self, request_id: str) -> None:
        with self._tx() as tx:
            expires = tx.pending_expiry(request_id) if is_request_id(request_id) else None
        if expires is not None and self.clock() >= expires:
            self.expire_due()

    # -- helpers -------------------------------------------------------------------

    def _key(self, key_name: str, enforced: Enforced | None = None) -> tuple[KeyPolicy, KeySpec]:
        e = enforced or self.enforced
        policy, spec = e.policies.get(key_name), e.keys.get(key_name)
        if policy is None or spec is None:
            raise NotFoundError(
                f"no signing key named {echo(key_name)}; see `signer keys list`",
                reason="UNKNOWN_KEY",
            )
        return policy, spec

    def _approver_policy(self, actor: str, key_name: str) -> KeyPolicy:
        """The policy of `key_name` if its rules let `actor` decide on its requests."""
        policy = self.policies.get(key_name)
        if policy is None:
            raise not_an_approver(actor, key_name)
        policy.check_approver(actor)
        return policy

    @staticmethod
    def _require_pending(request: Request, now: dt.datetime, action: str) -> None:
        if request.state is State.PENDING and now >= request.expires:
            raise ConflictError(
                f"request {request.id} has expired; cannot {action}", reason="REQUEST_EXPIRED"
            )
        if request.state is not State.PENDING:
            raise ConflictError(
                f"request {request.id} is {request.state.value}; cannot {action} it",
                reason=f"REQUEST_{request.state.value}",
            )
