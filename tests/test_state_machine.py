"""The request state machine under any sequence of calls (hypothesis, invariants 2, 3, 9).

Rules create requests, approve and deny them (members, a non-member, the
requester, tampered envelopes), cancel, move the fake clock and expire,
unplug the token, crash it mid-signing, and restart (a new Core over the same
SQLite file, then recover()). After every step the store is read back and
checked independently of the core: every SIGNED request has m valid, bound,
distinct approvals re-verified with the officers' keys and exactly one
matching request.signed entry; every state change and decision has its audit
entry; the log is gap-free and canonical; states only move forward. The
Merkle tree is checked the same way (invariant 4): the latest checkpoint
covers every entry, opens with the pinned verifier and has the root
recomputed from the entries; every older checkpoint is unchanged and
consistent with it; no size has two; and every SIGNED request's audit proof
verifies against it.
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

from signer.audit import merkle
from signer.audit.entry import EVENTS, AuditEntry
from signer.audit.note import Checkpoint, open_note
from signer.audit.proofs import SignedProof, verify_signed_proof
from signer.dsse import Envelope
from signer.errors import (
    AlreadyExistsError,
    ConflictError,
    EnvelopeError,
    PermissionDeniedError,
    SignerError,
)
from signer.model import Digest, Request, State
from signer.verify import verify_digest
from testbed.env import Db
from tests.fakes import AUDIT_ORIGIN, SimulatedCrash, World, make_world

# Where a request may be one step later (a step may approve and sign at once).
_NEXT: dict[State, frozenset[State]] = {
    State.PENDING: frozenset(State),
    State.APPROVED: frozenset({State.APPROVED, State.SIGNED, State.FAILED}),
}
# The audit event that records entering each state.
_ENTERED: dict[State, str] = {
    State.APPROVED: "request.quorum",
    State.DENIED: "request.denied",
    State.EXPIRED: "request.expired",
    State.CANCELLED: "request.cancelled",
    State.FAILED: "request.failed",
    State.SIGNED: "request.signed",
}
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


class CoreMachine(RuleBasedStateMachine):
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

    def _valid_approvers(self, r: Request) -> set[str]:
        """Approvers whose envelope re-verifies with our own copy of their key and binds `r`."""
        policy = self.w.policy
        valid = set()
        for a in r.approvals:
            if a.decision != "approve" or a.approver not in policy.approvers:
                continue
            if a.approver == r.requester:
                continue
            try:
                s = Envelope.parse(a.envelope).verify(self.w.officers[a.approver].public_key())
            except EnvelopeError:
                continue
            if (s.request_id, s.key_name, s.key_id, s.digests, s.approver, s.decision) == (
                r.id,
                r.key_name,
                self.w.keys[r.key_name].key_id,
                r.digests,
                a.approver,
                "approve",
            ):
                valid.add(a.approver)
        return valid

    def _audit_events(self) -> list[bytes]:
        rows = self.w.db.rows("SELECT idx, entry FROM audit_log ORDER BY idx")
        assert [i for i, _ in rows] == list(range(len(rows))), "audit index gap"
        return [bytes(e) for _, e in rows]

    def _stored_checkpoints(self) -> list[tuple[int, str]]:
        rows = self.w.db.rows("SELECT size, note FROM checkpoints ORDER BY size")
        return [(int(size), str(note)) for size, note in rows]

    def _open(self, size: int, note: str) -> Checkpoint:
        """The checkpoint in `note`, opened with the pinned verifier; the same note as before."""
        seen = self.checkpoints.get(size)
        if seen is not None:
            assert seen[0] == note, f"the checkpoint of size {size} changed"
            return seen[1]
        cp = Checkpoint.parse(open_note(note, [self.w.verifier]))
        assert (cp.origin, cp.size) == (AUDIT_ORIGIN, size)
        self.checkpoints[size] = (note, cp)
        return cp

    def _check_tree(self) -> None:
        """The checkpoints prove the log as the store holds it (invariant 4)."""
        raw = self._audit_events()
        stored = self._stored_checkpoints()
        sizes = [size for size, _ in stored]
        assert len(set(sizes)) == len(sizes), "two checkpoints of one size"
        assert set(self.checkpoints) <= set(sizes), "a checkpoint disappeared"
        if not raw:
            assert stored == []
            return
        size, note = self.w.core.latest_checkpoint()
        assert (size, note) == stored[-1]
        assert size == len(raw), f"{len(raw) - size} entries not covered by a checkpoint"
        latest = self._open(size, note)
        assert latest.root == merkle.root_from_leaves(merkle.leaf_hash(b) for b in raw)[1]
        for old_size, old_note in stored[:-1]:
            old = self._open(old_size, old_note)
            proof = self.w.core.consistency_proof(old_size, size)
            merkle.verify_consistency(old_size, size, old.root, latest.root, proof)
        for r in self.w.requests():
            p = self.w.core.audit_proof(r.id)
            if r.state is not State.SIGNED:
                assert p is None
                continue
            assert p is not None and (p.tree_size, p.checkpoint) == (size, note)
            signed = SignedProof(p.index, p.entry, p.tree_size, p.inclusion_proof, p.checkpoint)
            verify_signed_proof(signed, self.w.verifier, r.id, r.key_id, list(r.signatures))

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

    def _check_request(self, r: Request, entries: list[AuditEntry]) -> None:
        events = [e.event for e in entries]
        assert events[0] == "request.created" and events.count("request.created") == 1
        # Every decision has its entry, with the envelope verbatim.
        logged = sorted(
            (e.actor, e.event, e.details["envelope"])
            for e in entries
            if e.event in ("request.approved", "request.denied")
        )
        decided = {"approve": "request.approved", "deny": "request.denied"}
        assert logged == sorted(
            (a.approver, decided[a.decision], a.envelope.decode()) for a in r.approvals
        )
        # Every state entered has exactly one entry; states never entered have none.
        entered = {State.PENDING: set(), State.APPROVED: {State.APPROVED}}.get(r.state)
        if entered is None:
            via_quorum = r.state in (State.SIGNED, State.FAILED)
            entered = {r.state, State.APPROVED} if via_quorum else {r.state}
        for state, event in _ENTERED.items():
            assert events.count(event) == (1 if state in entered else 0), (r.state, events)
        # States only move forward.
        prev = self.last_state.get(r.id, State.PENDING)
        assert r.state in _NEXT.get(prev, frozenset({prev})), (prev, r.state)
        self.last_state[r.id] = r.state
        self._check_signatures(r, entries)

    def _check_signatures(self, r: Request, entries: list[AuditEntry]) -> None:
        if r.state is not State.SIGNED:
            assert r.signatures == ()
            return
        # No request is signed twice: its one signature set never changes.
        assert self.signatures.setdefault(r.id, r.signatures) == r.signatures
        assert len(r.signatures) == len(r.digests)
        for d, s in zip(r.digests, r.signatures, strict=True):
            verify_digest(self.w.token.public_key(r.key_name), d.algorithm, d.value, s)
        assert all(a.decision == "approve" for a in r.approvals), "signed despite a denial"
        valid = self._valid_approvers(r)
        assert len(valid) >= self.w.policy.threshold
        (signed,) = [e for e in entries if e.event == "request.signed"]
        assert signed.details["approvers"] == sorted(valid)
        assert set(signed.details["approvers"]) <= set(self.w.policy.approvers) - {r.requester}
        assert signed.details["signature_sha256"] == [
            hashlib.sha256(s).hexdigest() for s in r.signatures
        ]


def test_core_state_machine(new_db: Callable[[], Db]) -> None:
    """Quorum, audit and state invariants hold under any call sequence, on each backend."""
    run_state_machine_as_test(
        lambda: CoreMachine(new_db),  # type: ignore[arg-type]  # a factory is accepted
        settings=settings(max_examples=40, stateful_step_count=25, deadline=None),
    )
