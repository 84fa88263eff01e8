"""Run a command that asks the shared server for a signature and waits for it (a drop-in
git or rpm runs, `signer keys openpgp`), approving its request once it is pending."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from signer.v1 import approval_pb2, types_pb2
from testbed.commands import wait_until
from testbed.process import Running

__all__ = ["approving", "dropin_env", "pending_ids"]

TIMEOUT = 120


def _pending(shared: Running) -> list[types_pb2.SigningRequest]:
    """Every pending request, across all pages (other tests leave theirs pending)."""
    found: list[types_pb2.SigningRequest] = []
    token = ""
    while True:
        page = shared.clients.approval("alice").ListRequests(
            approval_pb2.ListRequestsRequest(page_size=50, page_token=token), timeout=10
        )
        found += page.requests
        token = page.next_page_token
        if not token:
            return found


def dropin_env(shared: Running, home: Path, **extra: str) -> dict[str, str]:
    """The environment git (or rpm) runs a drop-in with: the CI profile, a 2-minute wait,
    a home of its own, no system git config, a committer and author."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "SIGNER_PROFILE": str(shared.env.profile_path("ci")),
        "SIGNER_TIMEOUT": "2m",
        "GIT_COMMITTER_NAME": "Release",
        "GIT_COMMITTER_EMAIL": "release@example.org",
        "GIT_AUTHOR_NAME": "Release",
        "GIT_AUTHOR_EMAIL": "release@example.org",
        **extra,
    }


def pending_ids(shared: Running) -> set[str]:
    return {r.id for r in _pending(shared)}


def approving(
    shared: Running,
    args: list[str],
    *,
    requests: int = 1,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `args`; approve (alice, bob) each of the `requests` new pending requests it makes
    as it makes them; return once it ended. Requests pending before it started are left."""
    before = pending_ids(shared)
    approved: set[str] = set()
    with subprocess.Popen(
        args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    ) as p:
        try:
            if stdin is not None:
                assert p.stdin is not None
                p.stdin.write(stdin)
                p.stdin.close()
            new: list[types_pb2.SigningRequest] = []

            def found() -> bool:
                new[:] = [r for r in _pending(shared) if r.id not in before | approved]
                return bool(new) or p.poll() is not None

            while len(approved) < requests:
                wait_until(found, TIMEOUT)
                if not new:
                    break  # it ended without asking
                for r in new:
                    shared.clients.approve("alice", r)
                    shared.clients.approve("bob", r)
                    approved.add(r.id)
            out, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
    return subprocess.CompletedProcess(args, p.returncode, out, err)
