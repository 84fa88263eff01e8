"""The audit log as an auditor and a client see it over gRPC (docs/architecture.md §6, invariant 4).

Real servers (subprocesses), real mTLS, the auditor identity: entries and
checkpoints fetched with AuditService are checked offline with only the pinned
audit verifier (inclusion of every entry, consistency between checkpoints, the
checkpoint signature and origin); malformed ranges are refused; a SIGNED
request carries a proof that `signer sign` / `signer status --out` check and
write next to the signature, and refuse under another audit key; and after
kill -9 mid-burst every stored checkpoint still proves a prefix of the log.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit import merkle
from signer.audit.note import Checkpoint, Verifier, open_note
from signer.audit.proofs import SignedProof, verify_signed_proof
from signer.errors import VerificationError
from signer.v1 import approval_pb2, audit_pb2, signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.commands import SIGNER, run
from testbed.env import Env
from testbed.process import Running, running
from tests.harness import kill_mid_burst, rpc_error, sign_in_background
from tests.test_crash import assert_intact

ORIGIN = "localhost/signer-dev"
SIGNED = types_pb2.REQUEST_STATE_SIGNED

serving = contextlib.contextmanager(running)


# -- helpers ---------------------------------------------------------------------------


def _verifier(env: Env) -> Verifier:
    verifier = env.profile("auditor").audit_verifier
    assert verifier is not None
    return verifier


def _checkpoint(clients: Clients) -> tuple[Checkpoint, str]:
    """The latest checkpoint, opened with the auditor's pinned verifier, and its note."""
    resp = clients.audit().GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=RPC_TIMEOUT)
    cp = Checkpoint.parse(open_note(resp.checkpoint, [_verifier(clients.env)]))
    assert cp.size == resp.tree_size
    return cp, resp.checkpoint


def _entries(clients: Clients, size: int) -> list[bytes]:
    """Canonical bytes of entries [0, size), fetched page by page."""
    out: list[bytes] = []
    while len(out) < size:
        resp = clients.audit().GetEntries(
            audit_pb2.GetEntriesRequest(start=len(out), end=size), timeout=RPC_TIMEOUT
        )
        assert resp.events, f"no entries from {len(out)}"
        for e in resp.events:
            assert e.index == len(out)
            out.append(e.entry)
    assert len(out) == size
    return out


def _consistency(clients: Clients, first: int, second: int) -> list[bytes]:
    resp = clients.audit().GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(first=first, second=second), timeout=RPC_TIMEOUT
    )
    return list(resp.hashes)


def _inclusion(clients: Clients, index: int, size: int) -> list[bytes]:
    resp = clients.audit().GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(index=index, tree_size=size), timeout=RPC_TIMEOUT
    )
    return list(resp.hashes)


def _signed(clients: Clients) -> types_pb2.SigningRequest:
    """A request approved by alice and bob, as the requester fetches it."""
    r = clients.create()
    clients.approve("alice", r)
    clients.approve("bob", r)
    got = clients.get(r.id)
    assert got.state == SIGNED
    return got


def _flows(clients: Clients) -> None:
    """Some of everything: signed, denied, cancelled and still pending requests."""
    _signed(clients)
    clients.deny("carol", clients.create())
    cancelled = clients.create()
    clients.signing().CancelSigningRequest(
        signing_pb2.CancelSigningRequestRequest(id=cancelled.id, reason="not needed"),
        timeout=RPC_TIMEOUT,
    )
    clients.approve("alice", clients.create())


def _proof(r: types_pb2.SigningRequest) -> SignedProof:
    p = r.audit_proof
    return SignedProof(p.index, p.entry, p.tree_size, list(p.inclusion_proof), p.checkpoint)


def _signer(r: Running, *args: str, who: str = "ci") -> subprocess.CompletedProcess[str]:
    return run([*SIGNER, *args, "--profile", str(r.env.profile_path(who))], check=False)


# -- checkpoints and proofs -------------------------------------------------------------


def test_checkpoint_opens_with_pinned_verifier(shared: Running) -> None:
    """The latest checkpoint is signed by the pinned audit key, for origin localhost/signer-dev."""
    cp, note = _checkpoint(shared.clients)
    assert cp.origin == ORIGIN and cp.size > 0
    other = Verifier.for_key(ORIGIN, ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(VerificationError, match="no signature by a known key"):
        open_note(note, [other])


def test_audit_verifier_command_prints_pinned_string(shared: Running) -> None:
    """`signer audit verifier --config` prints the verifier every profile pins."""
    out = run([*SIGNER, "audit", "verifier", "--config", str(shared.env.config)]).stdout.strip()
    Verifier.parse(out)
    for who in ("ci", "alice", "auditor", "admin"):
        assert out == str(shared.env.profile(who).audit_verifier), who


def test_every_entry_is_included_in_the_checkpoint(shared: Running) -> None:
    """After some flows, each entry's inclusion proof leads to the checkpoint's root."""
    c = shared.clients
    _flows(c)
    cp, _ = _checkpoint(c)
    entries = _entries(c, cp.size)
    assert merkle.root_from_leaves(merkle.leaf_hash(e) for e in entries) == (cp.size, cp.root)
    for i, entry in enumerate(entries):
        proof = _inclusion(c, i, cp.size)
        merkle.verify_inclusion(merkle.leaf_hash(entry), i, cp.size, proof, cp.root)
    with pytest.raises(VerificationError):  # and the proof is for that entry only
        merkle.verify_inclusion(
            merkle.leaf_hash(entries[0] + b" "), 0, cp.size, _inclusion(c, 0, cp.size), cp.root
        )


def test_early_checkpoint_is_consistent_with_later(shared: Running) -> None:
    """A checkpoint saved before more flows is a prefix of the later one (and of itself)."""
    c = shared.clients
    early, _ = _checkpoint(c)
    _flows(c)
    late, _ = _checkpoint(c)
    assert late.size > early.size
    proof = _consistency(c, early.size, late.size)
    merkle.verify_consistency(early.size, late.size, early.root, late.root, proof)
    assert _consistency(c, late.size, late.size) == []
    merkle.verify_consistency(late.size, late.size, late.root, late.root, [])
    with pytest.raises(VerificationError):  # a forked early root does not fit
        merkle.verify_consistency(early.size, late.size, bytes(32), late.root, proof)


_BAD_RANGES: list[tuple[str, Callable[[int], Any]]] = [
    ("inclusion index == tree size", lambda n: ("GetInclusionProof", n, n)),
    ("inclusion index > tree size", lambda n: ("GetInclusionProof", n + 5, n)),
    ("inclusion negative index", lambda n: ("GetInclusionProof", -1, n)),
    ("inclusion tree size 0", lambda n: ("GetInclusionProof", 0, 0)),
    ("inclusion tree size > current", lambda n: ("GetInclusionProof", 0, n + 1000)),
    ("consistency first 0", lambda n: ("GetConsistencyProof", 0, n)),
    ("consistency first > second", lambda n: ("GetConsistencyProof", 2, 1)),
    ("consistency second > current", lambda n: ("GetConsistencyProof", 1, n + 1000)),
    ("entries start beyond size", lambda n: ("GetEntries", n + 1000, n + 1001)),
    ("entries negative start", lambda n: ("GetEntries", -1, 1)),
    ("entries end before start", lambda n: ("GetEntries", 2, 1)),
]
_REQUESTS: dict[str, Callable[[int, int], Any]] = {
    "GetInclusionProof": lambda a, b: audit_pb2.GetInclusionProofRequest(index=a, tree_size=b),
    "GetConsistencyProof": lambda a, b: audit_pb2.GetConsistencyProofRequest(first=a, second=b),
    "GetEntries": lambda a, b: audit_pb2.GetEntriesRequest(start=a, end=b),
}


@pytest.mark.parametrize("make", [m for _, m in _BAD_RANGES], ids=[n for n, _ in _BAD_RANGES])
def test_bad_ranges_are_invalid_argument(clients: Clients, make: Callable[[int], Any]) -> None:
    """Indexes and sizes outside the log are INVALID_ARGUMENT with reason BAD_RANGE."""
    cp, _ = _checkpoint(clients)
    method, a, b = make(cp.size)
    call = getattr(clients.audit(), method)
    err = rpc_error(lambda: call(_REQUESTS[method](a, b), timeout=RPC_TIMEOUT))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.reason == "BAD_RANGE", err


# -- the client's proof that a signature is on the record -------------------------------


def test_signed_request_carries_verifying_audit_proof(shared: Running) -> None:
    """GetSigningRequest of a SIGNED request proves its request.signed entry, and only it."""
    c = shared.clients
    pending = c.create()
    assert not c.get(pending.id).HasField("audit_proof")
    r = _signed(c)
    assert r.HasField("audit_proof")
    proof, verifier = _proof(r), _verifier(shared.env)
    cp = verify_signed_proof(proof, verifier, r.id, r.key_id, list(r.signatures))
    assert (cp.origin, cp.size) == (ORIGIN, proof.tree_size)
    latest, _ = _checkpoint(c)  # the proof's checkpoint is a prefix of today's log
    merkle.verify_consistency(
        cp.size, latest.size, cp.root, latest.root, _consistency(c, cp.size, latest.size)
    )
    for wrong in (
        (pending.id, r.key_id, list(r.signatures)),
        (r.id, "ab" * 32, list(r.signatures)),
        (r.id, r.key_id, [r.signatures[0] + b"\x00"]),
    ):
        with pytest.raises(VerificationError, match="differ"):
            verify_signed_proof(proof, verifier, *wrong)


def _check_written(env: Env, sig_path: Path, r: types_pb2.SigningRequest) -> None:
    """FILE.sig and FILE.sig.audit.json hold the signature and a proof that round-trips."""
    assert sig_path.read_bytes() == r.signatures[0]
    proof_path = sig_path.with_name(sig_path.name + ".audit.json")
    raw = json.loads(proof_path.read_text())
    proof = SignedProof.from_json(raw)
    assert proof.to_json() == raw
    verify_signed_proof(proof, _verifier(env), r.id, r.key_id, [sig_path.read_bytes()])


def test_sign_and_status_write_audit_proof_beside_signature(
    shared: Running, tmp_path: Path
) -> None:
    """`signer sign --wait` and `signer status --out` write FILE.sig.audit.json that verifies."""
    artifact = tmp_path / "app.tar"
    artifact.write_bytes(b"audited payload")
    proc, request_id = sign_in_background(shared.env, artifact)
    c = shared.clients
    pending = c.get(request_id)
    c.approve("alice", pending)
    c.approve("carol", pending)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    signed = c.get(request_id)
    _check_written(shared.env, tmp_path / "app.tar.sig", signed)

    out = tmp_path / "fetched.sig"
    status = _signer(shared, "status", request_id, "--out", str(out))
    assert status.returncode == 0, status.stderr
    _check_written(shared.env, out, signed)


def test_status_refuses_proof_under_another_audit_key(shared: Running, tmp_path: Path) -> None:
    """A profile pinning another audit key gets exit 1, "does not verify", and no files."""
    r = _signed(shared.clients)
    env = shared.env
    other = Verifier.for_key(ORIGIN, ed25519.Ed25519PrivateKey.generate().public_key())
    profile = tmp_path / "ci-other.toml"
    tls = env.root / "tls"
    profile.write_text(
        f'server = "127.0.0.1:{env.port}"\n'
        f'ca = "{tls / "ca.pem"}"\n'
        f'cert = "{tls / "ci.pem"}"\n'
        f'key = "{tls / "ci.key"}"\n'
        f'audit_verifier = "{other}"\n'
    )
    out = tmp_path / "refused.sig"
    p = run([*SIGNER, "status", r.id, "--out", str(out), "--profile", str(profile)], check=False)
    assert p.returncode == 1, p.stderr
    assert "does not verify" in p.stderr
    assert sorted(tmp_path.iterdir()) == [profile]


# -- crash -----------------------------------------------------------------------------


def test_kill9_mid_burst_leaves_every_checkpoint_consistent(fresh_env: Env) -> None:
    """kill -9 during approvals and creates: the tree is covered, gap-free and fork-free."""
    threads, per_thread = 3, 30
    with serving(fresh_env) as srv:
        c = srv.clients
        targets = [c.create() for _ in range(per_thread)]
        stubs = {who: c.approval(who) for who in ("alice", "bob")}
        signing = c.signing()
        # Envelopes are signed up front, so the burst is only RPCs.
        envelopes = {who: [c.envelope(who, r) for r in targets] for who in ("alice", "bob")}
        approve: list[list[Callable[[], object]]] = [
            [
                functools.partial(
                    stubs[who].Approve,
                    approval_pb2.ApproveRequest(id=r.id, envelope=envelopes[who][i]),
                    timeout=RPC_TIMEOUT,
                )
                for i, r in enumerate(targets)
            ]
            for who in ("alice", "bob")
        ]
        create: list[Callable[[], object]] = [
            functools.partial(
                signing.CreateSigningRequest,
                signing_pb2.CreateSigningRequestRequest(
                    key_name="release", digests=[sha256_digest(f"burst {i}".encode())]
                ),
                timeout=RPC_TIMEOUT,
            )
            for i in range(per_thread)
        ]
        done = kill_mid_burst(srv.server, [*approve, create], each=5)
    assert sum(done) > 0, "nothing finished before the kill"
    assert sum(done) < threads * per_thread, "the kill did not interrupt the burst"

    db = fresh_env.store

    def tree_size() -> int:
        indexes = [i for (i,) in db.rows("SELECT idx FROM audit_log ORDER BY idx")]
        assert indexes == list(range(len(indexes))), "gap in the audit log"
        return len(indexes)

    # A checkpoint is stored right after its commit (never before: its note must not
    # leave the server for a tree that may not commit); a kill between the two leaves
    # that commit's entries for the next checkpoint, which the restart below signs.
    assert_intact(db)
    [(stored,)] = db.rows("SELECT max(size) FROM checkpoints")
    assert 0 < stored <= tree_size()

    with serving(fresh_env) as srv:
        c = srv.clients
        latest, _ = _checkpoint(c)
        n = tree_size()
        assert latest.size == n
        entries = [bytes(e) for (e,) in db.rows("SELECT entry FROM audit_log ORDER BY idx")]
        assert merkle.root_from_leaves(merkle.leaf_hash(e) for e in entries) == (n, latest.root)
        assert db.rows("SELECT size FROM checkpoints GROUP BY size HAVING count(*) > 1") == []
        stored = db.rows("SELECT size, note FROM checkpoints ORDER BY size")
        assert len(stored) > 1
        verifier = _verifier(fresh_env)
        for size, note in stored:
            old = Checkpoint.parse(open_note(note, [verifier]))
            assert old.size == size
            proof = _consistency(c, size, latest.size)
            merkle.verify_consistency(size, latest.size, old.root, latest.root, proof)
