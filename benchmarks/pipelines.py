"""Simulated pipelines against one or more replicas, and the check that nothing was lost.

Each pipeline loops: create a request with an idempotency key on one replica
(retried with the same key on UNAVAILABLE), alice approves on the next replica,
bob on the one after, and the pipeline waits for the signature on the replica
it created the request on (`drive`). `check` then fails the run rather than let
a wrong answer be reported: every flow got exactly one request id, SIGNED with
a signature that verifies; the database holds exactly those requests; the audit
log's indexes are 0..n-1 with one `request.created` and one `request.signed`
entry per request, every checkpoint commits to a prefix of that one log, and
`signer audit fetch` + `signer audit verify` accept it through a replica.
Used by `python -m benchmarks.load`, `python -m benchmarks` and tests/test_load.py.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from signer.v1 import signing_pb2, types_pb2
from signer.verify import verify_digest
from testbed.clients import Clients, sha256_digest
from testbed.commands import SIGNER, run
from testbed.env import Env, checkpoints_match_the_log
from testbed.process import ServerProcess

__all__ = [
    "RETRIES",
    "SIGNED",
    "Flow",
    "LoadError",
    "Setup",
    "add_pipelines",
    "check",
    "drive",
    "pipeline_name",
    "serving",
]

SIGNED = types_pb2.REQUEST_STATE_SIGNED
RETRIES = 5  # creates / approvals retried on UNAVAILABLE, with the same idempotency key
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_RPC_TIMEOUT = 60.0


class LoadError(AssertionError):
    """The run lost, duplicated or mis-recorded something."""


@dataclass
class Flow:
    """One pipeline's request, as the pipeline saw it."""

    idempotency_key: str
    ids: set[str] = field(default_factory=set)  # every id a create (or retry) returned
    state: int = 0
    signature: bytes = b""
    digest: bytes = b""
    started: float = 0.0  # create sent
    last_approval: float = 0.0  # bob's approval sent
    done: float = 0.0  # signature in hand
    retries: int = 0
    error: str = ""


@dataclass
class Setup:
    """One environment and the replicas serving it."""

    name: str
    env: Env
    envs: list[Env]
    clients: list[Clients]


def _retrying(flow: Flow, call: Any) -> Any:
    for attempt in range(RETRIES + 1):
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() not in _RETRYABLE or attempt == RETRIES:
                raise
            flow.retries += 1
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def _one_flow(setup: Setup, pipeline: str, first: int) -> Flow:
    """`pipeline` creates on replica `first`; approvals on the next two; waits on `first`."""
    n = len(setup.clients)
    home, a, b = (setup.clients[(first + k) % n] for k in range(3))
    flow = Flow(idempotency_key=str(uuid.uuid4()))
    digest = sha256_digest(os.urandom(32), "release.tar.gz")
    flow.digest = digest.value
    flow.started = time.monotonic()

    def create() -> types_pb2.SigningRequest:
        return home.create(
            digests=[digest],
            idempotency_key=flow.idempotency_key,
            context={"load": "1"},
            who=pipeline,
        )

    try:
        req = _retrying(flow, create)
        flow.ids.add(req.id)
        _retrying(flow, lambda: a.approve("alice", req))
        flow.last_approval = time.monotonic()
        _retrying(flow, lambda: b.approve("bob", req))
        while True:
            resp = _retrying(
                flow,
                lambda: home.signing(pipeline).WaitSigningRequest(
                    signing_pb2.WaitSigningRequestRequest(id=req.id), timeout=_RPC_TIMEOUT
                ),
            )
            if resp.done:
                break
        flow.done = time.monotonic()
        flow.state = resp.request.state
        flow.signature = bytes(resp.request.signatures[0]) if resp.request.signatures else b""
        # A retried create must give back the same request.
        flow.ids.add(_retrying(flow, create).id)
    except grpc.RpcError as e:
        flow.error = f"{e.code().name}: {e.details()}"
    return flow


def drive(setup: Setup, pipelines: int, duration: float) -> tuple[list[Flow], float]:
    """`pipelines` threads run flows until `duration` is up; in-flight flows finish.

    Each pipeline runs one flow at least, however late its thread starts.
    """
    flows: list[Flow] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + duration

    def pipeline(number: int) -> None:
        i = number
        while True:
            f = _one_flow(setup, pipeline_name(number), i % len(setup.clients))
            with lock:
                flows.append(f)
            i += 1
            if time.monotonic() >= deadline:
                return

    threads = [threading.Thread(target=pipeline, args=(k,)) for k in range(pipelines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return flows, time.monotonic() - start


# -- checking the run --------------------------------------------------------------------


def check(
    setup: Setup, flows: list[Flow], tmp: Path, others: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Raise LoadError unless nothing was lost, duplicated or mis-logged.

    `others` are the ids of SIGNED requests made outside the flows, before them.
    """
    env = setup.env
    errors = [f.error for f in flows if f.error]
    if errors:
        raise LoadError(f"{len(errors)} flows failed, e.g. {errors[0]}")
    dup = [f for f in flows if len(f.ids) != 1]
    if dup:
        raise LoadError(f"{len(dup)} idempotency keys gave several requests: {dup[0].ids}")
    unsigned = [f for f in flows if f.state != SIGNED or not f.signature]
    if unsigned:
        raise LoadError(f"{len(unsigned)} flows ended without a signature")

    info = (
        setup.clients[0]
        .signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name="release"), timeout=_RPC_TIMEOUT)
    )
    public_key = serialization.load_pem_public_key(info.key.public_key_pem.encode())
    for f in flows:
        verify_digest(public_key, "sha256", f.digest, f.signature)  # raises if invalid

    ids = {next(iter(f.ids)) for f in flows}
    if len(ids) != len(flows):
        raise LoadError("two flows got the same request id")
    stored = dict(env.store.rows("SELECT id, state FROM requests"))
    if ids - set(stored):
        raise LoadError(f"lost: {len(ids - set(stored))} requests pipelines made are not stored")
    if set(stored) - ids - others:
        stray = len(set(stored) - ids - others)
        raise LoadError(f"the database holds {stray} requests no pipeline made")
    not_signed = [i for i, s in stored.items() if s != "SIGNED"]
    if not_signed:
        raise LoadError(f"{len(not_signed)} stored requests are not SIGNED")

    log = env.store.rows("SELECT idx, event, request_id FROM audit_log ORDER BY idx")
    if [row[0] for row in log] != list(range(len(log))):
        raise LoadError("the audit log's indexes are not 0..n-1")
    for event in ("request.created", "request.signed"):
        counts = Counter(rid for _, e, rid in log if e == event)
        wrong = [i for i in ids if counts[i] != 1]
        if wrong or set(counts) - ids - others:
            raise LoadError(f"{len(wrong)} requests do not have exactly one {event} entry")
    checkpoints = checkpoints_match_the_log(env)

    out = tmp / f"audit-{setup.name}-{uuid.uuid4().hex[:8]}"
    auditor = str(setup.envs[-1].profile_path("auditor"))
    run([*SIGNER, "audit", "fetch", "--profile", auditor, "--out", str(out)], timeout=300)
    verifier = env.profile("ci").audit_verifier
    assert verifier is not None
    verified = run([*SIGNER, "audit", "verify", str(out), "--verifier", str(verifier)], timeout=300)
    if "OK" not in verified.stdout:
        raise LoadError(f"audit verify: {verified.stdout}")
    return {"audit_entries": len(log), "checkpoints": checkpoints}


# -- the setups --------------------------------------------------------------------------


def pipeline_name(number: int) -> str:
    return f"pipeline-{number:03d}"


def add_pipelines(env: Env, pipelines: int) -> None:
    """One requester identity per pipeline (as separate CI projects have), allowed to
    request signatures with the `release` key. Before replicas are made."""
    for k in range(pipelines):
        env.add_client(pipeline_name(k), ["requester"])
    cfg = env.read_config()
    cfg["keys"]["release"]["requesters"] = ["ci", *(pipeline_name(k) for k in range(pipelines))]
    env.write_config(cfg)


@contextlib.contextmanager
def serving(name: str, env: Env, replicas: int) -> Iterator[Setup]:
    envs = [env] + [env.replica(i) for i in range(1, replicas)]
    servers: list[ServerProcess] = []
    clients = [Clients(e) for e in envs]
    try:
        for e in envs:
            servers.append(ServerProcess(e).start())
        yield Setup(name, env, envs, clients)
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop()
