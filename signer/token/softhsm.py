"""SoftHSM2 set-up for the dev environment and the tests.

Writes a softhsm2.conf whose token directory is given (see
`softhsm-config/README.md`) and initialises a token. PINs are typed into
`softhsm2-util` through a pseudo-terminal, never passed in argv (invariant 7).
"""

from __future__ import annotations

import os
import pty
import secrets
import shutil
from pathlib import Path

from signer.errors import ConfigError

__all__ = ["DEFAULT_MODULE", "init_token", "random_pin", "write_config"]

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"

_TEMPLATE = """\
# SoftHSM2 configuration for the signer's dev environment and tests.
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
"""


def random_pin() -> str:
    """A fresh random PIN (hex, 128 bits)."""
    return secrets.token_hex(16)


def write_config(path: Path, tokendir: Path) -> Path:
    """Write a softhsm2.conf at `path` that keeps tokens in `tokendir`."""
    tokendir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(_TEMPLATE.format(tokendir=tokendir.resolve()))
    return path


def init_token(conf: Path, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise a free SoftHSM slot as token `label` with the given PINs."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise ConfigError("softhsm2-util not found; install SoftHSM2 (apt-get install softhsm2)")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    answers = [so_pin, so_pin, user_pin, user_pin]
    pid, fd = pty.fork()
    if pid == 0:  # child: the PINs are read from the terminal, not argv
        os.execve(util, [util, "--init-token", "--free", "--label", label], env)  # noqa: S606
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if chunk.rstrip().endswith(b"PIN:") and answers:
            os.write(fd, answers.pop(0).encode() + b"\n")
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or answers:
        text = output.decode(errors="replace")
        for secret in (so_pin, user_pin):
            text = text.replace(secret, "****")
        raise ConfigError(f"softhsm2-util could not initialise token {label!r}: {text.strip()}")
