"""A throwaway PostgreSQL server for tests and benchmarks: initdb + pg_ctl in a temp dir.

It listens on 127.0.0.1 only, on a free port, with SCRAM passwords (a fresh random
one per session, in a 0600 file the signer reads through `store.password_file`).
PostgreSQL refuses to run as root, so under root the server runs as the `postgres`
user the Debian package creates. A missing PostgreSQL fails the session: CI
installs it (scripts/setup), and it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from testbed.commands import free_port

__all__ = ["PgServer", "find_bin_dir"]


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb, or the one on PATH."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


@dataclass
class PgServer:
    """One PostgreSQL cluster; `database()` makes a new empty database per test env."""

    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="signer-pg-")))
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # False for the tests (they never crash PostgreSQL itself); True for benchmarks,
    # which must pay for the fsync a real deployment pays for.
    durable: bool = False
    _count: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool, as the postgres user when we are root."""
        owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        try:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                check=True,
                timeout=90,
                user=owner.pw_uid if owner else None,
                group=owner.pw_gid if owner else None,
                extra_groups=[] if owner else None,
            )
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{args[0]} failed:\n{e.stdout}{e.stderr}") from None

    def start(self) -> PgServer:
        self.root.chmod(0o755)
        secret = self.root / "initdb-password"
        secret.write_text(self.password + "\n")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(secret, pw.pw_uid, pw.pw_gid)
        secret.chmod(0o600)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={secret}",
            "--encoding=UTF8",
            "--no-instructions",
        )
        secret.unlink()
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 300\n"
                "log_min_messages = warning\n"
            )
            if not self.durable:
                # The tests kill signer processes and stop PostgreSQL cleanly, never
                # crash it, so its own fsync buys nothing there.
                f.write("fsync = off\nfull_page_writes = off\n")
        self.pg_ctl("start")
        return self

    def pg_ctl(self, action: str) -> None:
        """start | stop (fast) | restart, waiting until done."""
        args = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60"]
        if action in ("start", "restart"):
            args += ["-l", str(self.root / "server.log")]
        if action in ("stop", "restart"):
            args += ["-m", "fast"]
        self._run(*args, action)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(dbname), password=self.password, autocommit=True)

    def database(self, prefix: str = "env") -> str:
        """A new empty database; returns its URL."""
        self._count += 1
        name = f"{prefix}_{os.getpid()}_{self._count}_{secrets.token_hex(3)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def wait_ready(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                with self.connect():
                    return
            except psycopg.OperationalError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.pg_ctl("stop")
        shutil.rmtree(self.root, ignore_errors=True)
