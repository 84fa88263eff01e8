"""Domain records: signing requests, digests, approvals (docs/architecture.md §4).

Plain frozen dataclasses; no gRPC, SQL or PKCS#11 here.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from signer.algorithms import KeyAlgorithm
from signer.encoding import canonical_json

__all__ = ["TERMINAL", "Approval", "Digest", "Request", "State", "TokenCaller", "may_decide"]


class State(enum.StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    SIGNED = "SIGNED"
    DENIED = "DENIED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"


TERMINAL = frozenset({State.SIGNED, State.DENIED, State.EXPIRED, State.CANCELLED, State.FAILED})


@dataclass(frozen=True)
class KeySpec:
    """A signing key as loaded and checked at start-up."""

    name: str
    algorithm: KeyAlgorithm
    key_id: str
    public_key_pem: str
    openpgp_created: int | None = None  # the OpenPGP creation time kept in the token
    label: str = ""  # its CKA_LABEL: the name, or name@N once rotated; "": the name

    @property
    def token_label(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Digest:
    algorithm: str  # sha256 | sha384 | sha512
    value: bytes
    artifact: str

    def as_dict(self) -> dict[str, str]:
        """The form bound by approval statements and audit entries."""
        return {"algorithm": self.algorithm, "digest": self.value.hex(), "artifact": self.artifact}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Digest:
        return cls(d["algorithm"], bytes.fromhex(d["digest"]), d["artifact"])


# Up to this many digests an approval lists them; above, it binds their manifest.
INLINE_DIGESTS = 16


@dataclass(frozen=True)
class Manifest:
    """What an approval of a batch binds: the count and SHA-256 of the canonical JSON
    list of the request's digests (each `Digest.as_dict()`, in request order)."""

    count: int
    sha256: str  # hex

    @classmethod
    def of(cls, digests: Sequence[Digest]) -> Manifest:
        key = id(digests)
        with _BY_IDENTITY_LOCK:
            known = _BY_IDENTITY.get(key)
        if known is not None and known[0] is digests:
            return known[1]  # the same stored batch, read again (see store.sql._digests)
        listing = canonical_json([d.as_dict() for d in digests])
        manifest = cls(len(digests), hashlib.sha256(listing).hexdigest())
        if isinstance(digests, tuple) and len(digests) <= _HELD_DIGESTS // 2:
            with _BY_IDENTITY_LOCK:
                _BY_IDENTITY[key] = (digests, manifest)  # holds the tuple: its id stays its own
                held = sum(len(d) for d, _ in _BY_IDENTITY.values())
                while len(_BY_IDENTITY) > 32 or held > _HELD_DIGESTS:
                    held -= len(_BY_IDENTITY.pop(next(iter(_BY_IDENTITY)))[0])
        return manifest

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sha256": self.sha256}


# Each quorum check binds the same stored batch again: its listing is hashed once. The
# batches held are bounded by count and by digests (each up to an artifact name's size).
_HELD_DIGESTS = 20_000
_BY_IDENTITY: dict[int, tuple[tuple[Digest, ...], Manifest]] = {}
_BY_IDENTITY_LOCK = threading.Lock()


@dataclass(frozen=True)
class Approval:
    request_id: str
    approver: str
    decision: str  # approve | deny
    envelope: bytes
    created: dt.datetime
    reason: str = ""


@dataclass(frozen=True)
class TokenCaller:
    """A requester authenticated by a verified OIDC ID token (no client certificate)."""

    issuer: str  # the issuer's name in config
    identity: str  # oidc:ISSUER:VALUE-OF-THE-IDENTITY-CLAIM
    claims: dict[str, str]  # the claims recorded with the request and in the audit log
    actor: str = ""  # who started the pipeline, from the actor claim ("" if absent)
    barred: tuple[str, ...] = ()  # officers who may not approve: the actor, as mapped in config

    def as_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "identity": self.identity,
            "claims": dict(self.claims),
            "actor": self.actor,
            "barred_approvers": list(self.barred),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenCaller:
        return cls(
            d["issuer"], d["identity"], dict(d["claims"]), d["actor"], tuple(d["barred_approvers"])
        )


def may_decide(approver: str, requester: str, barred: Iterable[str]) -> bool:
    """Separation of duties (invariant 2): an officer decides on no request they made,
    nor on one from a pipeline they started (`barred`: its actor, as mapped in config).
    The core and the offline audit verifier both ask this."""
    return approver != requester and approver not in barred


@dataclass(frozen=True)
class Request:
    id: str
    key_name: str
    key_id: str
    algorithm: str
    requester: str
    digests: tuple[Digest, ...]
    context: dict[str, str]
    state: State
    created: dt.datetime
    expires: dt.datetime
    updated: dt.datetime
    status_message: str = ""
    idempotency_key: str = ""
    approvals: tuple[Approval, ...] = field(default=())
    signatures: tuple[bytes, ...] = field(default=())
    caller: TokenCaller | None = None  # set when the requester came with an OIDC token
    payload_type: str = ""  # with `payload`: a DSSE payload whose PAE digest is signed
    payload: bytes = b""
    # why it was unusual when made (signer.core.unusual): then it needs more approvals
    unusual: tuple[str, ...] = ()

    def may_decide(self, approver: str) -> bool:
        """Whether `approver` is neither the requester nor the pipeline's actor."""
        return may_decide(approver, self.requester, self.caller.barred if self.caller else ())

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL
