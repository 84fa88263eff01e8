"""Test harness: real dev environments, real `signer serve` processes, real mTLS clients.

Servers run as subprocesses (so they can be killed with SIGKILL and so each
has its own PKCS#11 module instance: a module is initialised once per process
with one SOFTHSM2_CONF). Every network call goes to 127.0.0.1 with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import tomli_w
from grpc_health.v1 import health_pb2, health_pb2_grpc

from signer.approval_keys import generate as generate_approval_key
from signer.approval_keys import load_private
from signer.audit import merkle
from signer.audit.note import open_checkpoint
from signer.client import Profile, RemoteError, load_profile, remote_error
from signer.config import StoreConfig
from signer.dsse import Statement, sign_statement
from signer.model import Digest
from signer.store import Store
from signer.store.factory import open_store
from signer.tls import DevCA, write_private
from signer.v1 import (
    approval_pb2,
    approval_pb2_grpc,
    audit_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
    types_pb2,
)

SIGNER = [sys.executable, "-m", "signer"]
APPROVER = [sys.executable, "-m", "approver.cli"]
DIGEST_ALGORITHMS = ("ecdsa-p256", "ecdsa-p384", "rsa-pss-3072", "rsa-pss-4096", "rsa-pkcs1-3072")
RPC_TIMEOUT = 20.0


def sign_in_background(
    env: Env, artifact: Path, *extra: str, who: str = "ci"
) -> tuple[subprocess.Popen[str], str]:
    """Start `signer sign --file ARTIFACT` waiting for the decision; return it and the id."""
    proc = subprocess.Popen(
        [
            *SIGNER,
            "sign",
            "--profile",
            str(env.profile_path(who)),
            "--key-name",
            "release",
            "--file",
            str(artifact),
            "--timeout",
            "60s",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    args: list[str],
    *,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a bounded time; on unexpected failure show its output."""
    p = subprocess.run(
        args,
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"{args} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
        )
    return p


@dataclass(frozen=True)
class Db:
    """Where a test's store lives: a SQLite file, or a PostgreSQL database (with password)."""

    url: str  # sqlite:///ABSOLUTE-PATH or postgresql://...
    password_file: Path | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite:") else "postgresql"

    def open(self) -> Store:
        """The product's own store over this database (runs its migrations)."""
        return open_store(
            StoreConfig(self.url, path=self.sqlite_path, password_file=self.password_file)
        )

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url.removeprefix("sqlite:///")) if self.backend == "sqlite" else None

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run raw SQL outside the product (`?` marks a parameter); commit; return rows."""
        if self.sqlite_path is not None:
            with contextlib.closing(sqlite3.connect(self.sqlite_path, isolation_level=None)) as db:
                return db.execute(sql, args).fetchall()
        query = sql.replace("?", "%s").encode()
        try:
            cur = self._pg().execute(query, args or None)
        except psycopg.OperationalError:  # the server restarted: connect again, once
            _PG_CONNECTIONS.pop(self.url, None)
            cur = self._pg().execute(query, args or None)
        return cur.fetchall() if cur.description else []

    def _pg(self) -> psycopg.Connection[Any]:
        conn = _PG_CONNECTIONS.get(self.url)
        if conn is None or conn.closed:
            assert self.password_file is not None
            password = self.password_file.read_text().strip()
            conn = psycopg.connect(self.url, password=password, autocommit=True)
            _PG_CONNECTIONS[self.url] = conn
        return conn


# One autocommit connection per test database, reused by `Db.rows` (connecting per query
# would dominate the property tests' run time).
_PG_CONNECTIONS: dict[str, psycopg.Connection[Any]] = {}


SQLITE_DB = "sqlite:///signer.db"


@dataclass
class Env:
    """One `signer init` directory, with extra identities for the tests."""

    root: Path
    port: int
    store: Db = field(default_factory=lambda: Db(SQLITE_DB))
    name: str = "signer"  # a replica's own config and profiles: signer-r1.toml, profiles-r1/

    def __post_init__(self) -> None:
        if self.store.url == SQLITE_DB:
            self.store = Db(f"sqlite:///{self.root / 'signer.db'}")

    @property
    def config(self) -> Path:
        return self.root / f"{self.name}.toml"

    def replica(self, number: int) -> Env:
        """Another server of this env on its own port: same token, store and policy.

        Writes signer-rN.toml (only `listen` differs) and profiles-rN/ (profiles
        pointing at that port), so `ServerProcess` and `Clients` work on it as is.
        """
        port = free_port()
        replica = Env(self.root, port, self.store, f"signer-r{number}")
        cfg = self.read_config()
        cfg["server"]["listen"] = f"127.0.0.1:{port}"
        replica.write_config(cfg)
        replica.profiles_dir.mkdir(exist_ok=True)
        for profile in self.profiles_dir.glob("*.toml"):
            text = profile.read_text().replace(f"127.0.0.1:{self.port}", f"127.0.0.1:{port}")
            (replica.profiles_dir / profile.name).write_text(text)
        return replica

    @property
    def profiles_dir(self) -> Path:
        return self.root / ("profiles" if self.name == "signer" else f"profiles-{self.name[7:]}")

    @property
    def db(self) -> Path:
        return self.root / "signer.db"

    def profile_path(self, name: str) -> Path:
        return self.profiles_dir / f"{name}.toml"

    def profile(self, name: str) -> Profile:
        return load_profile(self.profile_path(name))

    def read_config(self) -> dict[str, Any]:
        return tomllib.loads(self.config.read_text())

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.config.write_text(tomli_w.dumps(cfg))

    def ca(self) -> DevCA:
        return DevCA.load(
            (self.root / "tls" / "ca.pem").read_bytes(), (self.root / "tls" / "ca.key").read_bytes()
        )

    def add_client(
        self, name: str, roles: list[str], *, approval_key: bool = False, ca: DevCA | None = None
    ) -> Path:
        """Issue a certificate (from this env's CA unless `ca`), write a profile, add roles."""
        cert, key = (ca or self.ca()).issue(name)
        (self.root / "tls" / f"{name}.pem").write_bytes(cert)
        write_private(self.root / "tls" / f"{name}.key", key)
        lines = [
            f'server = "127.0.0.1:{self.port}"',
            'ca = "../tls/ca.pem"',
            f'cert = "../tls/{name}.pem"',
            f'key = "../tls/{name}.key"',
            f'audit_verifier = "{self.profile("ci").audit_verifier}"',
        ]
        cfg = self.read_config()
        if roles:
            cfg["identities"][name] = roles
        if approval_key:
            generate_approval_key(self.root / "approvers" / f"{name}.key")
            lines.append(f'approval_key = "../approvers/{name}.key"')
            cfg["approvers"][name] = f"approvers/{name}.key.pub"
        self.write_config(cfg)
        path = self.profile_path(name)
        path.write_text("\n".join(lines) + "\n")
        return path

    def add_key(self, name: str, algorithm: str, **policy: Any) -> None:
        """Generate a key in the token and give it a 2-of-3 policy (overridable)."""
        run(
            [
                *SIGNER,
                "keys",
                "generate",
                "--config",
                str(self.config),
                "--name",
                name,
                "--algorithm",
                algorithm,
            ]
        )
        cfg = self.read_config()
        cfg["keys"][name] = {
            "algorithm": algorithm,
            "approvers": ["alice", "bob", "carol"],
            "threshold": 2,
            "requesters": ["ci"],
            "max_ttl": "1h",
            **policy,
        }
        self.write_config(cfg)

    def approval_key(self, officer: str) -> Any:
        return load_private(self.root / "approvers" / f"{officer}.key", None)


def make_env(root: Path, db: Db | None = None) -> Env:
    """`signer init` in `root`, with its store in `db` (default: signer.db in `root`)."""
    port = free_port()
    store: list[str] = []
    if db is not None:
        store = ["--store-url", db.url]
        if db.password_file is not None:
            store += ["--store-password-file", str(db.password_file)]
    run([*SIGNER, "init", str(root), "--listen", f"127.0.0.1:{port}", *store])
    return Env(root, port, db or Db(SQLITE_DB))


@dataclass
class ServerProcess:
    env: Env
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.env.root / (
            "server.log" if self.env.name == "signer" else f"{self.env.name}.log"
        )

    def start(self, timeout: float = 60) -> ServerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*SIGNER, "serve", "--config", str(self.env.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            if self.healthy():
                return self
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"server did not become healthy:\n{self.output()}")

    def healthy(self) -> bool:
        with self.env.profile("admin").channel() as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def logged(self, event: str, **fields: str) -> bool:
        """Whether the server has logged `event` with these fields (its JSON log lines)."""
        for line in self.output().splitlines():
            if not all(v in line for v in fields.values()):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # the CLI's own console lines
            if (
                isinstance(entry, dict)
                and entry.get("event") == event
                and all(entry.get(k) == v for k, v in fields.items())
            ):
                return True
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no clean-up runs in the server."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.proc = None


class Clients:
    """Stubs per identity over real mTLS, with channels reused and closed at the end."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self._channels: dict[str, grpc.Channel] = {}

    def channel(self, name: str) -> grpc.Channel:
        if name not in self._channels:
            self._channels[name] = self.env.profile(name).channel()
        return self._channels[name]

    def signing(self, name: str = "ci") -> signing_pb2_grpc.SigningServiceStub:
        return signing_pb2_grpc.SigningServiceStub(self.channel(name))

    def approval(self, name: str) -> approval_pb2_grpc.ApprovalServiceStub:
        return approval_pb2_grpc.ApprovalServiceStub(self.channel(name))

    def audit(self, name: str = "auditor") -> audit_pb2_grpc.AuditServiceStub:
        return audit_pb2_grpc.AuditServiceStub(self.channel(name))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    # -- flows --------------------------------------------------------------

    def create(
        self,
        *,
        key: str = "release",
        digests: list[types_pb2.Digest] | None = None,
        who: str = "ci",
        **fields: Any,
    ) -> types_pb2.SigningRequest:
        req = signing_pb2.CreateSigningRequestRequest(
            key_name=key, digests=digests or [sha256_digest(os.urandom(16))], **fields
        )
        resp = self.signing(who).CreateSigningRequest(req, timeout=RPC_TIMEOUT)
        return resp.request

    def envelope(
        self,
        officer: str,
        request: types_pb2.SigningRequest,
        *,
        decision: str = "approve",
        reason: str = "",
        signer: str | None = None,
        **overrides: Any,
    ) -> bytes:
        """A DSSE approval for `request` by `officer`, signed with `signer`'s key.

        `overrides` replace statement fields (request_id, key_name, key_id, digests,
        approver, issued_at, decision) to build bad approvals.
        """
        fields: dict[str, Any] = {
            "request_id": request.id,
            "key_name": request.key_name,
            "key_id": request.key_id,
            **Statement.binding(
                tuple(
                    Digest(_HASH_NAMES[d.algorithm], d.value, d.artifact_name)
                    for d in request.digests
                )
            ),
            "decision": decision,
            "approver": officer,
            "issued_at": dt.datetime.now(dt.UTC),
            "reason": reason,
        }
        fields.update(overrides)
        return sign_statement(Statement(**fields), self.env.approval_key(signer or officer))

    def approve(
        self, officer: str, request: types_pb2.SigningRequest, **kw: Any
    ) -> types_pb2.SigningRequest:
        env = self.envelope(officer, request, **kw)
        return (
            self.approval(officer)
            .Approve(approval_pb2.ApproveRequest(id=request.id, envelope=env), timeout=RPC_TIMEOUT)
            .request
        )

    def deny(
        self, officer: str, request: types_pb2.SigningRequest, reason: str = "no", **kw: Any
    ) -> types_pb2.SigningRequest:
        env = self.envelope(officer, request, decision="deny", reason=reason, **kw)
        return (
            self.approval(officer)
            .Deny(approval_pb2.DenyRequest(id=request.id, envelope=env), timeout=RPC_TIMEOUT)
            .request
        )

    def get(self, request_id: str, who: str = "ci") -> types_pb2.SigningRequest:
        return (
            self.signing(who)
            .GetSigningRequest(
                signing_pb2.GetSigningRequestRequest(id=request_id), timeout=RPC_TIMEOUT
            )
            .request
        )


_HASH_NAMES = {
    types_pb2.HASH_ALGORITHM_SHA256: "sha256",
    types_pb2.HASH_ALGORITHM_SHA384: "sha384",
    types_pb2.HASH_ALGORITHM_SHA512: "sha512",
}


def sha256_digest(data: bytes, artifact: str = "artifact.bin") -> types_pb2.Digest:
    return types_pb2.Digest(
        algorithm=types_pb2.HASH_ALGORITHM_SHA256,
        value=hashlib.sha256(data).digest(),
        artifact_name=artifact,
    )


def rpc_error(fn: Callable[[], Any]) -> RemoteError:
    """Call `fn`, which must fail; return the failure with its code and reason."""
    try:
        fn()
    except grpc.RpcError as e:
        return remote_error(e)
    raise AssertionError("the call succeeded but was expected to fail")


def audit_events(env: Env) -> list[dict[str, Any]]:
    """Every audit entry, read straight from the database."""
    return [
        json.loads(bytes(e)) for (e,) in env.store.rows("SELECT entry FROM audit_log ORDER BY idx")
    ]


def checkpoints_match_the_log(env: Env) -> int:
    """Every stored checkpoint is signed and commits to the prefix of the one log."""
    verifier = env.profile("ci").audit_verifier
    assert verifier is not None
    entries = [bytes(e) for (e,) in env.store.rows("SELECT entry FROM audit_log ORDER BY idx")]
    tree = merkle.MemoryTree()
    roots = [b""]
    for e in entries:
        tree.append(merkle.leaf_hash(e))
        roots.append(merkle.root(tree, tree.size))
    notes = env.store.rows("SELECT size, note FROM checkpoints ORDER BY size")
    for size, note in notes:
        cp = open_checkpoint(note, verifier)
        assert (cp.size, cp.root) == (size, roots[size]), f"checkpoint {size} is off the log"
    return len(notes)


def wait_until(predicate: Callable[[], bool], timeout: float = 15, step: float = 0.1) -> None:
    """Poll `predicate` until it holds; fail once `timeout` seconds pass without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError("condition not met in time")


def kill_mid_burst(
    server: ServerProcess, bursts: Sequence[Sequence[Callable[[], object]]], each: int
) -> list[int]:
    """Run each list of calls in a thread of its own; kill -9 `server` mid-burst.

    The kill comes once every thread has had `each` calls return (so each kind of
    call is under way), and each thread's last call is sent only after the kill (so
    the burst cannot end before it): the kill provably lands inside the burst. A
    call that fails (raises grpc.RpcError) ends its thread. Returns, per thread,
    how many calls returned.
    """
    killed = threading.Event()
    done = [0] * len(bursts)

    def run(t: int) -> None:
        for i, call in enumerate(bursts[t]):
            if i == len(bursts[t]) - 1:
                killed.wait()
            try:
                call()
            except grpc.RpcError:
                return
            done[t] += 1

    workers = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(len(bursts))]
    for w in workers:
        w.start()
    try:
        wait_until(
            lambda: all(n >= each or not w.is_alive() for n, w in zip(done, workers, strict=True)),
            timeout=120,
            step=0.01,
        )
        at_kill = list(done)
    finally:
        server.kill()
        killed.set()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers), "a burst thread is still running"
    assert all(n >= each for n in at_kill), f"a burst thread stopped before the kill: {at_kill}"
    return done


@dataclass
class Running:
    env: Env
    server: ServerProcess
    clients: Clients


def running(env: Env) -> Iterator[Running]:
    server = ServerProcess(env).start()
    clients = Clients(env)
    try:
        yield Running(env, server, clients)
    finally:
        clients.close()
        server.stop()
