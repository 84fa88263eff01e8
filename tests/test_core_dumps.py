"""No secrets in core dumps (invariant 7): the running server dumps no core, to any sink.

The server is a real process. Its /proc/PID/limits must say "Max core file size"
0 (soft and hard). Whether it is dumpable cannot be read from /proc directly, but
the kernel gives the /proc/PID files of a non-dumpable process to root: the
server is started with a group of its own (uid root, gid nogroup), so
/proc/PID/status belongs to group 0 only if it made itself non-dumpable. A
control process started the same way shows the other case.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.commands import SIGNER, wait_until
from testbed.env import Env
from testbed.process import ServerProcess

NOGROUP = 65534


def _status_gid(pid: int) -> tuple[int, int]:
    """(group owning /proc/PID/status, the process's own effective gid)."""
    status = Path(f"/proc/{pid}/status")
    [gids] = [line.split()[1:] for line in status.read_text().splitlines() if line[:4] == "Gid:"]
    return status.stat().st_gid, int(gids[1])


@pytest.mark.sqlite_only  # a property of the process, not of the store
def test_the_running_server_turns_core_dumps_off(fresh_env: Env) -> None:
    """RLIMIT_CORE is 0/0 and the server is not dumpable (its /proc files are root's)."""
    control = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], group=NOGROUP, extra_groups=[]
    )
    try:
        assert _status_gid(control.pid) == (NOGROUP, NOGROUP)  # dumpable: its own group
    finally:
        control.kill()
        control.wait(timeout=15)

    server = ServerProcess(fresh_env)
    with server.log.open("ab") as out:
        server.proc = subprocess.Popen(
            [*SIGNER, "serve", "--config", str(fresh_env.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            group=NOGROUP,
            extra_groups=[],
        )
    try:
        wait_until(server.healthy, timeout=60)
        pid = server.proc.pid
        limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
        [core] = [line.split() for line in limits if line.startswith("Max core file size")]
        assert core[4:6] == ["0", "0"], core
        assert _status_gid(pid) == (0, NOGROUP)
    finally:
        server.stop()
