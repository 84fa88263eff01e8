"""Honest time: a wait ends at its deadline, an outage is said at once, progress is shown.

`signer sign --timeout T` returns within a few seconds of T however slowly the
server answers, and exits 3 (still undecided, distinct from a refusal); a
database outage the server reports reaches the caller after the server's own
wait, not after client retries; an unreachable server is retried for a bounded
time; and a waiting `signer sign` says each approval, the denial or the
signing as it happens.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from signer.client import workflow
from signer.client.profile import Profile, RemoteError
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import Clients
from testbed.commands import SIGNER, run
from testbed.env import Env
from tests.harness import sign_args, sign_in_background
from tests.hostile import CLIENT_SIDE, Abort, HostileServer, hostile, unchanged, waited_on

pytestmark = CLIENT_SIDE


def test_a_wait_ends_near_its_timeout_however_slowly_the_server_answers(
    shared_env: Env, tmp_path: Path
) -> None:
    """A server that holds every wait far past the time asked cannot stretch `--timeout 3s`
    by more than the client's few seconds of slack; the undecided wait exits 3."""
    released = threading.Event()

    def hold(proxy: HostileServer, method: str, request: bytes) -> Any:
        if method != "WaitSigningRequest":
            return None
        released.wait(60)  # far past any deadline the client asked for
        return signing_pb2.WaitSigningRequestResponse(request=waited_on(proxy, request))

    artifact = tmp_path / "slow.bin"
    artifact.write_bytes(b"slow")
    try:
        with hostile(shared_env, "ci3", unchanged, hold) as proxy:
            started = time.monotonic()
            p = run(
                [*SIGNER, *sign_args(proxy.profile("ci3"), artifact, "--timeout", "3s")],
                check=False,
            )
            took = time.monotonic() - started
            released.set()
    finally:
        released.set()
    assert p.returncode == 3, p.stderr
    assert "still PENDING" in p.stderr
    # 3 s asked, plus the client's slack and its start-up: far from the 13 s a call
    # deadline of "poll + 10" gave.
    assert took < 3 + workflow.SLACK + 6, took


def _store_down(proxy: HostileServer, method: str, request: bytes) -> Any:
    if method == "CreateSigningRequest":
        raise Abort(
            grpc.StatusCode.UNAVAILABLE,
            "the store is unavailable: connection refused",
            reason="STORE_UNAVAILABLE",
        )
    return None


def test_a_database_outage_the_server_reports_is_said_at_once(
    shared_env: Env, tmp_path: Path
) -> None:
    """STORE_UNAVAILABLE is the server's answer after its own wait: the client says it
    at once, without retrying it (4 retries of a 5 s wait made 40 s)."""
    artifact = tmp_path / "down.bin"
    artifact.write_bytes(b"down")
    with hostile(shared_env, "ci3", unchanged, _store_down) as proxy:
        p = run([*SIGNER, *sign_args(proxy.profile("ci3"), artifact, "--no-wait")], check=False)
        creates = proxy.calls["CreateSigningRequest"]
    assert p.returncode == 1
    assert "UNAVAILABLE [STORE_UNAVAILABLE]" in p.stderr and "connection refused" in p.stderr
    assert creates == 1


class _Unreachable:
    """A stub whose server cannot be reached: every create fails UNAVAILABLE, no reason."""

    def __init__(self) -> None:
        self.calls = 0

    def CreateSigningRequest(self, request: Any, timeout: float) -> Any:
        self.calls += 1
        raise _Failed()


class _Failed(grpc.RpcError):  # type: ignore[misc]  # grpc has no stubs
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "failed to connect to all addresses"

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_an_unreachable_server_is_retried_within_the_retry_budget(tmp_path: Path) -> None:
    """Retries of a server that cannot be reached stop before RETRY_BUDGET seconds have
    passed, counting the pauses; then the error is said."""
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    stub = _Unreachable()
    profile = Profile(tmp_path / "p.toml", "127.0.0.1:1", tmp_path / "ca.pem", None, None)
    request = signing_pb2.CreateSigningRequestRequest(key_name="release", idempotency_key="k")
    with pytest.raises(RemoteError) as e:
        workflow.create(profile, stub, request, sleep=sleep, clock=lambda: now[0])
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert stub.calls == len(pauses) + 1 >= 2
    assert sum(pauses) <= workflow.RETRY_BUDGET


def _lines_until(proc: subprocess.Popen[str], wanted: str) -> list[str]:
    """stderr lines of `proc` up to the first holding `wanted` (all of them if it ends)."""
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if wanted in line:
            break
    return seen


def test_a_waiting_sign_says_each_approval_and_the_signing(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """`signer sign --wait` says "1 of 2 approvals (alice)" when alice approves, then the
    signing, before it writes the signature."""
    artifact = tmp_path / "progress.bin"
    artifact.write_bytes(b"progress")
    proc, request_id = sign_in_background(shared_env, artifact)
    with proc:
        request = clients.get(request_id)
        clients.approve("alice", request)
        seen = _lines_until(proc, "1 of 2 approvals (alice)")
        assert "1 of 2 approvals (alice)" in seen[-1], seen
        clients.approve("bob", request)
        _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "signed after 2 of 2 approvals (alice, bob)" in rest
    assert artifact.with_name(artifact.name + ".sig").exists()


def test_a_waiting_sign_says_who_denied_and_why(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """A denial reaches the waiting pipeline with the officer's name and reason; exit 1."""
    artifact = tmp_path / "denied.bin"
    artifact.write_bytes(b"denied")
    proc, request_id = sign_in_background(shared_env, artifact)
    with proc:
        clients.deny("carol", clients.get(request_id), reason="not a release build")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "denied by carol: not a release build" in err
    assert not artifact.with_name(artifact.name + ".sig").exists()


def test_progress_lines_name_the_state_reached() -> None:
    """Each state a wait can see has its line; an untouched request has none."""
    r = types_pb2.SigningRequest(threshold=2, state=types_pb2.REQUEST_STATE_PENDING)
    assert workflow.progress_line(r) is None
    r.approvals.add(approver="alice", decision=types_pb2.DECISION_APPROVE)
    assert workflow.progress_line(r) == "1 of 2 approvals (alice)"
    r.state = types_pb2.REQUEST_STATE_EXPIRED
    r.status_message = "expired after 1h"
    assert workflow.progress_line(r) == "expired: expired after 1h"
    r.state = types_pb2.REQUEST_STATE_CANCELLED
    r.status_message = ""
    assert workflow.progress_line(r) == "cancelled"
    # A hostile server's long names and reasons are cut, every poll's line bounded.
    r.state = types_pb2.REQUEST_STATE_DENIED
    r.approvals.add(approver="x" * 100_000, decision=types_pb2.DECISION_DENY, reason="y" * 10**6)
    for i in range(1000):
        r.approvals.add(approver=f"o{i}", decision=types_pb2.DECISION_APPROVE)
    line = workflow.progress_line(r)
    assert line is not None and len(line) < 2000 and line.startswith("denied by xxx")
    r.state = types_pb2.REQUEST_STATE_PENDING
    pending = workflow.progress_line(r)
    assert pending is not None and len(pending) < 2000 and "and 991 more" in pending
