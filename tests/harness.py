"""Test-only helpers over the testbed: failing calls and commands, audit rows, kills mid-burst.

The shared machinery (dev environments, `signer serve` processes, mTLS
clients, the throwaway PostgreSQL server) is in `testbed/`, which benchmarks
use too; what is here only tests need.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from signer.client.profile import RemoteError, remote_error
from testbed.commands import SIGNER, wait_until
from testbed.env import Env
from testbed.process import ServerProcess

__all__ = [
    "DIGEST_ALGORITHMS",
    "audit_events",
    "kill_mid_burst",
    "ok",
    "refused",
    "rpc_error",
    "sign_args",
    "sign_in_background",
]

DIGEST_ALGORITHMS = ("ecdsa-p256", "ecdsa-p384", "rsa-pss-3072", "rsa-pss-4096", "rsa-pkcs1-3072")


def sign_args(profile: Path, artifact: Path, *extra: str) -> list[str]:
    """`signer sign` arguments: ARTIFACT, with the `release` key, as PROFILE's identity; EXTRA."""
    what = ["--profile", str(profile), "--key-name", "release", "--file", str(artifact)]
    return ["sign", *what, *extra]


def sign_in_background(
    env: Env, artifact: Path, *extra: str, who: str = "ci"
) -> tuple[subprocess.Popen[str], str]:
    """Start `signer sign --file ARTIFACT` waiting for the decision; return it and the id."""
    proc = subprocess.Popen(
        [*SIGNER, *sign_args(env.profile_path(who), artifact, "--timeout", "60s", *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def rpc_error(fn: Callable[[], Any]) -> RemoteError:
    """Call `fn`, which must fail; return the failure with its code and reason."""
    try:
        fn()
    except grpc.RpcError as e:
        return remote_error(e)
    raise AssertionError("the call succeeded but was expected to fail")


def ok(p: subprocess.CompletedProcess[str]) -> str:
    """The command exited 0; return what it printed."""
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def refused(p: subprocess.CompletedProcess[str], *phrases: str, code: int = 1) -> str:
    """The command exited `code` with one clear message holding every phrase, no traceback."""
    message = " ".join(p.stderr.split())
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    for phrase in phrases:
        assert phrase in message, message
    return message


def audit_events(env: Env) -> list[dict[str, Any]]:
    """Every audit entry, read straight from the database."""
    return [
        json.loads(bytes(e)) for (e,) in env.store.rows("SELECT entry FROM audit_log ORDER BY idx")
    ]


def kill_mid_burst(
    server: ServerProcess, bursts: Sequence[Sequence[Callable[[], object]]], each: int
) -> list[int]:
    """Run each list of calls in a thread of its own; kill -9 `server` mid-burst.

    The kill comes once every thread has had `each` calls return (so each kind of
    call is under way), and each thread's last call is sent only after the kill (so
    the burst cannot end before it): the kill provably lands inside the burst. A
    call that fails (raises grpc.RpcError) ends its thread. Returns, per thread,
    how many calls returned.
    """
    killed = threading.Event()
    done = [0] * len(bursts)

    def run(t: int) -> None:
        for i, call in enumerate(bursts[t]):
            if i == len(bursts[t]) - 1:
                killed.wait()
            try:
                call()
            except grpc.RpcError:
                return
            done[t] += 1

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(len(bursts))]
    for w in workers:
        w.start()
    try:
        wait_until(
            lambda: all(n >= each or not w.is_alive() for n, w in zip(done, workers, strict=True)),
            timeout=120,
            step=0.01,
        )
        at_kill = list(done)
    finally:
        server.kill()
        killed.set()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers), "a burst thread is still running"
    assert all(n >= each for n in at_kill), f"a burst thread stopped before the kill: {at_kill}"
    return done
