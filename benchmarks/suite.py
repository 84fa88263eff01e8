"""Every path next to its physical floor, measured in one run (`python -m benchmarks`).

One dev environment (SoftHSM token; `release` ecdsa-p256 and `pss` rsa-pss-3072
keys, 2-of-3 officers; the Ed25519 audit key) and one `signer serve` on the
embedded SQLite default, on this machine, in this run:

- floor-token: signatures per second from a tight in-process python-pkcs11
  loop on the same token and keys (C_Sign alone: no lock, no encoding);
- batch: one 1,000-digest request approved 2-of-3; signatures per second from
  the final approval sent to the signatures in the requester's hands (its
  WaitSigningRequest returns), and the ratio to floor-token;
- flow: 16 concurrent pipelines, each create -> 2 approvals -> wait ->
  signature over mTLS; flows per second, latency from last approval to
  signature, and the cost of a flow (wall time / flows) over its floor:
  4 empty mTLS RPCs + 1 token signature + 2 Ed25519 verifications + 4 durable
  SQLite commits (create, approval, approval with quorum, signature), each
  measured alone here;
- audit: durable appends per second (one caller, and 16 concurrent callers
  sharing commits), proof latency at 10^6 entries, and offline verification
  speed as a ratio to hashlib SHA-256 over the same bytes;
- peak RSS of the server.

Every run is checked before it is reported (signatures verify, nothing lost
or duplicated, the audit log fetches and verifies). A missed target is
reported with how far off it is and, when py-spy is installed (the dev
extras), the server's profile during the missed path.

The floors are measured by benchmarks/floors.py, profiles taken by
benchmarks/profiling.py, and the targets, verdicts and table are in
benchmarks/summary.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization

from benchmarks import audit as audit_bench
from benchmarks.audit_report import add_out, machine
from benchmarks.floors import (
    FLOOR_COUNTS,
    KEYS,
    TokenFloor,
    floor_commit,
    floor_ed25519_verify,
    floor_rpc,
)
from benchmarks.pipelines import Flow, Setup, add_pipelines, check, pipeline_name, serving
from benchmarks.profiling import peak_rss_mb, profile
from benchmarks.summary import TARGETS, markdown, verdicts
from signer.dsse import Statement, sign_statement
from signer.model import Digest
from signer.v1 import approval_pb2, signing_pb2, types_pb2
from signer.verify import verify_digest
from testbed.clients import Clients, sha256_digest
from testbed.commands import wait_until
from testbed.env import Env, make_env
from testbed.process import ServerProcess

_RPC_TIMEOUT = 120.0


# -- the service ----------------------------------------------------------------------------


class Officers:
    """Approval envelopes, keys loaded once (the client's own cost kept small)."""

    def __init__(self, env: Env) -> None:
        self.keys = {o: env.approval_key(o) for o in ("alice", "bob")}

    def approve(self, clients: Clients, officer: str, r: types_pb2.SigningRequest) -> None:
        digests = tuple(
            Digest("sha256", d.value, d.artifact_name) for d in r.digests
        )  # the benchmark sends sha256 only
        st = Statement(
            request_id=r.id,
            key_name=r.key_name,
            key_id=r.key_id,
            decision="approve",
            approver=officer,
            issued_at=dt.datetime.now(dt.UTC),
            **Statement.binding(digests),
        )
        clients.approval(officer).Approve(
            approval_pb2.ApproveRequest(id=r.id, envelope=sign_statement(st, self.keys[officer])),
            timeout=_RPC_TIMEOUT,
        )


def _wait(clients: Clients, who: str, request_id: str) -> types_pb2.SigningRequest:
    while True:
        resp = clients.signing(who).WaitSigningRequest(
            signing_pb2.WaitSigningRequestRequest(id=request_id), timeout=_RPC_TIMEOUT
        )
        if resp.done:
            request: types_pb2.SigningRequest = resp.request
            return request


def batch(
    env: Env,
    clients: Clients,
    officers: Officers,
    algorithm: str,
    runs: int,
    made: list[str],
    floor: TokenFloor | None = None,
    n: int = 1000,
) -> dict[str, Any]:
    """Signatures per second from the final approval to all `n` in the requester's hands.

    With `floor`, each run is paired with bare loops of the same `n` signatures just
    before and just after it (this machine's token speed drifts from minute to
    minute); the ratio is the median over the runs of run / mean(before, after).
    """
    key = KEYS[algorithm]
    info = clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name=key), timeout=_RPC_TIMEOUT
    )
    public = serialization.load_pem_public_key(info.key.public_key_pem.encode())
    server = ServerProcess(env)
    rates, floors = [], []
    for _ in range(runs):
        before = floor.rate(algorithm, n, runs=1) if floor is not None else 0.0
        digests = [sha256_digest(os.urandom(32), f"pkg-{i}.tar.gz") for i in range(n)]
        r = clients.create(key=key, digests=digests)
        made.append(r.id)
        officers.approve(clients, "alice", r)
        got: dict[str, Any] = {}

        def waiter(request_id: str = r.id, got: dict[str, Any] = got) -> None:
            got["request"] = _wait(clients, "ci", request_id)
            got["t1"] = time.monotonic()

        thread = threading.Thread(target=waiter)
        thread.start()
        # The long poll is in place before the last approval.
        wait_until(functools.partial(server.logged, "waiting for a decision", request_id=r.id))
        t0 = time.monotonic()
        officers.approve(clients, "bob", r)
        thread.join(_RPC_TIMEOUT)
        done = got["request"]
        assert done.state == types_pb2.REQUEST_STATE_SIGNED and len(done.signatures) == n
        for d, sig in zip(digests, done.signatures, strict=True):
            verify_digest(public, "sha256", d.value, sig)  # raises if wrong
        rates.append(n / (got["t1"] - t0))
        if floor is not None:  # the same n signatures in a bare loop, before and after
            floors.append((before + floor.rate(algorithm, n, runs=1)) / 2)
    out: dict[str, Any] = {
        "digests": n,
        "runs": runs,
        "signatures_per_s": round(statistics.median(rates), 1),
        "runs_signatures_per_s": [round(r, 1) for r in rates],
    }
    if floors:
        out["floor_per_s"] = [round(f, 1) for f in floors]
        out["vs_floor"] = round(
            statistics.median(r / f for r, f in zip(rates, floors, strict=True)), 3
        )
    return out


def _flow(clients: Clients, officers: Officers, pipeline: str) -> Flow:
    flow = Flow(idempotency_key=str(uuid.uuid4()))
    digest = sha256_digest(os.urandom(32), "release.tar.gz")
    flow.digest, flow.started = digest.value, time.monotonic()
    try:
        r = clients.create(digests=[digest], idempotency_key=flow.idempotency_key, who=pipeline)
        flow.ids.add(r.id)
        officers.approve(clients, "alice", r)
        flow.last_approval = time.monotonic()
        officers.approve(clients, "bob", r)
        done = _wait(clients, pipeline, r.id)
        flow.done, flow.state = time.monotonic(), done.state
        flow.signature = bytes(done.signatures[0]) if done.signatures else b""
    except grpc.RpcError as e:
        flow.error = f"{e.code().name}: {e.details()}"
    return flow


def drive(setup: Setup, officers: Officers, pipelines: int, seconds: float) -> dict[str, Any]:
    flows: list[Flow] = []
    lock = threading.Lock()
    start = time.monotonic()

    def pipeline(k: int) -> None:
        while time.monotonic() < start + seconds:
            f = _flow(setup.clients[0], officers, pipeline_name(k))
            with lock:
                flows.append(f)

    threads = [threading.Thread(target=pipeline, args=(k,)) for k in range(pipelines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    tail = sorted(f.done - f.last_approval for f in flows if not f.error)
    q = statistics.quantiles(tail, n=100, method="inclusive")
    return {
        "flows_list": flows,
        "pipelines": pipelines,
        "flows": len(flows),
        "seconds": round(elapsed, 2),
        "flows_per_s": round(len(flows) / elapsed, 1),
        "cost_ms": round(elapsed / len(flows) * 1000, 2),
        "last_approval_to_signature_ms": {
            "p50": round(q[49] * 1000, 1),
            "p99": round(q[98] * 1000, 1),
        },
    }


# -- the run ---------------------------------------------------------------------------------------


def _audit(tmp: Path, entries: int) -> dict[str, Any]:
    bench = audit_bench.Bench(tmp)
    try:
        grow = bench.grow(entries)
        proofs = bench.proofs(random.Random(9162))
        single = bench.appends()
        before = bench.core.group.commits
        per_thread, threads = 50, 16
        t0 = time.perf_counter()

        def appender() -> None:
            for _ in range(per_thread):
                event, actor, rid, details = next(bench.entries)
                bench.core.record(event, actor, details, rid, "release")

        workers = [threading.Thread(target=appender) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        seconds = time.perf_counter() - t0
        commits = bench.core.group.commits - before
        bench.size += per_thread * threads
        assert bench.core.latest_checkpoint()[0] == bench.size
        offline = bench.offline(entries)
    finally:
        bench.close()
    return {
        "grow_entries_per_s": grow["entries_per_s"],
        "append_one_caller": {"per_s": round(1000 / single["median_ms"]), **single},
        "append_16_callers": {
            "per_s": round(per_thread * threads / seconds),
            "commits": commits,
            "entries_per_commit": round(per_thread * threads / commits, 1),
        },
        "entries": entries,
        "proofs": proofs,
        "offline": offline,
        "verification_vs_hashlib": round(
            offline["sha256_concatenated_s"] / offline["root_from_leaves_s"], 3
        ),
    }


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    env = make_env(tmp / "env")
    env.add_key(KEYS["rsa-pss-3072"], "rsa-pss-3072")
    add_pipelines(env, args.pipelines)

    def log(what: str) -> None:
        print(f"[{time.perf_counter() - args.t0:5.0f} s] {what}", file=sys.stderr)

    log("floors")
    floor = TokenFloor(env)
    token = {alg: round(floor.rate(alg, n), 1) for alg, n in FLOOR_COUNTS.items()}

    def flow_floors() -> dict[str, float]:
        return {
            "empty_mtls_rpc": floor_rpc(env),
            "token_signature": 1 / floor.rate("ecdsa-p256", FLOOR_COUNTS["ecdsa-p256"]),
            "ed25519_verify": floor_ed25519_verify(),
            "durable_sqlite_commit": floor_commit(tmp),
        }

    officers = Officers(env)
    result: dict[str, Any] = {"floor_token_per_s": token}
    profiles: dict[str, Any] = {}
    with serving("sqlite", env, 1) as setup:
        server = setup.clients[0]
        pid = _server_pid(env)
        log("batch")
        result["batch"] = {}
        batch_ids: list[str] = []
        for alg, runs in (("ecdsa-p256", 7), ("rsa-pss-3072", 3)):
            result["batch"][alg] = batch(env, server, officers, alg, runs, batch_ids, floor)
        log("flow")
        before = flow_floors()  # measured again after the flow, and averaged: this
        flow = drive(setup, officers, args.pipelines, args.flow_seconds)
        after = flow_floors()  # machine's speed drifts from minute to minute
        parts = {k: (before[k] + after[k]) / 2 for k in before}
        flow_floor = (
            4 * parts["empty_mtls_rpc"]
            + parts["token_signature"]
            + 2 * parts["ed25519_verify"]
            + 4 * parts["durable_sqlite_commit"]
        )
        flows = flow.pop("flows_list")
        checked = check(setup, flows, tmp, frozenset(batch_ids))
        flow |= {
            "floor_ms": round(flow_floor * 1000, 3),
            "floor_parts_ms": {k: round(v * 1000, 4) for k, v in parts.items()},
            "vs_floor": round(flow["cost_ms"] / (flow_floor * 1000), 2),
            "checked": checked,
        }
        result["flow"] = flow
        result["server_peak_rss_mb"] = peak_rss_mb(pid)
        verdict_so_far = flow["vs_floor"] <= TARGETS["flow"][1]
        if not verdict_so_far:
            log("profiling the flow")
            profiles["flow"] = profile(
                pid, 8, lambda: drive(setup, officers, args.pipelines, 8), tmp
            )
        for alg in KEYS:
            if result["batch"][alg]["vs_floor"] < TARGETS[f"batch {alg}"][1]:
                log(f"profiling the {alg} batch")
                profiles[f"batch {alg}"] = profile(
                    pid, 6, functools.partial(batch, env, server, officers, alg, 2, []), tmp
                )
    floor.close()
    log("audit")
    result["audit"] = _audit(tmp, args.audit_entries)
    result["verdicts"] = verdicts(result)
    result["profiles"] = profiles
    return result


def _server_pid(env: Env) -> int:
    out = subprocess.run(
        ["pgrep", "-f", f"serve --config {env.config}"], capture_output=True, text=True, check=False
    ).stdout.split()
    return int(out[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    add_out(parser)
    parser.add_argument("--pipelines", type=int, default=16)
    parser.add_argument("--flow-seconds", type=float, default=20.0)
    parser.add_argument(
        "--audit-entries", type=int, default=10**6, help="audit log size (default 10^6)"
    )
    args = parser.parse_args(argv)
    args.t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="signer-bench-") as tmp:
        result = run(args, Path(tmp))
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        **result,
        "total_seconds": round(time.perf_counter() - args.t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "summary.md").write_text(md)
    print(md)
    return 0
