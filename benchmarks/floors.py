"""The physical floors the benchmark suite sets every path against, each measured alone.

- `TokenFloor`: signatures per second from a tight in-process python-pkcs11
  loop on the same token and keys as the server's (C_Sign alone: no lock, no
  encoding);
- `floor_rpc`: one empty unary RPC over mTLS on 127.0.0.1, to a generic method
  served by another Python process with the same certificates
  (benchmarks/_echo.py);
- `floor_ed25519_verify`: one Ed25519 verification of an approval-sized message;
- `floor_commit`: one durable SQLite commit (WAL, synchronous=FULL) of a small row.

This is the one place outside `signer/token/` that imports pkcs11: the floor is
by definition the bare library loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pkcs11
from cryptography.hazmat.primitives.asymmetric import ed25519
from pkcs11 import MGF, Mechanism, ObjectClass

from signer.dsse import pae
from signer.server.config import load_config
from testbed.env import Env

__all__ = [
    "FLOOR_COUNTS",
    "KEYS",
    "TokenFloor",
    "floor_commit",
    "floor_ed25519_verify",
    "floor_rpc",
]

KEYS = {"ecdsa-p256": "release", "rsa-pss-3072": "pss"}
_PSS = (Mechanism.SHA256, MGF.SHA256, 32)


def _best_rate(n: int, fn: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def _mean_seconds(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


class TokenFloor:
    """A bare python-pkcs11 loop on the same token and keys as the server's."""

    def __init__(self, env: Env) -> None:
        cfg = load_config(env.config)
        cfg.token.apply_environment()
        token = pkcs11.lib(cfg.token.module).get_token(token_label=cfg.token.label)
        self._session = token.open(user_pin=cfg.token.read_pin())
        digest = hashlib.sha256(b"floor").digest()
        note = b"signer-dev/audit\n123456\n" + os.urandom(32).hex().encode() + b"\n"

        def key(label: str) -> Any:
            return self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)

        ecdsa, pss, audit = key(KEYS["ecdsa-p256"]), key(KEYS["rsa-pss-3072"]), key(cfg.audit_key)
        self._sign: dict[str, Callable[[], object]] = {
            "ecdsa-p256": lambda: ecdsa.sign(digest, mechanism=Mechanism.ECDSA),
            "rsa-pss-3072": lambda: pss.sign(
                digest, mechanism=Mechanism.RSA_PKCS_PSS, mechanism_param=_PSS
            ),
            "ed25519": lambda: audit.sign(note, mechanism=Mechanism.EDDSA),
        }

    def rate(self, algorithm: str, n: int, runs: int = 3) -> float:
        """Signatures per second, the best of `runs` loops of `n`."""
        return _best_rate(n, self._sign[algorithm], runs)

    def close(self) -> None:
        self._session.close()


FLOOR_COUNTS = {"ecdsa-p256": 2000, "rsa-pss-3072": 150, "ed25519": 5000}


@contextlib.contextmanager
def _echo_server(env: Env) -> Iterator[int]:
    cfg = load_config(env.config)
    args = [str(p) for p in (cfg.server.tls_cert, cfg.server.tls_key, cfg.server.client_ca)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._echo", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def floor_rpc(env: Env) -> float:
    """Seconds for one empty unary RPC over mTLS on 127.0.0.1 (client and server in Python)."""
    p = env.profile("ci")
    assert p.cert is not None and p.key is not None
    creds = grpc.ssl_channel_credentials(p.ca.read_bytes(), p.key.read_bytes(), p.cert.read_bytes())
    with _echo_server(env) as port, grpc.secure_channel(f"localhost:{port}", creds) as ch:
        call = ch.unary_unary("/bench.v1.EchoService/Empty")
        for _ in range(200):  # handshake, warm-up
            call(b"", timeout=10)
        return min(_mean_seconds(1000, lambda: call(b"", timeout=10)) for _ in range(3))


def floor_ed25519_verify() -> float:
    key = ed25519.Ed25519PrivateKey.generate()
    message = pae("application/vnd.signer.approval.v1+json", os.urandom(400))
    sig, public = key.sign(message), key.public_key()
    return min(_mean_seconds(3000, lambda: public.verify(sig, message)) for _ in range(3))


def floor_commit(directory: Path) -> float:
    """Seconds for one durable SQLite commit (WAL, synchronous=FULL) of one small row."""
    with contextlib.closing(sqlite3.connect(directory / "floor.db", isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS t (x BLOB)")
        row = os.urandom(600)

        def commit() -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (row,))
            db.execute("COMMIT")

        return min(_mean_seconds(300, commit) for _ in range(3))
