"""The signing step: an APPROVED request signed in the token and recorded, or failed.

A mixin of the core (it shares the core's store transactions, keys, policies and
event hook). Upholds:

- (2) the quorum is checked again (`quorum.quorum`, under the policy loaded now)
  right before the token is called; a quorum that no longer holds fails the
  request instead of signing it; so does a carried payload that no longer passes
  its format's check for the key as loaded here, at the request's own time (a
  replica whose token keeps another OpenPGP creation time, say); and nothing is
  signed under a policy version that is no longer the one in force (a new version
  adopted while this server ran): the request waits, APPROVED, until this server
  takes the new one on (`signer.server.app.Server.follow_policy`) and signs it under
  that one; nor outside the key's release windows (checked before the token is
  called and again where the signature is recorded: it waits for the next window);
- (3) the signatures are stored and `request.signed` appended in one
  transaction: a signature whose entry cannot be written is never returned;
- a key an officer froze is not signed with: checked before the token is called
  and again in the transaction that would record the signatures (a freeze on
  another replica in between drops them and fails the request);
- (9) one signer per request at a time in this process, and a request no
  longer APPROVED when the token returns is not recorded twice; `recover()`
  signs the APPROVED requests a crash or a store outage left unsigned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import structlog

from signer.algorithms import KeyAlgorithm
from signer.core.enforced import Enforced
from signer.core.events import Event, Hook, Kind
from signer.core.intake import Limits, check_payload, find_request
from signer.core.limits import DAY, Usage
from signer.core.policy import KeyPolicy
from signer.core.quorum import quorum
from signer.core.unusual import values_of
from signer.errors import InvalidArgumentError, TokenError, TooLargeError
from signer.model import KeySpec, Request, State
from signer.store.base import FrozenKey, Tx

__all__ = ["DigestSigner", "Signing", "usage_of"]

log = structlog.get_logger("signer.core.signing")


class DigestSigner(Protocol):
    """The token as the core sees it."""

    def sign_digests(
        self, name: str, algorithm: KeyAlgorithm, digests: Sequence[tuple[str, bytes]]
    ) -> list[bytes]:
        """(hash name, digest) pairs signed in order, in one token loop."""
        ...


class FreezeMarks(Protocol):
    """Freezes kept outside the database too (the token), so that deleting a row does
    not lift one: each key's marks are the audit indexes of its freezes."""

    def marks(self, key_name: str) -> list[int]: ...

    def mark(self, key_name: str, index: int) -> None: ...


class Signing:
    """Signs APPROVED requests; the core sets every attribute named here."""

    token: DigestSigner
    enforced: Enforced
    clock: Callable[[], dt.datetime]
    limits: Limits
    events: Hook
    superseded: Callable[[], str | None]  # why the loaded policy is no longer in force
    superseded_now: Callable[[], str | None]  # the same, read now (not from a cache)
    freeze_marks: FreezeMarks | None
    _signing: set[str]
    _signing_lock: threading.Lock

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _get(self, request_id: str) -> Request:
        with self._tx() as tx:
            return find_request(tx, request_id)

    def _quorum(self, request: Request, enforced: Enforced | None = None) -> list[str] | None:
        """Approvers making a valid quorum for `request` now (under `enforced`, by default
        the policy in force), or None (invariant 2)."""
        e = enforced or self.enforced
        return quorum(
            request,
            e.policies.get(request.key_name),
            e.keys.get(request.key_name),
            e.approver_keys,
            self.clock(),
            self.limits,
        )

    def _held(self, tx: Tx, key_name: str) -> FrozenKey | None:
        """The freeze holding on `key_name`: its row, or, with the row gone from the
        database, the token's mark of it."""
        held = tx.frozen_key(key_name)
        if held is not None or self.freeze_marks is None:
            return held
        marks = self.freeze_marks.marks(key_name)
        if not marks:
            return None
        return FrozenKey(
            key_name,
            min(marks),
            "an officer",
            "kept in the token; its database row is gone",
            dt.datetime.fromtimestamp(0, dt.UTC),
        )

    def recover(self, min_age: dt.timedelta = dt.timedelta(0)) -> int:
        """Sign APPROVED requests left unsigned (crash, store outage, a release window
        closed). Returns how many it signed."""
        with self._tx() as tx:
            ids = tx.ids_in_state(State.APPROVED)
        cutoff = self.clock() - min_age
        done = 0
        for rid in ids:
            if self._get(rid).updated <= cutoff and self._sign(rid) is not None:
                done += 1
        return done

    def _why_no_quorum(self, request: Request, enforced: Enforced) -> str:
        """Why an approved request's quorum does not hold now (for its FAILED message)."""
        policy = enforced.policies.get(request.key_name)
        age = policy.limits.approval_max_age if policy is not None else None
        if policy is not None and age is not None:
            ageless = dataclasses.replace(
                policy, limits=dataclasses.replace(policy.limits, approval_max_age=None)
            )
            policies = {**enforced.policies, request.key_name: ageless}
            if self._quorum(request, dataclasses.replace(enforced, policies=policies)):
                return (
                    f"the quorum no longer holds: its approvals are older than the "
                    f"approval_max_age of key {request.key_name!r} ({age}); ask again"
                )
        return "the quorum no longer holds under the loaded policy"

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
        enforced = self.enforced  # one version throughout
        policy = enforced.policies.get(request.key_name)
        if policy is not None and policy.limits.counted:
            with self._tx() as tx:
                usage = usage_of(tx, policy, request, self.clock())
        else:
            usage = None
        if policy is not None and (why := policy.signing_problem(self.clock(), usage)) is not None:
            # Kept APPROVED: `recover` (the sweeper, every second) signs it once it may;
            # its requester reads why in its status message.
            log.debug("request left approved", request_id=request_id, error=why)
            if request.status_message != why:
                with self._tx() as tx:
                    tx.set_message(request_id, State.APPROVED, why)
            return None
        approvers = self._quorum(request, enforced)
        spec = enforced.keys.get(request.key_name)
        if approvers is None or spec is None:
            self._fail(request, self._why_no_quorum(request, enforced))
            return None
        try:  # as at intake, for the key as this server loaded it (another replica's?)
            check_payload(
                request.payload_type,
                request.payload,
                list(request.digests),
                spec,
                self.limits,
                request.created,
            )
        except (InvalidArgumentError, TooLargeError) as e:
            if e.reason == "KEY_UNSUITABLE_FOR_FORMAT" and spec.openpgp_created is None:
                # A token restored without its creation time: kept APPROVED until the
                # operator gives it back, then signed by `recover()` at the next start.
                log.error("request left approved", request_id=request_id, error=str(e))
                return None
            self._fail(request, f"its payload does not pass its format's check for this key: {e}")
            return None
        with self._tx() as tx:
            held = self._held(tx, request.key_name)
        if held is not None:
            self._fail(request, _frozen(held))
            return None
        if (why := self.superseded()) is not None:
            # Kept APPROVED: the server restarted under the version in force signs it,
            # if that version's quorum holds (`recover`).
            log.error("request left approved", request_id=request_id, error=why)
            return None
        started = time.perf_counter()
        try:
            signatures = self.token.sign_digests(
                spec.token_label, spec.algorithm, [(d.algorithm, d.value) for d in request.digests]
            )
        except TokenError as e:
            log.error("token signing failed", request_id=request_id, error=str(e))
            self._fail(request, f"the token failed to sign: {e}", token=True)
            return None
        token_seconds = time.perf_counter() - started
        signed = self._record_signed(request, spec, approvers, signatures, enforced)
        if signed is None:
            with self._tx() as tx:
                held = self._held(tx, request.key_name)
            if held is not None:  # frozen while the token signed: the signatures are dropped
                self._fail(request, _frozen(held))
        if signed is not None:
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

    def _record_signed(
        self,
        request: Request,
        spec: KeySpec,
        approvers: list[str],
        signatures: list[bytes],
        enforced: Enforced,
    ) -> Request | None:
        """Store the signatures with their audit entry, unless the request moved on."""
        now = self.clock()
        with self._tx() as tx:
            if find_request(tx, request.id).state is not State.APPROVED:
                return None
            if self._held(tx, request.key_name) is not None:  # checked where it is recorded
                return None
            # A version adopted since the check before signing: these signatures were
            # made under the one before, so they are dropped and the request waits (a
            # version's adoption and this record are serialised by the store's lock).
            if (why := self.superseded_now()) is not None:
                log.error("request left approved", request_id=request.id, error=why)
                return None
            if self.enforced is not enforced:  # switched while the token signed
                log.warning("request left approved: the policy in force changed meanwhile")
                return None
            policy = enforced.policies.get(request.key_name)
            usage = usage_of(tx, policy, request, now) if policy and policy.limits.counted else None
            if policy is not None and policy.signing_problem(now, usage) is not None:
                return None  # a window closed or a count filled while the token signed
            current = find_request(tx, request.id)
            if policy is not None and not _still_counted(current, approvers, policy, now):
                # An approval went past its age while the token signed: held, and failed
                # (saying so) when it is tried again.
                return None
            tx.insert_signatures(request.id, signatures)
            tx.set_state(request.id, State.SIGNED, now)
            # who and where the key now signs for: no longer unusual on it
            tx.mark_signed(request.key_name, values_of(request.requester, request.caller))
            tx.append_audit(
                now,
                "request.signed",
                "signer",
                request.id,
                request.key_name,
                {
                    "key_id": spec.key_id,
                    "approvers": approvers,
                    "signature_sha256": [hashlib.sha256(s).hexdigest() for s in signatures],
                    # The policy version signed under: what a bundle's chain must reach.
                    **({"policy_sha256": enforced.sha256} if enforced.sha256 else {}),
                },
            )
            return find_request(tx, request.id)

    def _fail(self, request: Request, why: str, token: bool = False) -> None:
        now = self.clock()
        with self._tx() as tx:
            if find_request(tx, request.id).state is not State.APPROVED:
                return
            tx.set_state(request.id, State.FAILED, now, why)
            tx.append_audit(
                now, "request.failed", "signer", request.id, request.key_name, {"error": why}
            )
        self.events.emit(
            Event(Kind.FAILED, request.id, request.key_name, "signer", {"token": token})
        )


def _still_counted(
    request: Request, approvers: list[str], policy: KeyPolicy, now: dt.datetime
) -> bool:
    """Whether the approvals of the quorum counted before signing all still count at
    `now` (their age), as `signer audit verify` checks them at the signature's time."""
    given = {a.approver: a.created for a in request.approvals}
    return all(a in given and policy.approval_counts(given[a], now) for a in approvers)


def usage_of(tx: Tx, policy: KeyPolicy, request: Request, now: dt.datetime) -> Usage:
    """The key's count of signatures as a signature of `request` at `now` meets it."""
    opened = policy.window_opened(now) if policy.limits.per_window is not None else None
    return Usage(
        len(request.digests),
        tx.signatures_since(policy.name, now - DAY, inclusive=False),
        tx.signatures_since(policy.name, opened, inclusive=True) if opened else 0,
    )


def _frozen(held: FrozenKey) -> str:
    return (
        f"key {held.key_name} was frozen by {held.officer} at audit entry {held.since_index} "
        f"({held.reason}); not signed"
    )
