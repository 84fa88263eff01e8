"""The store read back and checked independently of the core (invariants 2, 3, 4 and 9).

`StoreChecks` is mixed into the request state machine (tests/test_state_machine.py):
every SIGNED request has m valid, bound, distinct approvals re-verified with the
officers' keys and exactly one matching request.signed entry; every state change
and decision has its audit entry; the log is gap-free and canonical; states only
move forward. The Merkle tree is checked the same way (invariant 4): the latest
checkpoint covers every entry, opens with the pinned verifier and has the root
recomputed from the entries; every older checkpoint is unchanged and consistent
with it; no size has two; and every SIGNED request's audit proof verifies
against it.
"""

from __future__ import annotations

import hashlib

from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.audit.note import Checkpoint, open_note
from signer.audit.proofs import SignedProof, verify_signed_proof
from signer.dsse import Envelope
from signer.errors import EnvelopeError
from signer.model import Request, State
from signer.verify import verify_digest
from tests.fakes import AUDIT_ORIGIN, World

__all__ = ["StoreChecks"]

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


class StoreChecks:
    """Checks of what the store holds; keeps what earlier checks saw, to tell a rewrite
    from an append (checkpoints by size, the log's bytes, each request's last state and
    signatures)."""

    w: World
    checkpoints: dict[int, tuple[str, Checkpoint]]  # size -> (note, opened)
    audit_bytes: list[bytes]
    last_state: dict[str, State]
    signatures: dict[str, tuple[bytes, ...]]

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
