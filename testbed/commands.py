"""Running things on this machine: the product's commands, free ports, waiting.

`run` bounds every command's time and shows its output when it fails
unexpectedly; `wait_until` polls for something observable rather than
sleeping a guessed time. Ports are taken on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

__all__ = ["APPROVER", "SIGNER", "free_port", "run", "wait_until"]

SIGNER = [sys.executable, "-m", "signer"]
APPROVER = [sys.executable, "-m", "approver.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    args: list[str],
    *,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a bounded time; on unexpected failure show its output."""
    p = subprocess.run(
        args,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"{args} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


def wait_until(predicate: Callable[[], bool], timeout: float = 15, step: float = 0.1) -> None:
    """Poll `predicate` until it holds; fail once `timeout` seconds pass without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")
