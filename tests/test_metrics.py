"""Prometheus metrics: off by default, exact values after known flows, no identifiers.

The server runs as a real process; its endpoint is scraped over HTTP on 127.0.0.1
and parsed with prometheus_client's own parser. The collector's behaviour when
the store cannot be read is checked in process with a store that fails.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from signer.errors import StoreError
from signer.server.metrics import Metrics
from signer.v1 import approval_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, sha256_digest
from testbed.commands import SIGNER, free_port, wait_until
from testbed.env import Env
from testbed.process import ServerProcess, running
from tests.harness import audit_events, rpc_error

serving = contextlib.contextmanager(running)


def _scrape(port: int) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, values


def _listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on, from /proc (no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _with_metrics(env: Env, address: str) -> None:
    cfg = env.read_config()
    cfg["server"]["metrics_listen"] = address
    env.write_config(cfg)


@pytest.fixture
def metered(fresh_env: Env) -> Iterator[tuple[Env, int]]:
    port = free_port()
    _with_metrics(fresh_env, f"127.0.0.1:{port}")
    yield fresh_env, port


def test_metrics_are_off_by_default(fresh_env: Env) -> None:
    """Without metrics_listen the server listens on its gRPC port and nothing else."""
    assert "metrics_listen" not in fresh_env.read_config()["server"]
    with serving(fresh_env) as r:
        assert r.server.proc is not None
        assert _listening_ports(r.server.proc.pid) == {fresh_env.port}


def test_metrics_report_exact_counts_after_known_flows(metered: tuple[Env, int]) -> None:
    """After a signed, a pending and a denied request and one refused call, every metric
    is exact, and no request id, key id or identity is shown."""
    env, port = metered
    with serving(env) as r:
        c = r.clients
        assert r.server.proc is not None
        assert _listening_ports(r.server.proc.pid) == {env.port, port}
        signed = c.create(digests=[sha256_digest(b"a"), sha256_digest(b"b"), sha256_digest(b"c")])
        c.approve("alice", signed)
        started = time.monotonic()  # the server times the token on this same clock
        assert c.approve("bob", signed).state == types_pb2.REQUEST_STATE_SIGNED
        signing_call = time.monotonic() - started
        pending = c.create()
        denied = c.create()
        c.deny("alice", denied)  # one denial ends a request
        refused = rpc_error(  # a requester has no officer's role
            lambda: c.approval("ci").ListRequests(
                approval_pb2.ListRequestsRequest(), timeout=RPC_TIMEOUT
            )
        )
        assert refused.reason == "ROLE_NOT_ALLOWED"

        text, m = _scrape(port)
        size = len(audit_events(env))

    assert m["signer_store_up", ()] == 1
    assert m["signer_requests", (("state", "SIGNED"),)] == 1
    assert m["signer_requests", (("state", "PENDING"),)] == 1
    assert m["signer_requests", (("state", "DENIED"),)] == 1
    assert m["signer_requests", (("state", "FAILED"),)] == 0
    assert m["signer_pending_requests", ()] == 1
    assert m["signer_audit_entries", ()] == size
    assert m["signer_signed_requests_total", ()] == 1
    assert m["signer_sign_failures_total", ()] == 0
    assert m["signer_sign_seconds_count", ()] == 1
    assert 0 < m["signer_sign_seconds_sum", ()] < signing_call  # seconds, the token's part
    assert m["signer_batch_digests_count", ()] == 1
    assert m["signer_batch_digests_sum", ()] == 3
    assert m["signer_batch_digests_bucket", (("le", "2.0"),)] == 0
    assert m["signer_batch_digests_bucket", (("le", "5.0"),)] == 1
    assert m["signer_token_errors_total", ()] == 0
    assert m["signer_token_resets_total", ()] == 0
    assert m["signer_rejected_calls_total", (("reason", "ROLE_NOT_ALLOWED"),)] == 1
    assert m["signer_alerts_total", (("kind", "denied"),)] == 1  # a denial is an alert
    # Counts and timings only: no request id, key id or identity on the endpoint.
    assert {k for _, labels in m for k, _ in labels} == {"state", "le", "reason", "kind"}
    for identifier in (signed.id, pending.id, denied.id, signed.key_id, "alice", "bob"):
        assert identifier not in text


def test_metrics_listen_flag_overrides_config(fresh_env: Env) -> None:
    """`signer serve --metrics-listen` turns the endpoint on without editing the config."""
    port = free_port()
    log = fresh_env.root / "flag.log"
    flag = ["--metrics-listen", f"127.0.0.1:{port}"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*SIGNER, "serve", "--config", str(fresh_env.config), *flag],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(ServerProcess(fresh_env).healthy, timeout=60)
        _, m = _scrape(port)
        assert m["signer_store_up", ()] == 1
        assert m["signer_audit_entries", ()] >= 1  # server.started at least
        # Printed once the server is up (after it reports healthy): wait for it.
        said = f"metrics on http://127.0.0.1:{port}/metrics"
        wait_until(lambda: said in log.read_text(), timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_metrics_port_in_use_is_refused_before_anything_is_recorded(
    metered: tuple[Env, int],
) -> None:
    """A taken metrics port is a config error (exit 2); no server.started entry."""
    env, port = metered
    before = len(audit_events(env))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        p = subprocess.run(
            [*SIGNER, "serve", "--config", str(env.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert p.returncode == 2, p.stderr
    assert f"server.metrics_listen: cannot listen on 127.0.0.1:{port}" in p.stderr
    assert len(audit_events(env)) == before  # no server.started


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("9464", "must be HOST:PORT"),
        ("127.0.0.1:http", "must be HOST:PORT"),
        ("127.0.0.1:70000", "must be HOST:PORT"),
        ("", "must be HOST:PORT"),
    ],
)
@pytest.mark.sqlite_only
def test_bad_metrics_listen_is_a_config_error(fresh_env: Env, address: str, message: str) -> None:
    """A metrics_listen that is not HOST:PORT is a config error (exit 2) naming it."""
    _with_metrics(fresh_env, address)
    p = subprocess.run(
        [*SIGNER, "serve", "--config", str(fresh_env.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "server.metrics_listen" in p.stderr and message in p.stderr


@pytest.mark.sqlite_only
def test_metrics_listen_on_the_grpc_port_is_refused(fresh_env: Env) -> None:
    """A metrics_listen on the gRPC address is a config error (exit 2)."""
    _with_metrics(fresh_env, f"127.0.0.1:{fresh_env.port}")
    p = subprocess.run(
        [*SIGNER, "serve", "--config", str(fresh_env.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "is already a gRPC address" in p.stderr


class _DownStore:
    def transaction(self) -> contextlib.AbstractContextManager[object]:
        raise StoreError("the database is unreachable")


class _Counts:
    errors = 3
    resets = 1


def test_scrape_with_the_store_down_reports_it_and_still_answers() -> None:
    """A store that cannot be read: store_up 0, no store gauges, token counters still there."""
    metrics = Metrics(_DownStore(), _Counts())  # type: ignore[arg-type]
    port = metrics.serve(f"127.0.0.1:{free_port()}")
    try:
        _, m = _scrape(port)
    finally:
        metrics.close()
    assert m["signer_store_up", ()] == 0
    assert not any(name == "signer_requests" for name, _ in m)
    assert m["signer_token_errors_total", ()] == 3
    assert m["signer_token_resets_total", ()] == 1
