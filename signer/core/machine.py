"""The signing core: request state machine, policy and approval checks.

Knows nothing of gRPC, SQL or PKCS#11: it talks to a `Store`, a token-like
`DigestSigner` and a `Notifier`. Invariants upheld here:

- (2) `_quorum` is the one place that decides whether a request may be signed:
  m valid approvals from m distinct approvers in the key's policy, none from
  the requester, no denial, each envelope verifying with the approver's
  registered key and binding the exact request id, key, key id and digests.
  It runs when an approval arrives and again right before the token signs.
- (3) every state change appends its audit entry in the same store
  transaction; a failed audit write raises `StoreError` and nothing happens.
- (8) input is validated before any write; bad input changes nothing.
- (9) an APPROVED request left unsigned by a crash is signed by `recover()`;
  the idempotency key makes a retried create return the same request.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import HASH_SIZES, KeyAlgorithm
from signer.audit import merkle
from signer.audit.checkpoint import Checkpointer
from signer.audit.entry import AuditEntry
from signer.audit.proofs import SignedProof
from signer.bounds import echo
from signer.core.events import Event, Hook, Kind
from signer.core.policy import KeyPolicy
from signer.dsse import Envelope, Statement, distinct_approvers
from signer.encoding import canonical_json, format_time
from signer.errors import (
    AlreadyExistsError,
    ConflictError,
    EnvelopeError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SignerError,
    StoreError,
    TokenError,
    TooLargeError,
)
from signer.formats import registry as formats
from signer.model import Approval, Digest, KeySpec, Request, State, TokenCaller
from signer.store.base import PAGE_BYTES, AuditFilter, Store, Tx
from signer.store.group import GroupCommit
from signer.text import DISPLAY_RULE, MAX_ARTIFACT, is_artifact_name, is_displayable

__all__ = ["LIMITS", "Core", "DigestSigner", "KeySpec", "Limits", "Notifier"]

log = structlog.get_logger("signer.core.machine")

_CONTEXT_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_IDEMPOTENCY = re.compile(r"^[\x21-\x7e]{1,128}\Z")
_REQUEST_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_CLOCK_SKEW = dt.timedelta(minutes=5)
_MAX_RECORDED_MESSAGE = 1024  # a rejected call cannot bloat the audit log
_REREAD_SECONDS = 5.0  # a waiter reads its request at least this often


@dataclass(frozen=True)
class Limits:
    max_digests: int = 10_000  # a release manifest; approvals bind its hash
    max_context_entries: int = 32
    max_context_value: int = 1024
    max_reason: int = 1024
    min_ttl: dt.timedelta = dt.timedelta(seconds=1)
    max_pending_per_requester: int = 100
    max_rejections_per_minute: int = 60  # audited per identity; the rest are counted


LIMITS = Limits()


class DigestSigner(Protocol):
    """The token as the core sees it."""

    def sign_digests(
        self, name: str, algorithm: KeyAlgorithm, digests: Sequence[tuple[str, bytes]]
    ) -> list[bytes]:
        """(hash name, digest) pairs signed in order, in one token loop."""
        ...


class Notifier:
    """Wakes waiters when a request changes; keeps a bounded change log."""

    def __init__(self, history: int = 10_000) -> None:
        self._cond = threading.Condition()
        self._version = 0
        # (version, request id, whether the request may now be terminal)
        self._log: deque[tuple[int, str, bool]] = deque(maxlen=history)

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    def publish(self, request_id: str, terminal: bool = True) -> None:
        """Tell waiters `request_id` changed; `terminal=False` when it surely is not
        finished yet (another replica's change, of unknown kind, counts as terminal)."""
        with self._cond:
            self._version += 1
            self._log.append((self._version, request_id, terminal))
            self._cond.notify_all()

    def wait_for(self, request_id: str, since: int, timeout: float) -> tuple[int, bool]:
        """Block until `request_id` may have finished after `since`, or timeout:
        (version, changed).

        Reports a change too when the bounded log no longer reaches back to `since`.
        """

        def changed() -> bool:
            if self._log and self._log[0][0] > since + 1:
                return True
            for v, r, terminal in reversed(self._log):
                if v <= since:
                    return False
                if r == request_id and terminal:
                    return True
            return False

        with self._cond:
            hit = self._cond.wait_for(changed, timeout=max(timeout, 0))
            return self._version, hit

    def wait(self, since: int, timeout: float) -> tuple[int, list[str]]:
        """Block until a change after `since` or timeout; return (version, changed ids)."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > since, timeout=max(timeout, 0))
            changed = list(dict.fromkeys(r for v, r, _ in self._log if v > since))
            return self._version, changed


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Core:
    def __init__(
        self,
        store: Store,
        token: DigestSigner,
        keys: Mapping[str, KeySpec],
        policies: Mapping[str, KeyPolicy],
        approver_keys: Mapping[str, ed25519.Ed25519PublicKey],
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        limits: Limits = LIMITS,
        notifier: Notifier | None = None,
        checkpointer: Checkpointer | None = None,
        events: Hook | None = None,
    ) -> None:
        self.store = store
        self.token = token
        self.keys = keys
        self.policies = policies
        self.approver_keys = approver_keys
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
        self._signing: set[str] = set()
        self._signing_lock = threading.Lock()
        self._rejections: dict[str, tuple[int, int, int]] = {}  # minute, recorded, suppressed
        self._rejections_lock = threading.Lock()

    def _wake_waiters(self, event: Event) -> None:
        """Waiters hear of every change of a request (a quorum is told by its approval)."""
        if event.request_id and event.kind not in (Kind.QUORUM, Kind.REJECTED):
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
        policy, spec = self._key(key_name)
        if caller is not None:
            if caller.identity != actor or not policy.admits(caller.issuer, caller.claims):
                raise PermissionDeniedError(
                    f"the token's claims do not meet key {key_name!r}'s conditions "
                    f"({'; '.join(f'{k}={v}' for k, v in sorted(caller.claims.items()))})",
                    reason="CLAIMS_NOT_ALLOWED",
                    details={"issuer": caller.issuer, "claims": dict(caller.claims)},
                )
        elif actor not in policy.requesters:
            raise PermissionDeniedError(
                f"{echo(actor)} may not request signatures with key {key_name!r}",
                reason="NOT_A_REQUESTER",
            )
        self._check_digests(digests, spec)
        self._check_context(context)
        self._check_payload(payload_type, payload, digests)
        lifetime = self._ttl(ttl, policy)
        if idempotency_key and not _IDEMPOTENCY.match(idempotency_key):
            raise InvalidArgumentError(
                "idempotency_key must be 1-128 printable ASCII characters without spaces"
            )
        params = hashlib.sha256(
            canonical_json(
                {
                    "key_name": key_name,
                    "digests": [d.as_dict() for d in digests],
                    "context": dict(context),
                    "payload_type": payload_type,
                    "payload_sha256": hashlib.sha256(payload).hexdigest(),
                }
            )
        ).hexdigest()
        now = self.clock()
        request = Request(
            id=str(uuid.uuid4()),
            key_name=key_name,
            key_id=spec.key_id,
            algorithm=spec.algorithm.name,
            requester=actor,
            digests=tuple(digests),
            context=dict(context),
            state=State.PENDING,
            created=now,
            expires=now + lifetime,
            updated=now,
            idempotency_key=idempotency_key,
            caller=caller,
            payload_type=payload_type,
            payload=payload,
        )
        details: dict[str, Any] = {
            "key_name": key_name,
            "key_id": spec.key_id,
            "algorithm": spec.algorithm.name,
            "requester": actor,
            "digests": [d.as_dict() for d in digests],
            "context": dict(context),
            "expire_time": format_time(request.expires),
            "idempotency_key": idempotency_key,
            "threshold": policy.threshold,
            "approvers": list(policy.approvers),
        }
        if caller is not None:
            details["caller"] = caller.as_dict()
        if payload_type:
            details["payload_type"] = payload_type
            details["payload"] = base64.b64encode(payload).decode()
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
            if tx.count_pending(actor) >= self.limits.max_pending_per_requester:
                raise TooLargeError(
                    f"{echo(actor)} already has {self.limits.max_pending_per_requester} pending "
                    "requests; wait for decisions or cancel some",
                    reason="TOO_MANY_PENDING",
                )
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

    def get_for_approver(self, actor: str, request_id: str) -> Request:
        request = self._get(request_id)
        policy = self.policies.get(request.key_name)
        if policy is None or actor not in policy.approvers:
            raise PermissionDeniedError(
                f"{echo(actor)} is not an approver for key {request.key_name!r}",
                reason="NOT_AN_APPROVER",
            )
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
        self._check_reason(reason)
        self._expire_if_due(request_id)
        now = self.clock()
        with self._tx() as tx:
            request = self._get_in(tx, request_id)
            if request.requester != actor:
                raise PermissionDeniedError(
                    f"only the requester of {request_id} may cancel it", reason="NOT_YOUR_REQUEST"
                )
            self._require_pending(request, now, "cancel")
            tx.set_state(request_id, State.CANCELLED, now, reason)
            tx.append_audit(
                now, "request.cancelled", actor, request_id, request.key_name, {"reason": reason}
            )
        self.events.emit(Event(Kind.CANCELLED, request_id, request.key_name, actor))
        return self._get(request_id)

    def list_for_approver(
        self, actor: str, states: frozenset[State], after: int, limit: int
    ) -> list[tuple[int, Request]]:
        """A page of requests on keys `actor` approves for: at most `limit`, and as many
        large batches as fit in one page's bytes (one at least)."""
        keys = frozenset(n for n, p in self.policies.items() if actor in p.approvers)
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
        reached = False
        with self._tx() as tx:
            request = self._get_in(tx, request_id)
            policy = self.policies.get(request.key_name)
            if policy is None or actor not in policy.approvers:
                raise PermissionDeniedError(
                    f"{echo(actor)} is not an approver for key {request.key_name!r}",
                    reason="NOT_AN_APPROVER",
                )
            if not request.may_decide(actor):
                raise PermissionDeniedError(
                    f"{echo(actor)} made request {request_id} (or started its pipeline) "
                    "and cannot decide on it",
                    reason="REQUESTER_CANNOT_APPROVE",
                )
            self._check_binding(statement, request, actor, decision)
            self._require_pending(request, now, decision)
            if any(a.approver == actor for a in request.approvals):
                raise ConflictError(
                    f"{echo(actor)} has already decided on request {request_id}; "
                    "each officer counts once",
                    reason="ALREADY_DECIDED",
                )
            approval = Approval(request_id, actor, decision, envelope, now, statement.reason)
            tx.insert_approval(approval)
            entry_details = {"approver": actor, "envelope": envelope.decode()}
            if decision == "deny":
                tx.append_audit(
                    now,
                    "request.denied",
                    actor,
                    request_id,
                    request.key_name,
                    {**entry_details, "reason": statement.reason},
                )
                tx.set_state(
                    request_id, State.DENIED, now, f"denied by {actor}: {statement.reason}"
                )
            else:
                tx.append_audit(
                    now, "request.approved", actor, request_id, request.key_name, entry_details
                )
                updated = self._get_in(tx, request_id)
                approvers = self._quorum(updated)
                if approvers is not None:
                    tx.set_state(request_id, State.APPROVED, now)
                    tx.append_audit(
                        now,
                        "request.quorum",
                        actor,
                        request_id,
                        request.key_name,
                        {"approvers": approvers, "threshold": policy.threshold},
                    )
                    reached = True
            result = self._get_in(tx, request_id)
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

    def _check_binding(self, st: Statement, request: Request, actor: str, decision: str) -> None:
        """Every field of the signed statement must equal the stored request."""
        mismatches = st.unbound(
            approver=actor,
            decision=decision,
            request_id=request.id,
            key_name=request.key_name,
            key_id=request.key_id,
            digests=request.digests,
        )
        if mismatches:
            raise EnvelopeError(
                f"the signed statement does not match request {request.id}: "
                f"{', '.join(mismatches)} differ; re-fetch the request and sign again",
                reason="STATEMENT_MISMATCH",
            )
        if st.issued_at > self.clock() + _CLOCK_SKEW:
            raise EnvelopeError(
                "the statement's issued_at is in the future; check the clock",
                reason="STATEMENT_MISMATCH",
            )
        if st.issued_at < request.created - _CLOCK_SKEW:
            raise EnvelopeError(
                "the statement was issued before the request existed", reason="STATEMENT_MISMATCH"
            )
        if decision == "deny":
            self._check_reason(st.reason)

    def _quorum(self, request: Request) -> list[str] | None:
        """Approvers making a valid quorum for `request`, or None (invariant 2)."""
        policy = self.policies.get(request.key_name)
        spec = self.keys.get(request.key_name)
        if (
            policy is None
            or spec is None
            or spec.key_id != request.key_id
            or spec.algorithm.name != request.algorithm
        ):
            return None
        if any(a.decision == "deny" for a in request.approvals):
            return None
        valid: list[tuple[str, bytes]] = []
        for a in request.approvals:
            key = self.approver_keys.get(a.approver)
            if (
                a.decision != "approve"
                or a.approver not in policy.approvers
                or not request.may_decide(a.approver)
                or key is None
            ):
                continue
            try:
                st = Envelope.parse(a.envelope).verify(key)
                self._check_binding(st, request, a.approver, "approve")
            except EnvelopeError:
                continue
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            valid.append((a.approver, raw))
        counted = distinct_approvers(valid)
        return sorted(counted) if len(counted) >= policy.threshold else None

    # -- signing --------------------------------------------------------------

    def _sign(self, request_id: str) -> Request | None:
        """Sign an APPROVED request in the token and record it; one signer at a time.

        Returns the request as signed here, or None if it was not (signed elsewhere,
        failed, or no longer APPROVED)."""
        with self._signing_lock:
            if request_id in self._signing:
                return None
            self._signing.add(request_id)
        try:
            return self._sign_now(request_id)
        finally:
            with self._signing_lock:
                self._signing.discard(request_id)

    def _sign_now(self, request_id: str) -> Request | None:
        request = self._get(request_id)
        if request.state is not State.APPROVED:
            return None
        approvers = self._quorum(request)
        spec = self.keys.get(request.key_name)
        if approvers is None or spec is None:
            self._fail(request, "the quorum no longer holds under the loaded policy")
            return None
        started = time.perf_counter()
        try:
            signatures = self.token.sign_digests(
                spec.name, spec.algorithm, [(d.algorithm, d.value) for d in request.digests]
            )
        except TokenError as e:
            log.error("token signing failed", request_id=request_id, error=str(e))
            self._fail(request, f"the token failed to sign: {e}", token=True)
            return None
        token_seconds = time.perf_counter() - started
        now = self.clock()
        with self._tx() as tx:
            current = self._get_in(tx, request_id)
            if current.state is not State.APPROVED:
                return None
            tx.insert_signatures(request_id, signatures)
            tx.set_state(request_id, State.SIGNED, now)
            tx.append_audit(
                now,
                "request.signed",
                "signer",
                request_id,
                request.key_name,
                {
                    "key_id": spec.key_id,
                    "approvers": approvers,
                    "signature_sha256": [hashlib.sha256(s).hexdigest() for s in signatures],
                },
            )
            signed = self._get_in(tx, request_id)
        self.events.emit(
            Event(
                Kind.SIGNED,
                request_id,
                request.key_name,
                "signer",
                {"seconds": token_seconds, "signatures": len(signatures)},
            )
        )
        log.info("request signed", request_id=request_id, signatures=len(signatures))
        return signed

    def _fail(self, request: Request, why: str, token: bool = False) -> None:
        now = self.clock()
        with self._tx() as tx:
            if self._get_in(tx, request.id).state is not State.APPROVED:
                return
            tx.set_state(request.id, State.FAILED, now, why)
            tx.append_audit(
                now, "request.failed", "signer", request.id, request.key_name, {"error": why}
            )
        self.events.emit(
            Event(Kind.FAILED, request.id, request.key_name, "signer", {"token": token})
        )

    def recover(self, min_age: dt.timedelta = dt.timedelta(0)) -> int:
        """Sign APPROVED requests left unsigned (crash, store outage). Returns how many."""
        with self._tx() as tx:
            ids = tx.ids_in_state(State.APPROVED)
        cutoff = self.clock() - min_age
        done = 0
        for rid in ids:
            if self._get(rid).updated <= cutoff:
                self._sign(rid)
                done += 1
        return done

    # -- expiry ----------------------------------------------------------------

    def expire_due(self) -> int:
        """Move PENDING requests past their TTL to EXPIRED, with audit entries."""
        now = self.clock()
        with self._tx() as tx:
            ids = tx.pending_due(now)
            for rid in ids:
                request = self._get_in(tx, rid)
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
            expires = tx.pending_expiry(request_id) if _REQUEST_ID.match(request_id) else None
        if expires is not None and self.clock() >= expires:
            self.expire_due()

    # -- audit -------------------------------------------------------------------

    def record(
        self,
        event: str,
        actor: str,
        details: dict[str, Any],
        request_id: str = "",
        key_name: str = "",
    ) -> AuditEntry:
        """Append a stand-alone audit event (server start, key generation, rejections)."""
        with self._tx() as tx:
            return tx.append_audit(self.clock(), event, actor, request_id, key_name, details)

    def record_rejection(
        self, actor: str, method: str, error: SignerError, request_id: str = ""
    ) -> None:
        """Audit a rejected call; past the per-identity rate, count it into the next entry."""
        self.events.emit(  # every one, audited or not
            Event(
                Kind.REJECTED,
                request_id,
                actor=actor,
                details={"reason": error.reason, "method": method},
            )
        )
        with self._rejections_lock:
            minute = int(self.clock().timestamp() // 60)
            start, recorded, suppressed = self._rejections.get(actor, (minute, 0, 0))
            if start != minute:
                start, recorded = minute, 0
            if recorded >= self.limits.max_rejections_per_minute:
                self._rejections[actor] = (start, recorded, suppressed + 1)
                if suppressed == 0:  # once per identity and minute, not once per call
                    log.warning("rejections not audited: rate exceeded", identity=actor)
                return
            self._rejections[actor] = (start, recorded + 1, 0)
        details: dict[str, Any] = {
            **error.details,
            "method": method,
            "reason": error.reason,
            "message": str(error)[:_MAX_RECORDED_MESSAGE],
        }
        if suppressed:
            details["suppressed_before"] = suppressed
        try:
            self.record(
                "call.rejected",
                actor,
                details,
                request_id=request_id if _REQUEST_ID.match(request_id) else "",
            )
        except SignerError:
            with self._rejections_lock:  # not recorded: keep counting it
                s, r, n = self._rejections[actor]
                self._rejections[actor] = (s, r, n + suppressed)
            raise

    def list_audit(self, f: AuditFilter, after: int, limit: int) -> list[AuditEntry]:
        """A page of matching entries: at most `limit`, within one page's bytes (one at least)."""
        with self._tx() as tx:
            return tx.list_audit(f, after, limit, PAGE_BYTES)

    # -- the tree (DESIGN §6) ------------------------------------------------------

    def latest_checkpoint(self) -> tuple[int, str]:
        with self._tx() as tx:
            found = tx.checkpoint()
        if found is None:
            raise NotFoundError("the audit log has no checkpoint yet", reason="NO_CHECKPOINT")
        return found

    def entries(self, start: int, end: int) -> list[bytes]:
        with self._tx() as tx:
            size = tx.tree_size()
            if not 0 <= start <= size or end < start:
                raise InvalidArgumentError(
                    f"entries [{start}, {end}) are outside the log of {size} entries",
                    reason="BAD_RANGE",
                )
            return tx.entries(start, min(end, size, start + 1000), PAGE_BYTES)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        with self._tx() as tx:
            current = tx.tree_size()
            if not 0 <= index < size <= current:
                raise InvalidArgumentError(
                    f"need 0 <= index < tree_size <= {current}; got index {index}, "
                    f"tree_size {size}",
                    reason="BAD_RANGE",
                )
            return merkle.inclusion_proof(tx, index, size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        with self._tx() as tx:
            current = tx.tree_size()
            if not 0 < first <= second <= current:
                raise InvalidArgumentError(
                    f"need 0 < first <= second <= {current}; got {first}, {second}",
                    reason="BAD_RANGE",
                )
            return merkle.consistency_proof(tx, first, second)

    def audit_proof(self, request_id: str) -> SignedProof | None:
        """Where a SIGNED request's request.signed entry is, proven in the latest checkpoint."""
        with self._tx() as tx:
            index = tx.signed_entry(request_id)
            found = tx.checkpoint()
            if index is None or found is None or found[0] <= index:
                return None
            size, note = found
            return SignedProof(
                index,
                tx.entries(index, index + 1)[0],
                size,
                merkle.inclusion_proof(tx, index, size),
                note,
            )

    # -- helpers -------------------------------------------------------------------

    def _key(self, key_name: str) -> tuple[KeyPolicy, KeySpec]:
        policy, spec = self.policies.get(key_name), self.keys.get(key_name)
        if policy is None or spec is None:
            raise NotFoundError(
                f"no signing key named {echo(key_name)}; see `signer keys list`",
                reason="UNKNOWN_KEY",
            )
        return policy, spec

    def _get(self, request_id: str) -> Request:
        with self._tx() as tx:
            return self._get_in(tx, request_id)

    @staticmethod
    def _get_in(tx: Tx, request_id: str) -> Request:
        request = tx.get_request(request_id) if _REQUEST_ID.match(request_id) else None
        if request is None:
            raise NotFoundError(f"no request with id {echo(request_id)}", reason="UNKNOWN_REQUEST")
        return request

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

    def _check_digests(self, digests: list[Digest], spec: KeySpec) -> None:
        if not digests:
            raise InvalidArgumentError("no digests given; send at least one", reason="NO_DIGESTS")
        if len(digests) > self.limits.max_digests:
            raise TooLargeError(
                f"{len(digests)} digests in one request; the limit is {self.limits.max_digests}",
                reason="TOO_MANY_DIGESTS",
            )
        if not spec.algorithm.signs_digests:
            raise InvalidArgumentError(
                f"key {spec.name!r} is {spec.algorithm.name} and cannot sign digests",
                reason="KEY_CANNOT_SIGN_DIGESTS",
            )
        for i, d in enumerate(digests):
            size = HASH_SIZES.get(d.algorithm)
            if size is None:
                raise InvalidArgumentError(
                    f"digest {i}: unknown hash algorithm; use sha256, sha384 or sha512",
                    reason="UNKNOWN_HASH",
                )
            if len(d.value) != size:
                raise InvalidArgumentError(
                    f"digest {i}: a {d.algorithm} digest is {size} bytes, got {len(d.value)}",
                    reason="BAD_DIGEST_LENGTH",
                )
            if not is_artifact_name(d.artifact):
                raise InvalidArgumentError(
                    f"digest {i}: artifact name must be 1-{MAX_ARTIFACT} characters {DISPLAY_RULE}",
                    reason="BAD_ARTIFACT_NAME",
                )

    def _check_payload(self, payload_type: str, payload: bytes, digests: list[Digest]) -> None:
        if payload_type or payload:
            fmt = formats.for_payload_type(payload_type)
            fmt.check_payload(payload, digests, self.limits.max_digests)

    def _check_context(self, context: Mapping[str, str]) -> None:
        if len(context) > self.limits.max_context_entries:
            raise TooLargeError(
                f"{len(context)} context entries; the limit is {self.limits.max_context_entries}",
                reason="CONTEXT_TOO_LARGE",
            )
        for k, v in context.items():
            if not _CONTEXT_KEY.match(k):
                raise InvalidArgumentError(
                    f"context key {echo(k)} must be 1-64 of A-Z a-z 0-9 _ . -",
                    reason="BAD_CONTEXT",
                )
            if len(v) > self.limits.max_context_value or not is_displayable(v):
                raise InvalidArgumentError(
                    f"context value for {k!r} must be at most {self.limits.max_context_value} "
                    f"characters {DISPLAY_RULE}",
                    reason="BAD_CONTEXT",
                )

    def _check_reason(self, reason: str) -> None:
        if len(reason) > self.limits.max_reason:
            raise InvalidArgumentError(
                f"reason is over {self.limits.max_reason} characters", reason="BAD_REASON"
            )
        if not is_displayable(reason):
            raise InvalidArgumentError(f"reason must be {DISPLAY_RULE}", reason="BAD_REASON")

    def _ttl(self, ttl: dt.timedelta | None, policy: KeyPolicy) -> dt.timedelta:
        if ttl is None or ttl == dt.timedelta(0):
            return policy.max_ttl
        if ttl < self.limits.min_ttl:
            raise InvalidArgumentError(
                f"ttl must be at least {self.limits.min_ttl}", reason="BAD_TTL"
            )
        return min(ttl, policy.max_ttl)
