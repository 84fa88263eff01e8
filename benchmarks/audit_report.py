"""The audit benchmark's report: the machine it ran on, the table by size, the offline check."""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
from pathlib import Path
from typing import Any

__all__ = ["LOCAL", "add_out", "machine", "markdown"]

LOCAL = Path("benchmark-results")  # where a run writes unless --out says otherwise


def add_out(parser: argparse.ArgumentParser) -> None:
    """Every benchmark's --out: ./benchmark-results unless the committed ones are asked."""
    parser.add_argument(
        "--out",
        type=Path,
        default=LOCAL,
        help=f"results directory (default ./{LOCAL}; --out benchmarks/results replaces the "
        "committed results)",
    )


def machine() -> dict[str, Any]:
    model = "unknown"
    with Path("/proc/cpuinfo").open() as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


_HEADER = (
    "entries",
    "grow/s",
    "append p50",
    "append p99",
    "incl p50",
    "incl p99",
    "cons p50",
    "cons p99",
    "incl reads",
    "cons reads",
    "open",
    "root",
    "root reads",
    "db MB",
)


def _row(r: dict[str, Any]) -> tuple[str, ...]:
    i, c, s, a = r["proofs"]["inclusion"], r["proofs"]["consistency"], r["startup"], r["append"]
    return (
        f"{r['size']:,}",
        f"{r['grow']['entries_per_s']:,}",
        f"{a['median_ms']:.2f}",
        f"{a['p99_ms']:.2f}",
        f"{i['median_ms']:.3f}",
        f"{i['p99_ms']:.3f}",
        f"{c['median_ms']:.3f}",
        f"{c['p99_ms']:.3f}",
        f"{i['reads_mean']:.1f} / {i['reads_max']}",
        f"{c['reads_mean']:.1f} / {c['reads_max']}",
        f"{s['open_ms']:.2f}",
        f"{s['root_ms']:.2f}",
        f"{s['root_reads']}",
        f"{r['db_mb']:.0f}",
    )


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [_HEADER, *(_row(r) for r in rows)]
    widths = [max(len(line[k]) for line in lines) for k in range(len(_HEADER))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(out)


def _offline_text(o: dict[str, Any]) -> str:
    return (
        f"Offline verification of {o['entries']:,} entries ({o['bytes'] / 1e6:.0f} MB, "
        f"{o['mean_entry_bytes']} bytes each on average; reading them from SQLite took "
        f"{o['read_from_sqlite_s']} s, not counted below):\n\n"
        f"| what | seconds | vs tree |\n|---|---:|---:|\n"
        f"| `merkle.root_from_leaves(map(leaf_hash, entries))` | {o['root_from_leaves_s']} | 1 |\n"
        f"| `sha256(e).digest()` for each entry | {o['sha256_per_entry_s']} | "
        f"{o['ratio_vs_per_entry']}x faster |\n"
        f"| one `sha256` over the concatenated entries | {o['sha256_concatenated_s']} | "
        f"{o['ratio_vs_concatenated']}x faster |\n\n"
        f"The tree check runs at {o['tree_MB_per_s']} MB/s: "
        f"{o['ratio_vs_per_entry']}x the time of hashing each entry once and "
        f"{o['ratio_vs_concatenated']}x the time of one hash over all the bytes."
    )


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    return f"""# Audit log benchmark

Run {result["date"]} by `python -m benchmarks.audit` in {result["total_seconds"]} s.
Machine: {m["nproc"]} CPUs ({m["cpu_model"]}), Python {m["python"]}, SQLite {m["sqlite"]},
{m["platform"]}. See benchmarks/README.md for how to read this.

Times in milliseconds unless named. "append" is one transaction of one entry
with its signed checkpoint (fsync included); proofs are through `Core`
(transaction included), at {result["config"]["samples"]} random points;
"reads" are stored tree nodes read per proof (mean / max); "open" reopens
the store, "root" then computes the whole tree's root from stored nodes.

{_table(result["sizes"])}

{_offline_text(result["offline"])}
"""
