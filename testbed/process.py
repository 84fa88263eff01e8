"""A real `signer serve` process on a dev environment, and a server with its clients.

Servers run as subprocesses (so they can be killed with SIGKILL and so each
has its own PKCS#11 module instance: a module is initialised once per process
with one SOFTHSM2_CONF), in a session of their own, logging to a file in the
env. `start` returns once the gRPC health check says SERVING, and fails with
the server's output if it exits or never gets there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testbed.clients import Clients
from testbed.commands import SIGNER
from testbed.env import Env

__all__ = ["Running", "ServerProcess", "running"]


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
        self.env.adopt_policy()  # what add_key and add_client left (nothing if in force)
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


@dataclass
class Running:
    """A dev environment with its server up and clients to call it."""

    env: Env
    server: ServerProcess
    clients: Clients


def running(env: Env) -> Iterator[Running]:
    """Start `env`'s server and clients; stop both when the generator is closed."""
    server = ServerProcess(env).start()
    clients = Clients(env)
    try:
        yield Running(env, server, clients)
    finally:
        clients.close()
        server.stop()


serving = contextlib.contextmanager(running)  # `with serving(env) as r:`
