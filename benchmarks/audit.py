"""The audit log at scale (docs/architecture.md §6, §7): append, proofs, start-up,
offline verification.

`python -m benchmarks.audit` grows a real `SqliteStore` (WAL, synchronous=FULL)
in a temporary directory to 10^3, 10^4, 10^5 and 10^6 entries shaped like a
request's life (created, approved twice, quorum, signed), in transactions of
10,000 entries each ending with a checkpoint signed by an in-memory Ed25519
key (no token needed). At each size it measures, through the real `Core`:

- append: a one-entry transaction with its checkpoint (`Core.record`: BEGIN
  IMMEDIATE, append, root, Ed25519 sign, COMMIT with fsync), median and p99
  of 200;
- proofs: `Core.inclusion_proof` and `Core.consistency_proof` at 200 random
  points (consistency from a random older size to the current one), and how
  many stored tree nodes each one reads;
- start-up: closing and reopening the store, then computing the root of the
  whole tree, which reads popcount(size) nodes: nothing rehashes the log.

At the largest size it then verifies the log offline as an auditor does
(`merkle.root_from_leaves` over every entry, leaf hashing included) and
compares that with plain SHA-256 over the same bytes. Every proof and root
measured is also checked against the signed checkpoints, so a fast wrong
answer cannot pass. Results: benchmarks/results/audit.{json,md}. The log's content
is in benchmarks/audit_log.py, the report's layout in benchmarks/audit_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.audit_log import Counting, lifecycle_entries, make_checkpointer, make_core
from benchmarks.audit_report import add_out, machine, markdown
from signer.audit import merkle
from signer.audit.note import Checkpoint, Verifier, open_note
from signer.store.sqlite import SqliteStore

BATCH = 10_000  # entries per transaction while growing the log
SAMPLES = 200  # single appends and proofs measured at each size
REPEAT = 3  # offline hashing runs; the fastest is reported
_T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def _summary(ns: list[float]) -> dict[str, float]:
    return {
        "median_ms": _ms(statistics.median(ns)),
        "p99_ms": _ms(statistics.quantiles(ns, n=100)[98]),
    }


class Bench:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "audit.db"
        self.checkpointer = make_checkpointer()
        self.verifier: Verifier = self.checkpointer.verifier
        self.store = SqliteStore(self.path)
        self.core = make_core(self.store, self.checkpointer)
        self.entries = lifecycle_entries()
        self.size = 0

    def close(self) -> None:
        self.store.close()

    def db_bytes(self) -> int:
        """The database with its write-ahead log."""
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.exists())

    def _opened(self, note: str) -> Checkpoint:
        return Checkpoint.parse(open_note(note, [self.verifier]))

    def grow(self, target: int) -> dict[str, float]:
        """Append up to `target` entries, BATCH per transaction, each ending with a checkpoint."""
        start, t0 = self.size, time.perf_counter_ns()
        while self.size < target:
            n = min(BATCH, target - self.size)
            when = _T0 + dt.timedelta(seconds=self.size)
            with self.store.transaction() as tx:
                for _ in range(n):
                    event, actor, rid, details = next(self.entries)
                    tx.append_audit(when, event, actor, rid, "release", details)
                self.checkpointer.cover(tx)
            self.size += n
        seconds = (time.perf_counter_ns() - t0) / 1e9
        return {
            "entries": self.size - start,
            "seconds": round(seconds, 3),
            "entries_per_s": round((self.size - start) / seconds),
        }

    def startup(self) -> dict[str, float]:
        """Close, reopen, and compute the root of the whole tree from the stored nodes."""
        self.store.close()
        t0 = time.perf_counter_ns()
        self.store = SqliteStore(self.path)
        t1 = time.perf_counter_ns()
        with self.store.transaction() as tx:
            size = tx.tree_size()
            counting = Counting(tx)
            root = merkle.root(counting, size)
        t2 = time.perf_counter_ns()
        self.core = make_core(self.store, self.checkpointer)
        latest_size, note = self.core.latest_checkpoint()
        assert size == latest_size == self.size, (size, latest_size, self.size)
        assert self._opened(note).root == root, "start-up root differs from the checkpoint"
        return {
            "open_ms": _ms(t1 - t0),
            "root_ms": _ms(t2 - t1),
            "root_reads": counting.reads,
            "popcount": size.bit_count(),
        }

    def proofs(self, rng: random.Random) -> dict[str, Any]:
        """Inclusion and consistency proofs at random points, checked against the checkpoint."""
        size, note = self.core.latest_checkpoint()
        root = self._opened(note).root
        indexes = [rng.randrange(size) for _ in range(SAMPLES)]
        olds = [rng.randrange(1, size) for _ in range(SAMPLES)]
        incl = [_timed(partial(self.core.inclusion_proof, i, size)) for i in indexes]
        cons = [_timed(partial(self.core.consistency_proof, o, size)) for o in olds]
        incl_reads, cons_reads = [], []
        with self.store.transaction() as tx:
            for i in indexes:
                counting = Counting(tx)
                proof = merkle.inclusion_proof(counting, i, size)
                incl_reads.append(counting.reads)
                leaf = merkle.leaf_hash(tx.entries(i, i + 1)[0])
                merkle.verify_inclusion(leaf, i, size, proof, root)
            for old in olds:
                counting = Counting(tx)
                proof = merkle.consistency_proof(counting, old, size)
                cons_reads.append(counting.reads)
                old_root = merkle.root(tx, old)
                merkle.verify_consistency(old, size, old_root, root, proof)
        return {
            "inclusion": {
                **_summary(incl),
                "reads_mean": round(statistics.mean(incl_reads), 1),
                "reads_max": max(incl_reads),
            },
            "consistency": {
                **_summary(cons),
                "reads_mean": round(statistics.mean(cons_reads), 1),
                "reads_max": max(cons_reads),
            },
        }

    def appends(self) -> dict[str, float]:
        """One-entry transactions, each ending with its signed checkpoint, as the server does."""
        times = []
        for _ in range(SAMPLES):
            event, actor, rid, details = next(self.entries)
            record = partial(self.core.record, event, actor, details, rid, "release")
            times.append(_timed(record))
            self.size += 1
        assert self.core.latest_checkpoint()[0] == self.size
        return _summary(times)

    def offline(self, size: int) -> dict[str, Any]:
        """An auditor's check of the first `size` entries vs plain SHA-256 of the same bytes."""
        t0 = time.perf_counter_ns()
        with self.store.transaction() as tx:
            found = tx.checkpoint(size)
        assert found is not None, f"no checkpoint at {size}"
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            entries = [
                bytes(e)
                for (e,) in db.execute(
                    "SELECT entry FROM audit_log WHERE idx < ? ORDER BY idx", (size,)
                )
            ]
        read_ns = time.perf_counter_ns() - t0
        assert len(entries) == size
        total = sum(map(len, entries))
        blob = b"".join(entries)
        sha = hashlib.sha256

        def tree() -> None:
            got = merkle.root_from_leaves(map(merkle.leaf_hash, entries))
            assert got == (size, self._opened(found[1]).root), "offline root differs"

        def each() -> None:
            for e in entries:
                sha(e).digest()

        def whole() -> None:
            sha(blob).digest()

        best = {
            name: min(_timed(fn) for _ in range(REPEAT))
            for name, fn in (("tree", tree), ("per_entry", each), ("concatenated", whole))
        }
        return {
            "entries": size,
            "bytes": total,
            "mean_entry_bytes": round(total / size),
            "read_from_sqlite_s": round(read_ns / 1e9, 3),
            "root_from_leaves_s": round(best["tree"] / 1e9, 3),
            "sha256_per_entry_s": round(best["per_entry"] / 1e9, 3),
            "sha256_concatenated_s": round(best["concatenated"] / 1e9, 3),
            "tree_MB_per_s": round(total / best["tree"] * 1e3, 1),
            "ratio_vs_per_entry": round(best["tree"] / best["per_entry"], 2),
            "ratio_vs_concatenated": round(best["tree"] / best["concatenated"], 2),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit", description=__doc__)
    parser.add_argument("--max-exp", type=int, default=6, help="largest size is 10**N (6)")
    add_out(parser)
    parser.add_argument("--dir", type=Path, default=None, help="where the temp database goes")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = random.Random(9162)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="signer-bench-", dir=args.dir) as tmp:
        bench = Bench(Path(tmp))
        try:
            for exp in range(3, args.max_exp + 1):
                size = 10**exp
                grow = bench.grow(size)
                row = {
                    "size": size,
                    "grow": grow,
                    "startup": bench.startup(),
                    "proofs": bench.proofs(rng),
                    "append": bench.appends(),
                    "db_mb": round(bench.db_bytes() / 1e6, 1),
                }
                rows.append(row)
                print(f"10^{exp}: done at {time.perf_counter() - started:.0f} s", file=sys.stderr)
            offline = bench.offline(10**args.max_exp)
        finally:
            bench.close()
    result = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "config": {"batch": BATCH, "samples": SAMPLES, "offline_repeat": REPEAT},
        "sizes": rows,
        "offline": offline,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "audit.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
