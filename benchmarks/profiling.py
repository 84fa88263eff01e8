"""The server's own cost while a missed target's path runs: its peak RSS and a py-spy profile.

`profile` samples the thread holding the GIL (py-spy, 200 Hz, a dev dependency)
and returns each function's inclusive and self share of the server's Python
time; without py-spy, or without ptrace, it says so instead.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["peak_rss_mb", "profile"]


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return round(int(found.group(1)) / 1024, 1) if found else float("nan")


def _py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def profile(pid: int, seconds: float, work: Callable[[], object], tmp: Path) -> dict[str, Any]:
    """The server's hottest functions (GIL-holding samples) while `work` runs."""
    spy = _py_spy()
    if spy is None:
        work()
        return {"note": "py-spy is not installed (scripts/setup --dev installs it)"}
    out = tmp / f"profile-{uuid.uuid4().hex[:6]}.txt"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "200",
            "--gil",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work()
    proc.wait(timeout=seconds + 30)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines() if out.exists() else []:
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        total += int(count)
        for f in set(frames):
            inclusive[f] += int(count)
        own[frames[-1]] += int(count)
    if not total:
        return {"note": "py-spy recorded no samples (ptrace not permitted?)"}

    def top(c: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(f, round(100 * n / total, 1)) for f, n in c.most_common(k)]

    skip = ("threading.py", "concurrent/futures", "<module>")
    return {
        "samples": total,
        "inclusive": [x for x in top(inclusive, 60) if not any(s in x[0] for s in skip)][:20],
        "self": top(own, 15),
    }
