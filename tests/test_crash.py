"""Crash safety (invariant 9): kill -9, restart, recovery of the crash window, idempotency.

Servers are real subprocesses killed with SIGKILL; the database (SQLite or
PostgreSQL) is inspected and, to reproduce the window between the approval
commit and the signing commit, edited directly while the server is down.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.model import Approval, Digest, State
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.env import Db, Env
from testbed.process import running
from tests.harness import audit_events, kill_mid_burst, rpc_error

PENDING = types_pb2.REQUEST_STATE_PENDING
APPROVED = types_pb2.REQUEST_STATE_APPROVED
SIGNED = types_pb2.REQUEST_STATE_SIGNED
FAILED = types_pb2.REQUEST_STATE_FAILED

serving = contextlib.contextmanager(running)


def assert_intact(db: Db) -> None:
    """The database's own structural check finds nothing wrong (PostgreSQL: amcheck)."""
    if db.backend == "sqlite":
        assert db.rows("PRAGMA integrity_check") == [("ok",)]
        return
    db.rows("CREATE EXTENSION IF NOT EXISTS amcheck")
    damaged = db.rows(
        "SELECT c.relname, v.* FROM pg_class c, verify_heapam(c.oid) v "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'"
    )
    assert damaged == []
    checked = db.rows(  # raises on a damaged index (or one missing a table row)
        "SELECT bt_index_check(c.oid, true) FROM pg_class c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'i'"
    )
    assert checked, "no index was checked"


def _refused(db: Db) -> type[Exception]:
    """What a statement the audit log's triggers refuse raises on this backend."""
    return sqlite3.IntegrityError if db.backend == "sqlite" else psycopg.errors.RaiseException


def _events(env: Env, request_id: str, event: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in audit_events(env)
        if e["request_id"] == request_id and (event is None or e["event"] == event)
    ]


def _verify(clients: Clients, r: types_pb2.SigningRequest) -> None:
    """Every signature of `r` verifies with the key the server publishes."""
    key = (
        clients.signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name=r.key_name), timeout=RPC_TIMEOUT)
        .key
    )
    assert key.key_id == r.key_id
    pub = serialization.load_pem_public_key(key.public_key_pem.encode())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert r.signatures and len(r.signatures) == len(r.digests)
    for d, sig in zip(r.digests, r.signatures, strict=True):
        pub.verify(sig, d.value, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def _approvers(r: types_pb2.SigningRequest) -> list[str]:
    return sorted(a.approver for a in r.approvals)


def test_kill9_keeps_pending_requests_and_partial_approvals(fresh_env: Env) -> None:
    """After kill -9 and restart, pending requests keep their approvals and can complete."""
    with serving(fresh_env) as run:
        c = run.clients
        r1, r2, r3 = c.create(), c.create(), c.create()
        assert c.approve("alice", r1).state == PENDING
        assert c.approve("carol", r2).state == PENDING
        run.server.kill()

    with serving(fresh_env) as run:
        c = run.clients
        for r, want in ((r1, ["alice"]), (r2, ["carol"]), (r3, [])):
            got = c.get(r.id)
            assert got.state == PENDING and _approvers(got) == want
            assert list(got.digests) == list(r.digests)
        # The approval given before the crash still counts: alice cannot add another.
        err = rpc_error(lambda: c.approve("alice", r1))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "ALREADY_DECIDED"

        s1 = c.approve("bob", r1)
        assert s1.state == SIGNED and _approvers(s1) == ["alice", "bob"]
        _verify(c, s1)
        s2 = c.approve("bob", r2)
        assert s2.state == SIGNED and _approvers(s2) == ["bob", "carol"]
        _verify(c, s2)
        assert c.approve("alice", r3).state == PENDING  # one of two, still waiting

    signed = _events(fresh_env, r1.id, "request.signed")
    assert len(signed) == 1 and signed[0]["details"]["approvers"] == ["alice", "bob"]
    assert [e["actor"] for e in _events(fresh_env, r1.id, "request.approved")] == ["alice", "bob"]


def test_recovery_signs_request_approved_but_not_signed(fresh_env: Env) -> None:
    """A request committed APPROVED but left unsigned by a crash is signed at start-up, once."""
    with serving(fresh_env) as run:
        r = run.clients.create()
        run.clients.approve("alice", r)
    # Reproduce exactly what the quorum approval commits before signing starts.
    envelope = Clients(fresh_env).envelope("bob", r)
    now = dt.datetime.now(dt.UTC)
    store = fresh_env.store.open()
    try:
        with store.transaction() as tx:
            tx.insert_approval(Approval(r.id, "bob", "approve", envelope, now))
            tx.append_audit(
                now,
                "request.approved",
                "bob",
                r.id,
                r.key_name,
                {"approver": "bob", "envelope": envelope.decode()},
            )
            tx.set_state(r.id, State.APPROVED, now)
            tx.append_audit(
                now,
                "request.quorum",
                "bob",
                r.id,
                r.key_name,
                {"approvers": ["alice", "bob"], "threshold": 2},
            )
    finally:
        store.close()
    assert fresh_env.store.rows("SELECT state FROM requests WHERE id = ?", r.id) == [("APPROVED",)]

    with serving(fresh_env) as run:  # recovery runs before the server reports healthy
        got = run.clients.get(r.id)
        assert got.state == SIGNED and _approvers(got) == ["alice", "bob"]
        _verify(run.clients, got)
    signed = _events(fresh_env, r.id, "request.signed")
    assert len(signed) == 1 and signed[0]["details"]["approvers"] == ["alice", "bob"]

    with serving(fresh_env) as run:  # a second start does not sign again
        assert run.clients.get(r.id).signatures == got.signatures
    assert len(_events(fresh_env, r.id, "request.signed")) == 1
    assert fresh_env.store.rows("SELECT count(*) FROM signatures WHERE request_id = ?", r.id) == [
        (1,)
    ]


def test_recovery_fails_tampered_approved_request_without_quorum(fresh_env: Env) -> None:
    """An APPROVED row without a valid quorum is never signed at recovery: it goes FAILED."""
    with serving(fresh_env) as run:
        c = run.clients
        only_one, forged, misbound = c.create(), c.create(), c.create()
        for r in (only_one, forged, misbound):
            c.approve("alice", r)
    c = Clients(fresh_env)
    bad_envelopes = {
        # bob's statement signed with carol's key
        forged.id: c.envelope("bob", forged, signer="carol"),
        # bob's genuine signature, but over other digests
        misbound.id: c.envelope(
            "bob", misbound, digests=(Digest("sha256", bytes(32), "artifact.bin"),)
        ),
    }
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    db = fresh_env.store
    for rid, envelope in bad_envelopes.items():
        db.rows("INSERT INTO approvals VALUES (?, 'bob', 'approve', ?, ?, '')", rid, envelope, now)
    for r in (only_one, forged, misbound):
        db.rows("UPDATE requests SET state = 'APPROVED' WHERE id = ?", r.id)

    with serving(fresh_env) as run:
        for r in (only_one, forged, misbound):
            got = run.clients.get(r.id)
            assert got.state == FAILED, r.id
            assert not got.signatures
            assert "quorum" in got.status_message
            assert len(_events(fresh_env, r.id, "request.failed")) == 1
            assert _events(fresh_env, r.id, "request.signed") == []
    assert fresh_env.store.rows("SELECT count(*) FROM signatures") == [(0,)]


def test_idempotent_create_survives_kill9(fresh_env: Env) -> None:
    """A retried create with the same idempotency key returns the same request, across kill -9."""
    digests = [sha256_digest(b"build 42", "app.tar")]
    with serving(fresh_env) as run:
        first = run.clients.create(digests=digests, idempotency_key="build-42")
        again = run.clients.create(digests=digests, idempotency_key="build-42")
        assert again.id == first.id and again.state == PENDING
        run.server.kill()

    with serving(fresh_env) as run:
        c = run.clients
        retried = c.create(digests=digests, idempotency_key="build-42")
        assert retried.id == first.id
        assert retried.create_time == first.create_time
        err = rpc_error(
            lambda: c.create(digests=[sha256_digest(b"other")], idempotency_key="build-42")
        )
        assert err.code == grpc.StatusCode.ALREADY_EXISTS
        assert err.reason == "IDEMPOTENCY_KEY_REUSED" and first.id in err.message
        other = c.create(digests=digests, idempotency_key="build-43")
        assert other.id != first.id

    assert len(_events(fresh_env, first.id, "request.created")) == 1
    rows = fresh_env.store.rows("SELECT id FROM requests WHERE idempotency_key = 'build-42'")
    assert rows == [(first.id,)]


def test_kill9_during_create_burst_leaves_request_and_audit_consistent(fresh_env: Env) -> None:
    """kill -9 mid-burst: every OK create survives, retries dedupe, audit and requests match 1:1."""
    threads, per_thread = 4, 50
    attempted: dict[str, types_pb2.Digest] = {}
    ok: dict[str, str] = {}
    failed: list[str] = []
    lock = threading.Lock()

    with serving(fresh_env) as run:
        stub = run.clients.signing()

        def create(key: str) -> Callable[[], None]:
            def call() -> None:
                digest = sha256_digest(key.encode())
                with lock:
                    attempted[key] = digest
                req = signing_pb2.CreateSigningRequestRequest(
                    key_name="release", digests=[digest], idempotency_key=key
                )
                try:
                    resp = stub.CreateSigningRequest(req, timeout=RPC_TIMEOUT)
                except grpc.RpcError:
                    with lock:
                        failed.append(key)
                    raise
                with lock:
                    ok[key] = resp.request.id

            return call

        bursts = [[create(f"burst-{t}-{i}") for i in range(per_thread)] for t in range(threads)]
        kill_mid_burst(run.server, bursts, each=3)

    assert ok, "no create finished before the kill"
    assert failed, "the kill did not interrupt the burst"
    assert_intact(fresh_env.store)

    with serving(fresh_env) as run:
        c = run.clients
        for key, rid in ok.items():
            got = c.get(rid)
            assert got.state == PENDING and list(got.digests) == [attempted[key]]
        # A client retries what failed, with the same key: never a second request.
        for key in failed:
            assert c.create(digests=[attempted[key]], idempotency_key=key).state == PENDING
        for key, rid in ok.items():
            assert c.create(digests=[attempted[key]], idempotency_key=key).id == rid

    rows = fresh_env.store.rows("SELECT id, idempotency_key FROM requests")
    assert sorted(k for _, k in rows) == sorted(attempted)
    assert all(ok[k] == rid for rid, k in rows if k in ok)
    created = collections.Counter(
        e["request_id"] for e in audit_events(fresh_env) if e["event"] == "request.created"
    )
    assert set(created) == {rid for rid, _ in rows}  # no request without entry, nor vice versa
    assert set(created.values()) == {1}


def test_audit_log_rejects_update_and_delete(fresh_env: Env) -> None:
    """UPDATE, DELETE (and on PostgreSQL TRUNCATE) on audit_log are aborted by its triggers."""
    db = fresh_env.store
    before = audit_events(fresh_env)
    assert before  # `signer init` logged the key generations
    statements: list[tuple[str, tuple[Any, ...]]] = [
        ("UPDATE audit_log SET event = 'forged' WHERE idx = 0", ()),
        ("UPDATE audit_log SET entry = ?", (b"\x00",)),
        ("DELETE FROM audit_log WHERE idx = 0", ()),
        ("DELETE FROM audit_log", ()),
    ]
    if db.backend == "postgresql":
        statements.append(("TRUNCATE audit_log", ()))
    for sql, args in statements:
        with pytest.raises(_refused(db), match="append-only"):
            db.rows(sql, *args)
    assert audit_events(fresh_env) == before


def test_audit_log_rejects_insert_or_replace(fresh_env: Env) -> None:
    """An upsert (SQLite: INSERT OR REPLACE) cannot overwrite an existing audit entry."""
    db = fresh_env.store
    (row,) = db.rows("SELECT * FROM audit_log WHERE idx = 0")
    forged = json.dumps({"forged": True}).encode()
    upsert = (
        "INSERT OR REPLACE INTO audit_log VALUES (?,?,?,?,?,?,?)"
        if db.backend == "sqlite"
        else "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?) "
        "ON CONFLICT (idx) DO UPDATE SET entry = EXCLUDED.entry"
    )
    with pytest.raises(_refused(db)):
        db.rows(upsert, 0, forged, *row[2:])
    assert db.rows("SELECT entry FROM audit_log WHERE idx = 0") == [(row[1],)]
    [(last,)] = db.rows("SELECT max(idx) FROM audit_log")
    with pytest.raises(_refused(db), match="append-only"):
        db.rows("INSERT INTO audit_log VALUES (?,?,?,?,?,?,?)", last + 2, forged, *row[2:])
    assert db.rows("SELECT max(idx) FROM audit_log") == [(last,)]
