"""The audit benchmark's log and collaborators: request lifecycles, an in-memory audit key.

`lifecycle_entries()` yields, forever, the five entries of one request's life
after another (created, approved twice with a DSSE-envelope-sized string,
quorum, signed), about 625 bytes each; `make_core` is the real `Core` over a
store with checkpoints signed by an Ed25519 key held in memory and a token that
is never asked to sign; `Counting` counts the stored tree nodes a proof reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import KeyAlgorithm
from signer.audit import merkle
from signer.audit.checkpoint import Checkpointer
from signer.core.machine import Core
from signer.store.sqlite import SqliteStore

__all__ = ["ORIGIN", "Counting", "lifecycle_entries", "make_checkpointer", "make_core"]

ORIGIN = "bench/log"


# -- the log's content -------------------------------------------------------------------


def _request_id(n: int) -> str:
    return f"{n & 0xFFFFFFFF:08x}-0000-4000-8000-{n:012x}"


def _envelope(rid: str, officer: str) -> str:
    """A string the size and shape of a DSSE approval envelope (about 700 bytes)."""
    seed = hashlib.sha256(f"{rid}/{officer}".encode()).digest()
    payload = base64.b64encode(seed * 12).decode()
    sig = base64.b64encode(seed * 2).decode()
    return json.dumps(
        {
            "payload": payload,
            "payloadType": "application/vnd.signer.approval.v1+json",
            "signatures": [{"keyid": seed.hex(), "sig": sig}],
        }
    )


def _lifecycle(n: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    """The five entries of request n: (event, actor, request id, details)."""
    rid = _request_id(n)
    digest = hashlib.sha256(rid.encode()).hexdigest()
    key_id = "cf28e3b218df42344bc06ffcd2bb838e4e7c6d4880beb635313fa32d03fde2ee"
    return [
        (
            "request.created",
            "ci",
            rid,
            {
                "algorithm": "ecdsa-p256",
                "approvers": ["alice", "bob", "carol"],
                "context": {"repository": "org/app", "commit": digest[:12]},
                "digests": [{"algorithm": "sha256", "artifact": "app.tar", "digest": digest}],
                "expire_time": "2026-01-01T01:00:00.000000Z",
                "idempotency_key": "",
                "key_id": key_id,
                "key_name": "release",
                "requester": "ci",
                "threshold": 2,
            },
        ),
        *(
            (
                "request.approved",
                officer,
                rid,
                {"approver": officer, "envelope": _envelope(rid, officer)},
            )
            for officer in ("alice", "bob")
        ),
        ("request.quorum", "bob", rid, {"approvers": ["alice", "bob"], "threshold": 2}),
        (
            "request.signed",
            "signer",
            rid,
            {
                "approvers": ["alice", "bob"],
                "key_id": key_id,
                "signature_sha256": [hashlib.sha256(digest.encode()).hexdigest()],
            },
        ),
    ]


def lifecycle_entries() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    n = 0
    while True:
        yield from _lifecycle(n)
        n += 1


# -- collaborators -------------------------------------------------------------------------


class _NoToken:
    """The core's DigestSigner; the benchmark never signs a digest."""

    def sign_digests(
        self, name: str, algorithm: KeyAlgorithm, digests: Sequence[tuple[str, bytes]]
    ) -> list[bytes]:
        raise RuntimeError("the audit benchmark signs no digests")


class Counting:
    """A NodeSource that counts the stored nodes read through it."""

    def __init__(self, src: merkle.NodeSource) -> None:
        self.src = src
        self.reads = 0

    def perfect(self, level: int, index: int) -> bytes:
        self.reads += 1
        return self.src.perfect(level, index)


def make_checkpointer() -> Checkpointer:
    key = ed25519.Ed25519PrivateKey.generate()
    return Checkpointer(ORIGIN, key.public_key(), key.sign)


def make_core(store: SqliteStore, checkpointer: Checkpointer) -> Core:
    return Core(store, _NoToken(), {}, {}, {}, checkpointer=checkpointer)
