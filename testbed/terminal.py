"""Run a command in a pseudo-terminal of a given size, as a person at a terminal would.

`in_terminal(args, columns)` gives the command a pty as stdin, stdout and stderr,
sized `columns` x `rows` before it starts (no COLUMNS or LINES in its
environment, so the size is what the terminal says), and returns everything it
wrote, with the terminal's CR LF line ends made LF. Bounded in time.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass

__all__ = ["Screen", "in_terminal"]


@dataclass(frozen=True)
class Screen:
    returncode: int
    text: str  # stdout and stderr as the terminal received them

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")


def in_terminal(
    args: list[str],
    columns: int,
    rows: int = 50,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Screen:
    """Run `args` on a `columns`-wide pseudo-terminal; what it wrote and its exit code."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    base = {k: v for k, v in (env or os.environ).items() if k not in ("COLUMNS", "LINES")}
    base.setdefault("TERM", "xterm-256color")
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=base)
    os.close(slave)
    chunks: list[bytes] = []
    end = time.monotonic() + timeout
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{args[:3]} did not finish in {timeout} s")
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=max(end - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = b"".join(chunks).decode("utf-8", errors="replace").replace("\r\n", "\n")
    return Screen(code, text)
