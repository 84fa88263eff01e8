"""Several replicas on one PostgreSQL database (docs/architecture.md §7).

Three `signer serve` processes on three ports share one database and one token.
Approvals of one request arriving on different replicas at the same moment give
exactly one signature; the audit log stays one linear Merkle log; a client waiting
on one replica hears of a decision made on another; a replica killed with
SIGKILL mid-approval or mid-signing loses nothing, and another one finishes its
work; PostgreSQL stopped and restarted makes calls fail UNAVAILABLE meanwhile,
and the service recovers by itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from signer.store.postgres import PostgresStore
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.commands import SIGNER, run, wait_until
from testbed.env import Db, Env, checkpoints_match_the_log, make_env
from testbed.pg import PgServer, find_bin_dir
from testbed.process import ServerProcess
from tests.harness import audit_events, rpc_error

SIGNED = types_pb2.REQUEST_STATE_SIGNED
PENDING = types_pb2.REQUEST_STATE_PENDING


@dataclass
class Replicas:
    env: Env
    envs: list[Env]
    servers: list[ServerProcess]
    clients: list[Clients]

    def signed_entries(self, request_id: str) -> list[dict[str, object]]:
        return [
            e
            for e in audit_events(self.env)
            if e["request_id"] == request_id and e["event"] == "request.signed"
        ]

    def verify_log(self, tmp: Path, via: int = 0) -> str:
        """Fetch the whole log through one replica and verify it offline (exit 0)."""
        out = tmp / f"audit-{time.monotonic_ns()}"
        profile = str(self.envs[via].profile_path("auditor"))
        run([*SIGNER, "audit", "fetch", "--profile", profile, "--out", str(out)], timeout=60)
        verifier = self.env.profile("ci").audit_verifier
        assert verifier is not None
        args = ["audit", "verify", str(out), "--verifier", str(verifier)]
        p = run([*SIGNER, *args], timeout=60)
        return p.stdout


@contextlib.contextmanager
def replicas(env: Env, count: int = 3) -> Iterator[Replicas]:
    envs = [env] + [env.replica(i) for i in range(1, count)]
    servers: list[ServerProcess] = []
    clients = [Clients(e) for e in envs]
    try:
        for e in envs:
            servers.append(ServerProcess(e).start())
        yield Replicas(env, envs, servers, clients)
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def pg_env(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("replicas")
    return make_env(root / "env", Db(pg.database("replicas"), pg.password_file))


@pytest.fixture(scope="module")
def three(pg_env: Env) -> Iterator[Replicas]:
    with replicas(pg_env) as r:
        yield r


# -- concurrency across replicas --------------------------------------------------------------


def test_simultaneous_approvals_on_different_replicas_sign_exactly_once(
    three: Replicas, tmp_path: Path
) -> None:
    """alice, bob and carol approve each request at once, each on another replica."""
    requests = [three.clients[0].create() for _ in range(12)]
    officers = ("alice", "bob", "carol")

    def approve(
        officer: str, replica: int, r: types_pb2.SigningRequest, barrier: threading.Barrier
    ) -> str:
        barrier.wait(timeout=60)
        try:
            return types_pb2.RequestState.Name(three.clients[replica].approve(officer, r).state)
        except grpc.RpcError as e:
            return e.code().name

    for r in requests:
        barrier = threading.Barrier(3)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(approve, officers[i], i, r, barrier) for i in range(3)]
            outcomes = sorted(f.result() for f in futures)
        # Two approvals make the quorum; the third arrives once the request is APPROVED and
        # is refused. (A success reports the state as it is when the reply is sent.)
        assert outcomes[0] == "FAILED_PRECONDITION", outcomes
        assert set(outcomes[1:]) <= {
            "REQUEST_STATE_" + s for s in ("PENDING", "APPROVED", "SIGNED")
        }
    for r in requests:
        final = three.clients[1].get(r.id)
        assert final.state == SIGNED, final
        assert len(final.signatures) == 1
        assert len(three.signed_entries(r.id)) == 1
        rows = three.env.store.rows("SELECT count(*) FROM signatures WHERE request_id = ?", r.id)
        assert rows == [(1,)]
    assert "OK" in three.verify_log(tmp_path, via=2)
    assert checkpoints_match_the_log(three.env) > 0


def test_audit_log_stays_one_linear_log_under_concurrent_writes(
    three: Replicas, tmp_path: Path
) -> None:
    """Requests made on all replicas at once: indexes 0..n-1, one checkpoint per size."""
    with ThreadPoolExecutor(6) as pool:
        made = list(pool.map(lambda i: three.clients[i % 3].create(), range(30)))
    assert len({r.id for r in made}) == 30
    indexes = [i for (i,) in three.env.store.rows("SELECT idx FROM audit_log ORDER BY idx")]
    assert indexes == list(range(len(indexes)))
    sizes = three.env.store.rows("SELECT size, count(*) FROM checkpoints GROUP BY size")
    assert all(n == 1 for _, n in sizes)
    checkpoints_match_the_log(three.env)
    assert "OK" in three.verify_log(tmp_path, via=1)


def test_waiter_on_one_replica_hears_a_decision_made_on_another(three: Replicas) -> None:
    """A wait parked on replica 0 returns SIGNED, long before its end, when others decide."""
    r = three.clients[0].create()
    result: list[types_pb2.SigningRequest] = []

    def wait() -> None:
        # The server's whole max_wait (60 s), well past how long the test waits below:
        # an answer given at the end of the wait, unheard, cannot pass for one heard.
        req = signing_pb2.WaitSigningRequestRequest(id=r.id)
        result.append(three.clients[0].signing().WaitSigningRequest(req, timeout=120).request)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    wait_until(lambda: three.servers[0].logged("waiting for a decision", request_id=r.id))
    three.clients[1].approve("alice", r)
    three.clients[2].approve("bob", r)
    waiter.join(timeout=30)
    assert result and result[0].state == SIGNED


def test_store_listener_hears_commits_of_another_connection(pg: PgServer) -> None:
    """The notification channel itself: a commit elsewhere reaches `subscribe` callbacks."""
    url, password = pg.database("notify"), pg.password
    heard: list[str] = []
    a = PostgresStore(url, password)
    try:
        a.subscribe(heard.append)
        with psycopg.connect(url, password=password, autocommit=True) as probe:

            def probe_heard(tag: str) -> bool:
                probe.execute("SELECT pg_notify('signer_requests', %s)", (tag,))
                return tag in heard

            wait_until(lambda: probe_heard("probe-listening"))  # LISTEN is in place
            with psycopg.connect(url, password=password) as conn, conn.transaction():
                conn.execute(  # a bare row: enough to fire the trigger
                    b"INSERT INTO requests (id, key_name, key_id, algorithm, requester, digests, "
                    b"context, state, created, expires, updated, params_hash) "
                    b"VALUES ('r-1', 'k', 'id', 'alg', 'ci', '[]', '{}', 'PENDING', '', '', '', '')"
                )
                # Notifications arrive in commit order: one committed after the insert has
                # arrived, the insert's has not (not before the commit).
                wait_until(lambda: probe_heard("probe-uncommitted"))
                assert "r-1" not in heard
        wait_until(lambda: "r-1" in heard, timeout=30)
        assert [h for h in heard if not h.startswith("probe-")] == ["r-1"]
    finally:
        a.close()


# -- faults -------------------------------------------------------------------------------------


def test_replica_killed_mid_approval_and_mid_signing_loses_nothing(
    pg: PgServer, tmp_path: Path
) -> None:
    """SIGKILL replica 0 while bob's approvals (and the signing they start) run on it.

    The test holds a lock that keeps any signature from being committed, kills
    replica 0 once a signing is waiting on it, then lets go: whatever each call
    saw, nothing acknowledged is lost: bob retries the calls that failed on
    replica 2, the others sign what was left APPROVED, every request ends SIGNED
    exactly once, with alice's and bob's approvals, and the log verifies.
    """
    env = make_env(tmp_path / "env", Db(pg.database("kill"), pg.password_file))
    with replicas(env) as three:
        requests = [
            three.clients[1].create(
                digests=[sha256_digest(os.urandom(16), f"f{i}") for i in range(1000)]
            )
            for _ in range(16)
        ]
        for r in requests:
            three.clients[1].approve("alice", r)
        acked: dict[str, bool] = {}

        def bob(r: types_pb2.SigningRequest) -> None:
            try:
                three.clients[0].approve("bob", r)
                acked[r.id] = True
            except grpc.RpcError:
                acked[r.id] = False

        with (
            psycopg.connect(env.store.url, password=pg.password) as gate,
            gate.transaction(),
        ):
            # Approvals commit; the first signing to reach its commit waits on this lock
            # (and every transaction behind it waits too): the kill lands mid-signing.
            gate.execute("LOCK TABLE signatures IN SHARE MODE")

            def signing_waits() -> bool:
                row = gate.execute(
                    "SELECT count(*) FROM pg_locks "
                    "WHERE relation = 'signatures'::regclass AND NOT granted"
                ).fetchone()
                return bool(row and row[0])

            with ThreadPoolExecutor(16) as pool:
                futures = [pool.submit(bob, r) for r in requests]
                wait_until(signing_waits, timeout=60)
                three.servers[0].kill()
                for f in futures:
                    f.result(timeout=RPC_TIMEOUT)
            # Read while no replica can commit: some requests are left APPROVED (quorum
            # recorded, signature not yet) for the other replicas to finish.
            left: dict[str, str] = dict(gate.execute("SELECT id, state FROM requests").fetchall())
        # The kill hit the window: some calls never returned.
        assert not all(acked.values()), "every approval returned: the kill came too late"
        assert "APPROVED" in [left[r.id] for r in requests], left
        for r in requests:
            if not acked[r.id]:
                # Retried on another replica: recorded once, whether or not the first landed.
                try:
                    three.clients[2].approve("bob", r)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        # What replica 0 left APPROVED but unsigned is signed by a live replica's sweeper.
        wait_until(
            lambda: all(three.clients[2].get(r.id).state == SIGNED for r in requests), timeout=120
        )
        for r in requests:
            decided = [
                e["actor"]
                for e in audit_events(env)
                if e["request_id"] == r.id and e["event"] == "request.approved"
            ]
            assert sorted(decided) == ["alice", "bob"], (r.id, decided)
            assert len(three.signed_entries(r.id)) == 1
        three.servers[0].start()  # the killed replica comes back and signs nothing again
        assert all(len(three.signed_entries(r.id)) == 1 for r in requests)
        assert "OK" in three.verify_log(tmp_path, via=0)


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of its own, to stop and start without touching other tests."""
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    server = PgServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


def test_postgresql_restart_fails_calls_unavailable_then_recovers(
    own_pg: PgServer, tmp_path: Path
) -> None:
    """While PostgreSQL is down, calls on both replicas are UNAVAILABLE and write
    nothing; once it is back, the approval signs and the log verifies."""
    env = make_env(tmp_path / "env", Db(own_pg.database("restart"), own_pg.password_file))
    with replicas(env, count=2) as two:
        r = two.clients[0].create()
        two.clients[1].approve("alice", r)
        before = len(audit_events(env))
        own_pg.pg_ctl("stop")
        try:
            for call in (
                lambda: two.clients[0].approve("bob", r),
                lambda: two.clients[1].create(),
                lambda: two.clients[0].get(r.id),
            ):
                err = rpc_error(call)
                assert err.code == grpc.StatusCode.UNAVAILABLE, err
        finally:
            own_pg.pg_ctl("start")
        own_pg.wait_ready()
        # Nothing was half-written while the database was down.
        assert len(audit_events(env)) == before
        assert two.clients[0].get(r.id).state == PENDING

        def bob_approves() -> bool:
            try:
                return two.clients[0].approve("bob", r).state == SIGNED
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                return False

        wait_until(bob_approves, timeout=60, step=0.5)
        assert all(s.proc is not None and s.proc.poll() is None for s in two.servers)
        assert "OK" in two.verify_log(tmp_path, via=1)
