"""In-memory stand-ins for the core's ports: a fake token, a fake clock, a test world.

`FakeToken` implements the core's `DigestSigner` with real `cryptography` EC
P-256 keys held in memory (so signatures verify like the token's), and can be
told to fail (`TokenError`) or to "crash" the process mid-signing. `make_world`
builds a real `Core` over a real store (a SQLite file, or a PostgreSQL database) with
the `release` key under a 2-of-3 policy, in-memory Ed25519 approver keys, an
injectable clock and (unless turned off) an audit `Checkpointer` whose Ed25519
key lives in memory, so every transaction that appends entries ends with a
signed checkpoint as in the real server. The PKCS#11 module is never loaded here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, utils

from signer.algorithms import ALGORITHMS, KeyAlgorithm
from signer.approval.ed25519 import Ed25519Signer
from signer.approval.keys import ApprovalSigner
from signer.audit.checkpoint import Checkpointer
from signer.audit.entry import AuditEntry
from signer.audit.note import Verifier
from signer.core.intake import LIMITS, Limits
from signer.core.machine import Core
from signer.core.policy import KeyPolicy
from signer.dsse import Statement, sign_statement
from signer.encoding import canonical_json
from signer.errors import KeyNotFoundError, TokenError
from signer.model import Digest, KeySpec, Request, State
from signer.store import Store
from testbed.env import Db

__all__ = [
    "AUDIT_ORIGIN",
    "OFFICERS",
    "START",
    "FakeClock",
    "FakeToken",
    "SimulatedCrash",
    "World",
    "ec_key_spec",
    "make_envelope",
    "make_world",
    "memory_checkpointer",
    "sha256_digest",
]

START = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
OFFICERS = ("alice", "bob", "carol", "dave")  # dave has a key but is in no policy
AUDIT_ORIGIN = "test/log"
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class SimulatedCrash(BaseException):
    """The process "dies" inside the token call: nothing after it runs."""


class FakeClock:
    """A clock the test moves by hand; `Core(clock=...)` calls it."""

    def __init__(self, now: dt.datetime = START) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> dt.datetime:
        self.now += delta
        return self.now


@dataclass
class FakeToken:
    """The core's `DigestSigner` with EC keys in memory (ECDSA over the digest, DER)."""

    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    fail: bool = False
    crash: bool = False
    calls: list[tuple[str, str, bytes]] = field(default_factory=list)
    on_sign: Callable[[str, str, bytes], None] | None = None

    def add_key(self, name: str, curve: ec.EllipticCurve | None = None) -> KeySpec:
        key = ec.generate_private_key(curve or ec.SECP256R1())
        self.keys[name] = key
        return ec_key_spec(name, key.public_key())

    def public_key(self, name: str) -> ec.EllipticCurvePublicKey:
        return self.keys[name].public_key()

    def sign_digest(
        self, name: str, algorithm: KeyAlgorithm, hash_name: str, digest: bytes
    ) -> bytes:
        if self.on_sign is not None:
            self.on_sign(name, hash_name, digest)
        if self.fail:
            raise TokenError("the fake token is unplugged", reason="TOKEN_UNAVAILABLE")
        if self.crash:
            raise SimulatedCrash(name)
        if name not in self.keys:
            raise KeyNotFoundError(f"no key {name!r} in the fake token")
        self.calls.append((name, hash_name, digest))
        return self.keys[name].sign(digest, ec.ECDSA(utils.Prehashed(_HASHES[hash_name]())))

    def sign_digests(
        self, name: str, algorithm: KeyAlgorithm, digests: Sequence[tuple[str, bytes]]
    ) -> list[bytes]:
        return [self.sign_digest(name, algorithm, h, d) for h, d in digests]


def ec_key_spec(name: str, public_key: ec.EllipticCurvePublicKey) -> KeySpec:
    """A KeySpec as start-up builds it: key id = SHA-256 of the SPKI DER, hex."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    curve = "ecdsa-p384" if isinstance(public_key.curve, ec.SECP384R1) else "ecdsa-p256"
    return KeySpec(name, ALGORITHMS[curve], hashlib.sha256(der).hexdigest(), pem)


def memory_checkpointer(origin: str = AUDIT_ORIGIN) -> Checkpointer:
    """A Checkpointer signing with a fresh Ed25519 key held in memory (the token's audit key)."""
    key = ed25519.Ed25519PrivateKey.generate()
    return Checkpointer(origin, key.public_key(), key.sign)


def sha256_digest(data: bytes, artifact: str = "artifact.bin") -> Digest:
    return Digest("sha256", hashlib.sha256(data).digest(), artifact)


def make_envelope(
    private_key: ApprovalSigner,
    request: Request,
    approver: str,
    issued_at: dt.datetime,
    /,
    *,
    decision: str = "approve",
    reason: str = "",
    **overrides: Any,
) -> bytes:
    """A DSSE approval envelope for `request`; `overrides` replace statement fields."""
    statement = Statement.for_request(request, decision, approver, issued_at, reason)
    return sign_statement(dataclasses.replace(statement, **overrides), private_key)


@dataclass
class World:
    """A Core over a real store (SQLite or PostgreSQL), every collaborator in reach."""

    db: Db
    token: FakeToken
    clock: FakeClock
    officers: dict[str, ApprovalSigner]
    keys: dict[str, KeySpec]
    policies: dict[str, KeyPolicy]
    limits: Limits
    checkpointer: Checkpointer | None = None
    store: Store = field(init=False)
    core: Core = field(init=False)

    def __post_init__(self) -> None:
        self.store = self.db.open()
        self.core = self._core()

    def _core(self) -> Core:
        return Core(
            self.store,
            self.token,
            self.keys,
            self.policies,
            {n: k.public_key() for n, k in self.officers.items()},
            clock=self.clock,
            limits=self.limits,
            checkpointer=self.checkpointer,
        )

    @property
    def policy(self) -> KeyPolicy:
        return self.policies["release"]

    @property
    def verifier(self) -> Verifier:
        """What an auditor pins to open this world's checkpoints."""
        assert self.checkpointer is not None, "this world was made with checkpoints=False"
        return self.checkpointer.verifier

    def restart(self) -> Core:
        """Close the store and build a new Core over the same file (no recover())."""
        self.store.close()
        self.store = self.db.open()
        self.core = self._core()
        return self.core

    def close(self) -> None:
        self.store.close()

    def record_policy(self) -> None:
        """Record the policy in force as `signer serve` does at start-up (for `audit verify`)."""
        document = {
            "keys": {n: p.as_dict() for n, p in self.policies.items()},
            "approver_keys": {n: k.public_key().policy_value() for n, k in self.officers.items()},
        }
        digest = hashlib.sha256(canonical_json(document)).hexdigest()
        self.core.record("server.started", "signer", {"policy": document, "policy_hash": digest})

    # -- flows -------------------------------------------------------------------------

    def create(
        self,
        who: str = "ci",
        digests: list[Digest] | None = None,
        *,
        key: str = "release",
        context: dict[str, str] | None = None,
        ttl: dt.timedelta | None = None,
        idempotency_key: str = "",
    ) -> Request:
        return self.core.create(
            who,
            key,
            digests if digests is not None else [sha256_digest(b"build 1")],
            context if context is not None else {"repository": "org/app", "commit": "abc123"},
            ttl,
            idempotency_key,
        )

    def envelope(
        self,
        officer: str,
        request: Request,
        *,
        decision: str = "approve",
        reason: str = "",
        signer: str | None = None,
        issued_at: dt.datetime | None = None,
        **overrides: Any,
    ) -> bytes:
        """`officer`'s statement for `request`, signed with `signer`'s key (default: own)."""
        return make_envelope(
            self.officers[signer or officer],
            request,
            officer,
            issued_at or self.clock(),
            decision=decision,
            reason=reason,
            **overrides,
        )

    def approve(self, officer: str, request: Request, **kw: Any) -> Request:
        return self.core.decide(
            officer, request.id, self.envelope(officer, request, **kw), "approve"
        )

    def deny(self, officer: str, request: Request, reason: str = "no", **kw: Any) -> Request:
        env = self.envelope(officer, request, decision="deny", reason=reason, **kw)
        return self.core.decide(officer, request.id, env, "deny")

    def slow_signing(self, monkeypatch: pytest.MonkeyPatch, takes: dt.timedelta) -> None:
        """From now on the token takes `takes` on the fake clock to sign."""
        signing = self.token.sign_digests

        def slow(*args: Any, **kw: Any) -> list[bytes]:
            self.clock.advance(takes)
            return signing(*args, **kw)

        monkeypatch.setattr(self.token, "sign_digests", slow)

    # -- reading -----------------------------------------------------------------------

    def get(self, request_id: str) -> Request:
        with self.store.transaction() as tx:
            r = tx.get_request(request_id)
        assert r is not None, request_id
        return r

    def requests(self) -> list[Request]:
        with self.store.transaction() as tx:
            return [r for _, r in tx.list_requests(frozenset(), None, -1, 100_000)]

    def audit(self) -> list[AuditEntry]:
        return list(self.store.audit_entries())

    def events(self, request_id: str) -> list[str]:
        return [e.event for e in self.audit() if e.request_id == request_id]

    def count(self, state: State) -> int:
        return sum(r.state is state for r in self.requests())


def make_world(
    directory: Path,
    *,
    db: Db | None = None,
    threshold: int = 2,
    max_ttl: dt.timedelta = dt.timedelta(hours=1),
    limits: Limits = LIMITS,
    clock: FakeClock | None = None,
    checkpoints: bool = True,
) -> World:
    """`release` (ecdsa-p256), 2-of-3 alice/bob/carol, requesters ci and carol.

    With `checkpoints` (the default) the Core signs a checkpoint at the end of
    every transaction that appends entries, as the server does.
    """
    token = FakeToken()
    spec = token.add_key("release")
    policy = KeyPolicy(
        "release",
        ALGORITHMS["ecdsa-p256"],
        ("alice", "bob", "carol"),
        threshold,
        ("ci", "carol"),
        max_ttl,
    )
    return World(
        db=db or Db(f"sqlite:///{directory / 'signer.db'}"),
        token=token,
        clock=clock or FakeClock(),
        officers={n: Ed25519Signer.generate() for n in OFFICERS},
        keys={"release": spec},
        policies={"release": policy},
        limits=limits,
        checkpointer=memory_checkpointer() if checkpoints else None,
    )
