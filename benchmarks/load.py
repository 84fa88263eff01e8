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
Results: benchmarks/results/load.{json,md}. The pipelines and the check are in
benchmarks/pipelines.py.
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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.audit_report import add_out
from benchmarks.pipelines import Flow, LoadError, Setup, add_pipelines, check, drive, serving
from testbed.env import Db, Env, make_env
from testbed.pg import PgServer, find_bin_dir

# The driver and the check are re-exported: tests/test_load.py runs them as `load.*`.
__all__ = [
    "LoadError",
    "Setup",
    "add_pipelines",
    "check",
    "drive",
    "main",
    "markdown",
    "new_report",
    "run_setup",
    "serving",
    "summarize",
    "write_report",
]


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
    add_out(p)
    args = p.parse_args(argv)

    report = new_report(args.pipelines, args.duration)
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
    write_report(args.out, "load", report, markdown(report))
    return 0


def new_report(pipelines: int, duration: float) -> dict[str, Any]:
    """A report's head: when, where, how hard; its setups go in `results`."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "machine": _machine(),
        "pipelines": pipelines,
        "duration": duration,
        "results": [],
    }


def write_report(out: Path, stem: str, report: dict[str, Any], md: str) -> None:
    """`out/STEM.json` (every number) and `out/STEM.md` (the table), which is printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(md, end="")


if __name__ == "__main__":
    raise SystemExit(main())
