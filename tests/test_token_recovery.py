"""A token that goes away and comes back is served again without a restart
(docs/architecture.md §8).

A real server on a real SoftHSM token: its token directory is moved away (what a
network HSM restarting looks like to the process: the token and every handle
gone) and later put back. While it is away the gRPC health status is
NOT_SERVING and every call that needs the token fails UNAVAILABLE, recording
nothing; once it is back the server (the same process) finds the token again by
label, logs in, reports SERVING and signs. SoftHSM 2.6 reads its token
directory only in C_Initialize, so this also checks that the adapter
initialises the module again.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signer.v1 import types_pb2
from testbed.commands import wait_until
from testbed.env import Env
from testbed.process import running
from tests.harness import rpc_error

serving = contextlib.contextmanager(running)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _health(env: Env) -> int:
    """The server's overall health status (-1 if it does not answer)."""
    with env.profile("admin").channel() as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return -1
        return int(resp.status)


def _token_dir(env: Env) -> Path:
    [token] = [p for p in (env.root / "tokens").iterdir() if p.is_dir()]
    return token


def _counts(env: Env) -> tuple[int, ...]:
    return tuple(
        int(env.store.rows(f"SELECT count(*) FROM {t}")[0][0])  # noqa: S608
        for t in ("requests", "approvals", "signatures", "audit_log", "checkpoints")
    )


@pytest.mark.sqlite_only  # the token is what goes away; the store only has to stay unchanged
def test_a_token_that_goes_away_and_comes_back_is_served_again_without_a_restart(
    fresh_env: Env,
) -> None:
    """Away: NOT_SERVING, creates and approvals UNAVAILABLE, nothing recorded. Back: the
    same process serves again and the pending request is signed."""
    env = fresh_env
    with serving(env) as r:
        c = r.clients
        assert r.server.proc is not None
        pid = r.server.proc.pid
        pending = c.create()
        c.approve("alice", pending)
        token, away = _token_dir(env), env.root / "token-away"
        os.rename(token, away)
        try:
            wait_until(lambda: _health(env) == NOT_SERVING, timeout=30)
            before = _counts(env)
            for call in (lambda: c.create(), lambda: c.approve("bob", pending)):
                err = rpc_error(call)
                assert err.code == grpc.StatusCode.UNAVAILABLE, err
                assert err.reason == "TOKEN_NOT_FOUND" and "not reachable" in err.message, err
            assert c.get(pending.id).state == types_pb2.REQUEST_STATE_PENDING  # reads served
            assert _counts(env) == before
        finally:
            os.rename(away, token)
        wait_until(lambda: _health(env) == SERVING, timeout=30)
        assert r.server.proc.pid == pid  # no restart
        assert c.approve("bob", pending).state == types_pb2.REQUEST_STATE_SIGNED
        assert c.get(pending.id).HasField("audit_proof")
        c.create()
        log = r.server.output()
    assert "token unreachable: not serving" in log
    assert "token reachable again: serving" in log
