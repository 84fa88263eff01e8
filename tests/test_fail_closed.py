"""Fail closed (invariant 3): when the audit log cannot be written, nothing happens.

A trigger added from outside the server (on SQLite or PostgreSQL) makes the
audit insert fail the way a full disk would; every call that would change state
must then fail UNAVAILABLE and leave the database as it was.
"""

from __future__ import annotations

import contextlib

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.commands import SIGNER, run
from testbed.env import Env
from testbed.process import running
from tests.harness import audit_events, rpc_error

PENDING = types_pb2.REQUEST_STATE_PENDING
APPROVED = types_pb2.REQUEST_STATE_APPROVED
SIGNED = types_pb2.REQUEST_STATE_SIGNED

serving = contextlib.contextmanager(running)


def _fail_audit(env: Env, when: str = "true") -> None:
    """From outside the server, make every audit insert matching `when` fail: 'disk full'."""
    db = env.store
    if db.backend == "sqlite":
        db.rows(
            f"CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log WHEN {when} "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        return
    db.rows(
        "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'disk full'; END $$"
    )
    db.rows(
        "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log FOR EACH ROW "
        f"WHEN ({when}) EXECUTE FUNCTION fail_audit()"
    )


def _restore_audit(env: Env) -> None:
    on_table = "" if env.store.backend == "sqlite" else " ON audit_log"
    env.store.rows(f"DROP TRIGGER fail_audit{on_table}")


def _counts(env: Env) -> tuple[int, ...]:
    return tuple(
        env.store.rows(f"SELECT count(*) FROM {t}")[0][0]  # noqa: S608
        for t in ("requests", "approvals", "signatures", "audit_log")
    )


def _verify(clients: Clients, r: types_pb2.SigningRequest) -> None:
    key = (
        clients.signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name=r.key_name), timeout=RPC_TIMEOUT)
        .key
    )
    pub = serialization.load_pem_public_key(key.public_key_pem.encode())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert len(r.signatures) == len(r.digests) > 0
    for d, sig in zip(r.digests, r.signatures, strict=True):
        pub.verify(sig, d.value, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_unwritable_audit_log_fails_every_change_closed(fresh_env: Env) -> None:
    """With audit writes failing, create/approve/cancel are UNAVAILABLE and change nothing."""
    with serving(fresh_env) as run:
        c = run.clients
        r = c.create()
        assert c.approve("alice", r).state == PENDING
        _fail_audit(fresh_env)
        before = _counts(fresh_env)

        err = rpc_error(lambda: c.create(digests=[sha256_digest(b"new")], idempotency_key="k1"))
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "STORE_UNAVAILABLE"
        assert "disk full" in err.message

        err = rpc_error(lambda: c.approve("bob", r))  # would reach the quorum
        assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason == "STORE_UNAVAILABLE"
        got = c.get(r.id)
        assert got.state == PENDING
        assert [a.approver for a in got.approvals] == ["alice"]
        assert not got.signatures

        err = rpc_error(
            lambda: c.signing().CancelSigningRequest(
                signing_pb2.CancelSigningRequestRequest(id=r.id, reason="stop"),
                timeout=RPC_TIMEOUT,
            )
        )
        assert err.code == grpc.StatusCode.UNAVAILABLE
        assert c.get(r.id).state == PENDING

        assert _counts(fresh_env) == before  # no request, approval, signature or entry written
        assert fresh_env.store.rows(
            "SELECT count(*) FROM requests WHERE idempotency_key = 'k1'"
        ) == [(0,)]

        _restore_audit(fresh_env)
        signed = c.approve("bob", r)
        assert signed.state == SIGNED
        assert sorted(a.approver for a in signed.approvals) == ["alice", "bob"]
        _verify(c, signed)
    events = [e["event"] for e in audit_events(fresh_env) if e["request_id"] == r.id]
    assert events == [
        "request.created",
        "request.approved",
        "request.approved",
        "request.quorum",
        "request.signed",
    ]


def test_no_signature_released_without_its_audit_entry(fresh_env: Env) -> None:
    """If only `request.signed` cannot be logged, no signature is stored or returned."""
    with serving(fresh_env) as run:
        c = run.clients
        r = c.create()
        c.approve("alice", r)
        _fail_audit(fresh_env, "NEW.event = 'request.signed'")
        # The approval and quorum commit and the call says so; the signature is held back.
        approved = c.approve("bob", r)
        assert approved.state == APPROVED and not approved.signatures
        got = c.get(r.id)
        assert got.state == APPROVED and not got.signatures
        assert sorted(a.approver for a in got.approvals) == ["alice", "bob"]
        # A retry of the approval is refused and does not sign either.
        err = rpc_error(lambda: c.approve("bob", r))
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION
        assert c.get(r.id).state == APPROVED
        assert fresh_env.store.rows("SELECT count(*) FROM signatures") == [(0,)]
        events = [e["event"] for e in audit_events(fresh_env) if e["request_id"] == r.id]
        assert "request.quorum" in events and "request.signed" not in events
        _restore_audit(fresh_env)

    # Recovery at start-up signs the APPROVED request now that the log can be written.
    with serving(fresh_env) as run:
        got = run.clients.get(r.id)
        assert got.state == SIGNED
        _verify(run.clients, got)
    signed = [
        e
        for e in audit_events(fresh_env)
        if e["request_id"] == r.id and e["event"] == "request.signed"
    ]
    assert len(signed) == 1 and signed[0]["details"]["approvers"] == ["alice", "bob"]


def test_server_start_fails_closed_when_audit_log_unwritable(fresh_env: Env) -> None:
    """The server refuses to start when it cannot record `server.started`."""
    _fail_audit(fresh_env)
    p = run([*SIGNER, "serve", "--config", str(fresh_env.config)], check=False, timeout=60)
    assert p.returncode != 0
    assert "disk full" in p.stderr and "could not be written" in p.stderr
    assert not any(e["event"] == "server.started" for e in audit_events(fresh_env))
