"""The request state machine under any sequence of calls (hypothesis, invariants 2, 3, 9).

Rules create requests, approve and deny them (members, a non-member, the
requester, tampered envelopes), cancel, move the fake clock and expire,
unplug the token, crash it mid-signing, and restart (a new Core over the same
SQLite file, then recover()). After every step the store is read back and
checked independently of the core (tests/store_checks.py): every SIGNED
request has m valid, bound, distinct approvals and exactly one matching
request.signed entry; every state change and decision has its audit entry;
the log is gap-free and canonical; states only move forward; the checkpoints
prove the log (invariant 4).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from signer.audit.entry import EVENTS, AuditEntry
from signer.audit.note import Checkpoint
from signer.errors import (
    AlreadyExistsError,
    ConflictError,
    EnvelopeError,
    PermissionDeniedError,
    SignerError,
)
from signer.model import Digest, Request, State
from testbed.env import Db
from tests.fakes import SimulatedCrash, World, make_world
from tests.store_checks import StoreChecks

# Tampering that breaks the envelope's signature, and that changes a signed field.
_SIG_TAMPER = ("other-key", "bit-flip")
_FIELD_TAMPER = ("request_id", "key_id", "digests", "approver", "future", "past")
OFFICER = st.sampled_from(["alice", "bob", "carol", "dave"])


def _digests(seed: int, n: int) -> list[Digest]:
    return [
        Digest("sha256", hashlib.sha256(f"{seed}/{i}".encode()).digest(), f"file{i}.tar")
        for i in range(n)
    ]


def _flip_sig(envelope: bytes) -> bytes:
    d = json.loads(envelope)
    sig = bytearray(base64.b64decode(d["signatures"][0]["sig"]))
    sig[5] ^= 0x10
    d["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(d).encode()


class CoreMachine(StoreChecks, RuleBasedStateMachine):
    requests = Bundle("requests")

    def __init__(self, new_db: Callable[[], Db] | None = None) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="signer-sm-"))
        self.w: World = make_world(self.dir, db=new_db() if new_db else None)
        self.w.token.on_sign = self._token_called
        self.idempotent: dict[tuple[str, str], tuple[tuple[int, int], str]] = {}
        self.last_state: dict[str, State] = {}
        self.signatures: dict[str, tuple[bytes, ...]] = {}
        self.audit_bytes: list[bytes] = []
        self.checkpoints: dict[int, tuple[str, Checkpoint]] = {}  # size -> (note, opened)

    def teardown(self) -> None:
        self.w.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------

    def _token_called(self, name: str, hash_name: str, digest: bytes) -> None:
        """The token signs only for an APPROVED request with a quorum (invariant 2)."""
        holders = [r for r in self.w.requests() if any(d.value == digest for d in r.digests)]
        assert any(
            r.state is State.APPROVED and len(self._valid_approvers(r)) >= self.w.policy.threshold
            for r in holders
        ), f"token asked to sign {digest.hex()} without an approved quorum"

    def _only_expiries_since(self, before: int) -> None:
        """A refused call may expire due requests first, and change nothing else."""
        new = [AuditEntry.from_bytes(b) for b in self._audit_events()[before:]]
        assert all(e.event == "request.expired" for e in new), [e.event for e in new]

    def _expected_failures(
        self, r: Request, officer: str, tamper: str | None
    ) -> tuple[type[SignerError], ...]:
        """Every refusal that applies to this decision (the core may report any one)."""
        out: list[type[SignerError]] = []
        if tamper in _SIG_TAMPER or tamper in _FIELD_TAMPER:
            out.append(EnvelopeError)
        if officer not in self.w.policy.approvers or officer == r.requester:
            out.append(PermissionDeniedError)
        if r.state is not State.PENDING or self.w.clock() >= r.expires:
            out.append(ConflictError)
        if any(a.approver == officer for a in r.approvals):
            out.append(ConflictError)
        return tuple(out)

    def _envelope(self, officer: str, r: Request, tamper: str | None, **kw: Any) -> bytes:
        now = self.w.clock()
        other = {"alice": "bob", "bob": "carol", "carol": "dave", "dave": "alice"}[officer]
        table: dict[str | None, dict[str, Any]] = {
            None: {},
            "other-key": {"signer": other},
            "bit-flip": {},
            "request_id": {"request_id": "00000000-0000-4000-8000-000000000000"},
            "key_id": {"key_id": "ab" * 32},
            "digests": {"digests": tuple(_digests(99, 1))},
            "approver": {"approver": other},
            "future": {"issued_at": now + dt.timedelta(minutes=6)},
            "past": {"issued_at": r.created - dt.timedelta(minutes=6)},
        }
        overrides = table[tamper]
        env = self.w.envelope(officer, r, **{**kw, **overrides})
        return _flip_sig(env) if tamper == "bit-flip" else env

    def _decide(self, rid: str, officer: str, tamper: str | None, decision: str) -> None:
        r = self.w.get(rid)
        expected = self._expected_failures(r, officer, tamper)
        reason = "not this build" if decision == "deny" else ""
        env = self._envelope(officer, r, tamper, decision=decision, reason=reason)
        before = len(self._audit_events())
        try:
            after = self.w.core.decide(officer, rid, env, decision)
        except SimulatedCrash:
            assert not expected and decision == "approve"
            assert self.w.get(rid).state is State.APPROVED
            return
        except SignerError as e:
            assert expected, f"{officer} {decision} refused unexpectedly: {e!r}"
            assert isinstance(e, expected), (e, expected)
            self._only_expiries_since(before)
            assert len(self.w.get(rid).approvals) == len(r.approvals)
            return
        assert not expected, f"{officer} {decision} accepted, expected {expected}"
        if decision == "deny":
            assert after.state is State.DENIED
        elif len(self._valid_approvers(after)) >= self.w.policy.threshold:
            assert after.state is (State.FAILED if self.w.token.fail else State.SIGNED)
        else:
            assert after.state is State.PENDING

    # -- rules -------------------------------------------------------------------------

    @initialize(target=requests, who=st.sampled_from(["ci", "carol"]))
    def first_request(self, who: str) -> str:
        return self.w.create(who, _digests(7, 2)).id

    @rule(
        target=requests,
        who=st.sampled_from(["ci", "carol"]),
        seed=st.integers(0, 2),
        n=st.integers(1, 3),
        ttl_minutes=st.sampled_from([1, 20, 60, 90]),
        idem=st.sampled_from(["", "", "retry-1", "retry-2"]),
    )
    def create(self, who: str, seed: int, n: int, ttl_minutes: int, idem: str) -> Any:
        kw: dict[str, Any] = {"ttl": dt.timedelta(minutes=ttl_minutes), "idempotency_key": idem}
        earlier = self.idempotent.get((who, idem)) if idem else None
        if earlier is not None and earlier[0] != (seed, n):
            try:
                self.w.create(who, _digests(seed, n), **kw)
            except AlreadyExistsError:
                return multiple()
            raise AssertionError("idempotency key reused with other digests was accepted")
        r = self.w.create(who, _digests(seed, n), **kw)
        if earlier is not None:
            assert r.id == earlier[1]
        elif idem:
            self.idempotent[(who, idem)] = ((seed, n), r.id)
        return r.id

    @rule(
        rid=requests,
        officer=OFFICER,
        tamper=st.sampled_from([None, None, None, *_SIG_TAMPER, *_FIELD_TAMPER]),
    )
    def approve(self, rid: str, officer: str, tamper: str | None) -> None:
        self._decide(rid, officer, tamper, "approve")

    @rule(rid=requests, officer=st.sampled_from(["alice", "bob", "carol"]))
    def approve_valid(self, rid: str, officer: str) -> None:
        self._decide(rid, officer, None, "approve")

    @rule(
        rid=requests, pair=st.sampled_from([("alice", "bob"), ("bob", "carol"), ("carol", "alice")])
    )
    def approve_two(self, rid: str, pair: tuple[str, str]) -> None:
        for officer in pair:
            self._decide(rid, officer, None, "approve")

    @rule(rid=requests, officer=OFFICER, tamper=st.sampled_from([None, None, "other-key"]))
    def deny(self, rid: str, officer: str, tamper: str | None) -> None:
        self._decide(rid, officer, tamper, "deny")

    @rule(rid=requests, who=st.sampled_from(["ci", "carol"]))
    def cancel(self, rid: str, who: str) -> None:
        r = self.w.get(rid)
        ok = who == r.requester and r.state is State.PENDING and self.w.clock() < r.expires
        try:
            cancelled = self.w.core.cancel(who, rid, "changed my mind")
        except (PermissionDeniedError, ConflictError):
            assert not ok
            return
        assert ok and cancelled.state is State.CANCELLED

    @rule(minutes=st.sampled_from([0, 1, 10, 30, 61]))
    def advance_clock_and_expire(self, minutes: int) -> None:
        now = self.w.clock.advance(dt.timedelta(minutes=minutes))
        due = [r.id for r in self.w.requests() if r.state is State.PENDING and r.expires <= now]
        assert self.w.core.expire_due() == len(due)
        assert all(self.w.get(rid).state is State.EXPIRED for rid in due)

    @rule()
    def toggle_token_failure(self) -> None:
        self.w.token.fail = not self.w.token.fail

    @rule()
    def toggle_token_crash(self) -> None:
        self.w.token.crash = not self.w.token.crash

    @precondition(lambda self: not self.w.token.crash)
    @rule()
    def restart(self) -> None:
        self.w.restart()
        self._check_tree()  # reopening the store loses no entry and no checkpoint
        self.w.core.recover()
        assert self.w.count(State.APPROVED) == 0

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def checkpoints_prove_the_log(self) -> None:
        self._check_tree()

    @invariant()
    def store_and_log_agree(self) -> None:
        raw = self._audit_events()
        for b in raw:
            assert AuditEntry.from_bytes(b).to_bytes() == b, "audit entry is not canonical"
        assert raw[: len(self.audit_bytes)] == self.audit_bytes, "audit log was rewritten"
        self.audit_bytes = raw
        entries = [AuditEntry.from_bytes(b) for b in raw]
        assert all(e.event in EVENTS for e in entries)
        by_request: dict[str, list[AuditEntry]] = {}
        for e in entries:
            by_request.setdefault(e.request_id, []).append(e)
        requests = self.w.requests()
        assert set(by_request) <= {r.id for r in requests}
        for r in requests:
            self._check_request(r, by_request.get(r.id, []))


def test_core_state_machine(new_db: Callable[[], Db]) -> None:
    """Quorum, audit and state invariants hold under any call sequence, on each backend."""
    run_state_machine_as_test(
        lambda: CoreMachine(new_db),  # type: ignore[arg-type]  # a factory is accepted
        settings=settings(max_examples=40, stateful_step_count=25, deadline=None),
    )
