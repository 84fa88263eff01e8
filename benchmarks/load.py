"""Load: concurrent pipelines against replicas on PostgreSQL, and one node on SQLite.

`python -m benchmarks.load` builds a dev environment (SoftHSM token, officers,
mTLS clients), then for each setup runs `--pipelines` concurrent simulated
pipelines for `--duration` seconds over real mTLS on 127.0.0.1:

- **postgresql**: `--replicas` `signer serve` processes on one PostgreSQL
  database (a throwaway cluster with fsync on, as in production) and one token;
- **sqlite**: one `signer serve` on the embedded default (WAL, synchronous=FULL).

Each pipeline loops: create a request with an idempotency key on one replica
(retried with the same key on UNAVAILABLE), alice approves on the next replica,
bob on the one after, and the pipeline waits for the signature on the replica
it created the request on. New flows start until the time is up; the ones in
flight then finish. Then the run is checked, and fails rather than report a
number for a wrong answer:

- every flow got exactly one request id, SIGNED with a signature that verifies
  under the key's public key (nothing lost, nothing duplicated by retries);
- the database holds exactly those requests, all SIGNED;
- the audit log's indexes are 0..n-1, each request has one `request.created`
  and one `request.signed` entry, every checkpoint commits to a prefix of that
  one log (one per size), and `signer audit fetch` + `signer audit verify`
  accept the whole log through a replica.

Reported: flows, flows per second, latency from create to signature in hand
(p50, p90, p99, max) and from the last approval sent to signature in hand.
Results: benchmarks/results/load.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
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
from testbed.env import Db, Env, checkpoints_match_the_log, make_env
from testbed.pg import PgServer, find_bin_dir
from testbed.process import ServerProcess

RESULTS = Path(__file__).parent / "results"
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


@contextlib.contextmanager
def postgres(durable: bool) -> Iterator[PgServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (scripts/setup --dev installs it)")
    server = PgServer(bin_dir, durable=durable).start()
    try:
        yield server
    finally:
        server.stop()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def summarize(
    name: str, replicas: int, pipelines: int, flows: list[Flow], elapsed: float
) -> dict[str, Any]:
    total = [f.done - f.started for f in flows]
    tail = [f.done - f.last_approval for f in flows]

    def pct(xs: list[float]) -> dict[str, float]:
        q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else xs * 99
        return {"p50": _ms(q[49]), "p90": _ms(q[89]), "p99": _ms(q[98]), "max": _ms(max(xs))}

    return {
        "setup": name,
        "replicas": replicas,
        "pipelines": pipelines,
        "flows": len(flows),
        "seconds": round(elapsed, 2),
        "flows_per_s": round(len(flows) / elapsed, 1),
        "retries": sum(f.retries for f in flows),
        "create_to_signature_ms": pct(total),
        "last_approval_to_signature_ms": pct(tail),
    }


def run_setup(
    name: str,
    env: Env,
    replicas: int,
    pipelines: int,
    duration: float,
    tmp: Path,
    pg: PgServer | None = None,
) -> dict[str, Any]:
    """Drive one setup, check it, and return its summary (raises LoadError if wrong).

    With `pg`, also counts the database transactions the replicas committed per flow.
    """
    add_pipelines(env, pipelines)
    with serving(name, env, replicas) as setup:
        before = _commits(pg, env) if pg else 0
        flows, elapsed = drive(setup, pipelines, duration)
        commits = _commits(pg, env) - before if pg else 0
        checked = check(setup, flows, tmp)
    result = summarize(name, replicas, pipelines, flows, elapsed) | checked
    if pg:
        result["db_transactions_per_flow"] = round(commits / len(flows), 1)
    return result


def _commits(pg: PgServer, env: Env) -> int:
    """Transactions committed in the env's database so far (statistics lag a little:
    the count is read after a short pause)."""
    time.sleep(1)
    dbname = env.store.url.rsplit("/", 1)[1]
    with pg.connect() as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
    return int(str(row[0])) if row else 0


# -- reporting ---------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version()}


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Load: concurrent pipelines",
        "",
        f"Measured {report['date']} on {m['cpu']}, {m['nproc']} cores, Python {m['python']}, "
        f"PostgreSQL {report.get('postgresql', '?')}. {report['pipelines']} pipelines for "
        f"{report['duration']} s each (create, 2 approvals on other replicas, wait), "
        "mTLS on 127.0.0.1, SoftHSM, ecdsa-p256; every run checked (nothing lost or "
        "duplicated, log verifies).",
        "",
        "| setup | replicas | flows | flows/s | retries | create→signature p50 / p90 / p99 / max "
        "(ms) | last approval→signature p50 / p99 (ms) | db transactions per flow "
        "| audit entries |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        a, t = r["create_to_signature_ms"], r["last_approval_to_signature_ms"]
        lines.append(
            f"| {r['setup']} | {r['replicas']} | {r['flows']} | {r['flows_per_s']} | "
            f"{r['retries']} | {a['p50']} / {a['p90']} / {a['p99']} / {a['max']} | "
            f"{t['p50']} / {t['p99']} | {r.get('db_transactions_per_flow', '')} | "
            f"{r['audit_entries']} |"
        )
    lines += [
        "",
        "Reading it: the pipelines never pause, so latency is queueing: about "
        "pipelines ÷ flows/s (Little's law). Every write transaction, and with it every "
        "audit append and checkpoint signature, holds the one store lock (SQLite's "
        "BEGIN IMMEDIATE, PostgreSQL's database-wide advisory lock), so throughput is "
        "that of one serialized store whatever the replica count: replicas are for "
        "availability (work outside the lock, such as TLS and checking approvals, "
        "spreads over them). See benchmarks/README.md for why PostgreSQL is slower here.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds per setup (default 60)")
    p.add_argument("--pipelines", type=int, default=32, help="concurrent pipelines (default 32)")
    p.add_argument(
        "--replicas",
        type=int,
        default=3,
        help="PostgreSQL replicas (default 3; one replica is also run, for comparison)",
    )
    p.add_argument(
        "--setup",
        choices=("all", "postgresql", "sqlite"),
        default="all",
        help="which setups to run (default all)",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where load.json/.md go")
    args = p.parse_args(argv)

    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "machine": _machine(),
        "pipelines": args.pipelines,
        "duration": args.duration,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="signer-load-") as d:
        tmp = Path(d)
        if args.setup in ("all", "postgresql"):
            with postgres(durable=True) as pg:
                with pg.connect() as conn:
                    row = conn.execute("SHOW server_version").fetchone()
                    report["postgresql"] = str(row[0]) if row else "?"
                for replicas in sorted({args.replicas, 1}, reverse=True):
                    root = tmp / f"pg-{replicas}"
                    env = make_env(root, Db(pg.database("load"), pg.password_file))
                    report["results"].append(
                        run_setup(
                            "postgresql", env, replicas, args.pipelines, args.duration, tmp, pg
                        )
                    )
                    print(json.dumps(report["results"][-1]), flush=True)
        if args.setup in ("all", "sqlite"):
            env = make_env(tmp / "sqlite")
            report["results"].append(
                run_setup("sqlite", env, 1, args.pipelines, args.duration, tmp)
            )
            print(json.dumps(report["results"][-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (args.out / "load.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
