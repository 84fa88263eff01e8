"""Notifications: how soon a webhook hears of each transition, under load.

`python -m benchmarks.notify` runs, for each setup, `--pipelines` concurrent
pipelines (create, alice approves, bob approves, wait: benchmarks/pipelines.py)
for `--duration` seconds against servers with one JSON webhook, a listener on
127.0.0.1 in this process:

- **sqlite**: one `signer serve` on the embedded default;
- **postgresql**: `--replicas` servers on one PostgreSQL database, each running
  its dispatcher over the shared outbox.

The latency of a notification is the time it arrived at the listener less the
time of its audit entry (the server's clock, on this host): commit, dispatch,
HMAC and POST. The run is checked before any number is reported: every
notified entry of the log arrived exactly once (by its delivery id), its HMAC
verifies, and nothing was left in the outbox. Results:
benchmarks/results/notify.{json,md}. Target: p99 within one second.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import statistics
import tempfile
import threading
from pathlib import Path
from typing import Any

from benchmarks.audit_report import add_out
from benchmarks.load import new_report, postgres, write_report
from benchmarks.pipelines import LoadError, add_pipelines, drive, serving
from signer.encoding import parse_time
from signer.notify import webhook
from signer.notify.messages import event_of
from signer.tls import write_private
from testbed.env import Db, Env, make_env
from testbed.webhook_sink import Received, WebhookSink

__all__ = ["main"]

SECRET = b"benchmark-webhook-key-0123456789abcdef"
TARGET_P99_MS = 1000.0


def _with_webhook(env: Env, sink: WebhookSink) -> None:
    write_private(env.config.parent / "webhook.key", SECRET)
    cfg = env.read_config()
    cfg["notify"] = {"webhooks": {"bench": {"url": sink.url, "secret_file": "webhook.key"}}}
    env.write_config(cfg, adopt=False)


def _expected(env: Env) -> dict[int, str]:
    """The notified entries of the log since the first server started (a webhook is told
    of what happens from then on): index -> event."""
    store = env.store.open()
    try:
        entries = list(store.audit_entries())
    finally:
        store.close()
    start = next(e.index for e in entries if e.event == "server.started")
    return {e.index: n for e in entries[start:] if (n := event_of(e.event)) is not None}


def _outbox_left(env: Env) -> int:
    store = env.store.open()
    try:
        with store.transaction() as tx:
            return sum(w + g for w, g in tx.outbox_counts().values())
    finally:
        store.close()


def baseline(env: Env, pipelines: int, duration: float) -> float:
    """Flows per second of the same setup without a webhook (what notifying costs)."""
    add_pipelines(env, pipelines)
    with serving("sqlite", env, 1) as setup:
        flows, elapsed = drive(setup, pipelines, duration)
    return round(len(flows) / elapsed, 1)


def run_setup(
    name: str, env: Env, replicas: int, pipelines: int, duration: float
) -> dict[str, Any]:
    sink = WebhookSink()
    got: list[Received] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set() or not sink.received.empty():
            with contextlib.suppress(queue.Empty):
                got.append(sink.received.get(timeout=0.2))

    try:
        add_pipelines(env, pipelines)
        _with_webhook(env, sink)
        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        with serving(name, env, replicas) as setup:
            flows, elapsed = drive(setup, pipelines, duration)
            expected = _expected(env)
            deadline = threading.Event()
            for _ in range(300):  # until the last notification arrived (or 30 s)
                if len(got) >= len(expected) and _outbox_left(env) == 0:
                    break
                deadline.wait(0.1)
        done.set()
        collector.join(timeout=10)
    finally:
        sink.close()
    return _check_and_summarize(name, replicas, pipelines, len(flows), elapsed, expected, got)


def _check_and_summarize(
    name: str,
    replicas: int,
    pipelines: int,
    flows: int,
    elapsed: float,
    expected: dict[int, str],
    got: list[Received],
) -> dict[str, Any]:
    seen: dict[int, dict[str, Any]] = {}
    latency: dict[str, list[float]] = {}
    for r in got:
        if not webhook.verify(SECRET, r.headers["X-Signer-Signature"], r.body, r.at):
            raise LoadError(f"a delivery's HMAC does not verify: {r.headers}")
        body = r.json
        index = int(body["audit_index"])
        if index in seen:
            raise LoadError(f"audit entry {index} was delivered twice")
        if expected.get(index) != body["event"]:
            raise LoadError(
                f"entry {index} delivered as {body['event']}, not {expected.get(index)}"
            )
        seen[index] = body
        logged = parse_time(body["time"]).timestamp()
        latency.setdefault(body["event"], []).append(r.at - logged)
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise LoadError(f"{len(missing)} notifications never arrived (first: entry {missing[0]})")
    every = [x for xs in latency.values() for x in xs]
    return {
        "setup": name,
        "replicas": replicas,
        "pipelines": pipelines,
        "flows": flows,
        "flows_per_s": round(flows / elapsed, 1),
        "notifications": len(every),
        "all_ms": _pct(every),
        "by_event_ms": {e: _pct(xs) for e, xs in sorted(latency.items())},
    }


def _pct(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else xs * 99
    return {
        "p50": round(q[49] * 1000, 1),
        "p99": round(q[98] * 1000, 1),
        "max": round(max(xs) * 1000, 1),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Notifications: entry committed → webhook received",
        "",
        f"Measured {report['date']} on {m['cpu']}, {m['nproc']} cores, Python {m['python']}, "
        f"by `python -m benchmarks.notify`: {report['pipelines']} pipelines for "
        f"{report['duration']} s per setup, one HMAC-signed JSON webhook on 127.0.0.1; every "
        "notified entry arrived once and verified. Target: p99 ≤ 1 s.",
        "",
        "| setup | replicas | flows/s | notifications | p50 (ms) | p99 (ms) | max (ms) | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        a = r["all_ms"]
        met = "met" if a["p99"] <= TARGET_P99_MS else "missed"
        lines.append(
            f"| {r['setup']} | {r['replicas']} | {r['flows_per_s']} | {r['notifications']} | "
            f"{a['p50']} | {a['p99']} | {a['max']} | {met} |"
        )
    if "sqlite_without_webhook_flows_per_s" in report:
        lines += [
            "",
            f"The same sqlite setup without a webhook: "
            f"{report['sqlite_without_webhook_flows_per_s']} flows/s (the listener runs in the "
            "benchmark's process, beside the pipelines, on the same 2 cores).",
        ]
    lines += ["", "By event (p50 / p99 ms):", ""]
    for r in report["results"]:
        parts = [f"{e} {v['p50']} / {v['p99']}" for e, v in r["by_event_ms"].items()]
        lines.append(f"- {r['setup']}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.notify", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds per setup (default 20)")
    p.add_argument("--pipelines", type=int, default=16, help="concurrent pipelines (default 16)")
    p.add_argument("--replicas", type=int, default=3, help="PostgreSQL replicas (default 3)")
    p.add_argument("--setup", choices=("all", "postgresql", "sqlite"), default="all")
    add_out(p)
    args = p.parse_args(argv)
    report = new_report(args.pipelines, args.duration)
    with tempfile.TemporaryDirectory(prefix="signer-notify-") as d:
        tmp = Path(d)
        if args.setup in ("all", "sqlite"):
            env = make_env(tmp / "sqlite-plain")
            report["sqlite_without_webhook_flows_per_s"] = baseline(
                env, args.pipelines, args.duration
            )
            env = make_env(tmp / "sqlite")
            report["results"].append(run_setup("sqlite", env, 1, args.pipelines, args.duration))
        if args.setup in ("all", "postgresql"):
            with postgres(durable=True) as pg:
                env = make_env(tmp / "pg", Db(pg.database("notify"), pg.password_file))
                report["results"].append(
                    run_setup("postgresql", env, args.replicas, args.pipelines, args.duration)
                )
    write_report(args.out, "notify", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
