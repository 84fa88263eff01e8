"""The requester's workflow: create, wait, and verify before handing anything out.

One implementation serves `signer sign`, `signer status` and the
securesystemslib signer (`signer.sslib`). It treats the server as possibly
hostile (docs/architecture.md §14):

- every response must be for what was asked (`Asked`): the request id, the key
  name and, where the caller knows them, the digests (hash, value and artifact,
  in order) and the DSSE payload; anything else raises `ResponseMismatchError`
  before it is used;
- a signature is handed out only after it verifies over the caller's own
  digest, with the public key whose id (hex SHA-256 of its SubjectPublicKeyInfo)
  is the request's key id, and after its `request.signed` audit entry is proven
  to be in a checkpoint signed by the profile's pinned audit verifier;
- polling backs off whatever the server answers: a long poll that comes back
  early and undecided is followed by a pause that grows to `MAX_PAUSE`, so a
  server that always says "not done" gets a bounded number of calls; an
  unavailable server is retried at most once a second;
- a deadline is a deadline: `wait` returns within `SLACK` seconds of its
  timeout, however slowly the server answers, and `create` retries an
  unreachable server for at most `RETRY_BUDGET` seconds. An outage the server
  itself reports (its database is unreachable: STORE_UNAVAILABLE) is not
  retried: the server has already waited for it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from google.protobuf import duration_pb2

from signer.audit.entry import AuditEntry
from signer.audit.proofs import SignedProof, verify_signed_proof
from signer.bounds import clip
from signer.client.profile import Profile, RemoteError, call
from signer.errors import (
    ConfigError,
    PolicyChainError,
    ResponseMismatchError,
    VerificationError,
)
from signer.policy_chain import Version, check_chain, version_of
from signer.v1 import signing_pb2, types_pb2
from signer.verify import verify_digest

__all__ = [
    "MAX_PAUSE",
    "RETRY_BUDGET",
    "SLACK",
    "Asked",
    "Verified",
    "call",
    "check_response",
    "checked_key",
    "create",
    "progress_line",
    "verify_signed",
    "wait",
]

MAX_PAUSE = 5.0  # the longest pause between two undecided polls
_FIRST_PAUSE = 0.2
_EARLY = 0.5  # a poll that returns in under half the time asked came back early
RETRY_BUDGET = 5.0  # seconds `create` spends retrying a server it cannot reach
SLACK = 2.0  # the most a wait's last call may outlast its timeout (network and answer)
_FIRST_RETRY = 0.5
_POLL_SECONDS = 55.0
_REQUEST_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
_KEY_ID = re.compile(r"^[0-9a-f]{64}\Z")
_HASHES = {
    types_pb2.HASH_ALGORITHM_SHA256: "sha256",
    types_pb2.HASH_ALGORITHM_SHA384: "sha384",
    types_pb2.HASH_ALGORITHM_SHA512: "sha512",
}


@dataclass(frozen=True)
class Asked:
    """What the caller asked for; every response is checked against it.

    `digests` are (hash name, digest, artifact) in request order, or None when
    the caller does not know them (`signer status ID` without `--file`);
    `request_id` is "" until the server has assigned one.
    """

    key_name: str = ""
    digests: tuple[tuple[str, bytes, str], ...] | None = None
    payload_type: str = ""
    payload: bytes = b""
    request_id: str = ""

    @classmethod
    def of(cls, create: signing_pb2.CreateSigningRequestRequest) -> Asked:
        """What a CreateSigningRequest asks for."""
        return cls(
            key_name=create.key_name,
            digests=tuple(
                (_HASHES.get(d.algorithm, "?"), d.value, d.artifact_name) for d in create.digests
            ),
            payload_type=create.payload_type,
            payload=create.payload,
        )

    def for_request(self, request_id: str) -> Asked:
        return Asked(self.key_name, self.digests, self.payload_type, self.payload, request_id)


def _got_digests(request: types_pb2.SigningRequest) -> tuple[tuple[str, bytes, str], ...]:
    return tuple((_HASHES.get(d.algorithm, "?"), d.value, d.artifact_name) for d in request.digests)


def check_response(request: types_pb2.SigningRequest, asked: Asked) -> None:
    """Raise ResponseMismatchError unless `request` is the one asked for."""
    if not _REQUEST_ID.match(request.id):
        raise ResponseMismatchError("the server answered with a malformed request id")
    wrong = [
        what
        for what, bad in (
            ("request id", bool(asked.request_id) and request.id != asked.request_id),
            ("key", bool(asked.key_name) and request.key_name != asked.key_name),
            ("key id", not _KEY_ID.match(request.key_id)),
            ("digests", asked.digests is not None and _got_digests(request) != asked.digests),
            (
                "payload",
                bool(asked.payload or asked.payload_type)
                and (request.payload_type, request.payload) != (asked.payload_type, asked.payload),
            ),
        )
        if bad
    ]
    if wrong:
        what = f"request {asked.request_id}" if asked.request_id else "the new request"
        raise ResponseMismatchError(
            f"the server's answer for {what} is not what was asked: {', '.join(wrong)} "
            "differ; nothing was written"
        )


def create(
    profile: Profile,
    stub: Any,
    request: signing_pb2.CreateSigningRequestRequest,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> types_pb2.SigningRequest:
    """Create, retrying a server it cannot reach, or gRPC's "no room" refusal, with the
    same idempotency key (so a retry never makes a second request), for at most
    RETRY_BUDGET seconds; check the answer."""
    give_up = clock() + RETRY_BUDGET
    pause = _FIRST_RETRY
    while True:
        try:
            created: types_pb2.SigningRequest = call(
                profile, stub.CreateSigningRequest, request
            ).request
        except RemoteError as e:
            if not _retryable(e) or clock() + pause > give_up:
                raise
            sleep(pause)
            pause *= 2
            continue
        check_response(created, Asked.of(request))
        return created


def _retryable(e: RemoteError) -> bool:
    """An UNAVAILABLE the server gave no reason for (it could not be reached, or was
    restarting), or gRPC's own overload refusal. A reason, such as STORE_UNAVAILABLE,
    is the server's answer after it waited itself: said at once."""
    return (e.code.name == "UNAVAILABLE" and not e.reason) or e.overloaded


def _poll_pb(seconds: float) -> duration_pb2.Duration:
    pb = duration_pb2.Duration()
    pb.FromTimedelta(dt.timedelta(seconds=max(seconds, 0)))
    return pb


@dataclass
class _Backoff:
    """Pauses between polls that double, up to MAX_PAUSE, while the answers come early."""

    pause: float = _FIRST_PAUSE
    sleep: Callable[[float], None] = field(default=time.sleep)

    def after(self, asked_for: float, took: float, remaining: float) -> None:
        if took >= asked_for * _EARLY:
            self.pause = _FIRST_PAUSE
            return
        self.sleep(max(min(self.pause, remaining), 0))
        self.pause = min(self.pause * 2, MAX_PAUSE)


def wait(
    profile: Profile,
    stub: Any,
    asked: Asked,
    timeout: dt.timedelta,
    on_change: Callable[[types_pb2.SigningRequest], None] | None = None,
    poll_seconds: float = _POLL_SECONDS,
) -> tuple[types_pb2.SigningRequest | None, bool]:
    """Long-poll until the request is decided or `timeout` passes.

    Returns the last checked answer (None if none came) and whether it is decided.
    `on_change` is told of every answer whose state or approvals changed.
    """
    end = time.monotonic() + timeout.total_seconds()
    backoff = _Backoff()
    last: types_pb2.SigningRequest | None = None
    seen: tuple[Any, ...] | None = None
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            return last, False
        poll = min(remaining, poll_seconds)
        started = time.monotonic()
        try:  # the server answers within `poll`; the call's own deadline is barely later
            resp = call(
                profile,
                stub.WaitSigningRequest,
                signing_pb2.WaitSigningRequestRequest(id=asked.request_id, timeout=_poll_pb(poll)),
                timeout=poll + SLACK,
            )
        except RemoteError as e:
            if e.code.name not in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and not e.overloaded:
                raise
            time.sleep(max(min(1.0, end - time.monotonic()), 0))
            continue
        check_response(resp.request, asked)
        last = resp.request
        now = (last.state, tuple((a.approver, a.decision) for a in last.approvals))
        if now != seen:
            seen = now
            if on_change is not None:
                on_change(last)
        if resp.done:
            return last, True
        backoff.after(poll, time.monotonic() - started, end - time.monotonic())


# What one progress line shows of the server's text: a hostile server's long names or
# reasons, sent again on every poll, do not flood a CI log.
_NAME, _NAMES, _REASON = 64, 10, 512
_ENDED = {
    types_pb2.REQUEST_STATE_EXPIRED: "expired",
    types_pb2.REQUEST_STATE_CANCELLED: "cancelled",
    types_pb2.REQUEST_STATE_FAILED: "failed",
}


def progress_line(r: types_pb2.SigningRequest) -> str | None:
    """What a person waiting on `r` is told when it changes ("1 of 2 approvals (alice)",
    a denial, the end); None when there is nothing new to say (no approval yet)."""
    approvers = [a.approver for a in r.approvals if a.decision == types_pb2.DECISION_APPROVE]
    names = ", ".join(clip(a, _NAME) for a in approvers[:_NAMES])
    more = f" and {len(approvers) - _NAMES} more" if len(approvers) > _NAMES else ""
    count = f"{len(approvers)} of {r.threshold} approvals ({names}{more})"
    if r.state == types_pb2.REQUEST_STATE_PENDING:
        return count if approvers else None
    if r.state == types_pb2.REQUEST_STATE_APPROVED:
        return f"{count}; signing"
    if r.state == types_pb2.REQUEST_STATE_SIGNED:
        return f"signed after {count}; checking the signatures and the audit proof"
    if r.state == types_pb2.REQUEST_STATE_DENIED:
        deniers = [a for a in r.approvals if a.decision == types_pb2.DECISION_DENY]
        by = f" by {clip(deniers[0].approver, _NAME)}" if deniers else ""
        why = f": {clip(deniers[0].reason, _REASON)}" if deniers and deniers[0].reason else ""
        return f"denied{by}{why}"
    ended = _ENDED.get(r.state, "ended")
    return f"{ended}: {clip(r.status_message, _REASON)}" if r.status_message else ended


@dataclass(frozen=True)
class Verified:
    """A SIGNED request whose signatures and audit proof were checked."""

    request: types_pb2.SigningRequest
    key: types_pb2.KeyInfo
    proof: SignedProof
    policy_chain: tuple[dict[str, Any], ...] = ()  # `signed_chain`


def checked_key(key: types_pb2.KeyInfo, key_name: str) -> str:
    """The PEM of a GetPublicKey answer, re-encoded, once it is the key asked for.

    The key must be named `key_name` and its key id must be the hex SHA-256 of
    its SubjectPublicKeyInfo, so a server cannot hand out one key under another's id.
    """
    try:
        public = serialization.load_pem_public_key(key.public_key_pem.encode())
    except (ValueError, TypeError):
        raise ResponseMismatchError(
            f"the server's public key for {key_name} is not a PEM public key"
        ) from None
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if key.name != key_name or hashlib.sha256(der).hexdigest() != key.key_id:
        raise ResponseMismatchError(
            f"the server's answer for key {key_name} is for another key, or its key id is "
            "not that of its public key"
        )
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


def public_key(
    profile: Profile, stub: Any, key_name: str, openpgp_certificate: bool = False
) -> types_pb2.KeyInfo:
    """A signing key's GetPublicKey answer (with its OpenPGP certificate if asked), once
    `checked_key` holds for it."""
    asked = signing_pb2.GetPublicKeyRequest(
        key_name=key_name, openpgp_certificate=openpgp_certificate
    )
    key: types_pb2.KeyInfo = call(profile, stub.GetPublicKey, asked).key
    checked_key(key, key_name)
    return key


def verify_signed(
    profile: Profile,
    stub: Any,
    request: types_pb2.SigningRequest,
    asked: Asked,
    own_digests: Sequence[tuple[str, bytes]] | None = None,
) -> Verified:
    """Check a SIGNED answer before anything is written or returned.

    `own_digests` are the (hash, digest) pairs the caller computed itself, one per
    signature; by default those of `asked`, else those the request carries.
    Raises ResponseMismatchError or VerificationError; ConfigError without a
    pinned audit verifier.
    """
    check_response(request, asked)
    if profile.audit_verifier is None:
        raise ConfigError(
            f"profile {profile.path} has no audit_verifier: the signature cannot be checked "
            "against the audit log; add the string printed by `signer audit verifier`"
        )
    key = call(
        profile, stub.GetPublicKey, signing_pb2.GetPublicKeyRequest(key_name=request.key_name)
    ).key
    pem = checked_key(key, request.key_name)
    if key.key_id != request.key_id:
        raise ResponseMismatchError(
            f"the server's public key for {request.key_name} does not have the request's "
            f"key id {request.key_id}; nothing was written"
        )
    if own_digests is None:
        own = asked.digests if asked.digests is not None else _got_digests(request)
        own_digests = [(h, d) for h, d, _ in own]
    if len(request.signatures) != len(own_digests) or len(own_digests) != len(request.digests):
        raise ResponseMismatchError(
            f"request {request.id} has {len(request.signatures)} signatures for "
            f"{len(own_digests)} digests; nothing was written"
        )
    pub = serialization.load_pem_public_key(pem.encode())
    for i, ((hash_name, digest), sig) in enumerate(
        zip(own_digests, request.signatures, strict=True)
    ):
        try:
            verify_digest(pub, hash_name, digest, sig)
        except (InvalidSignature, ValueError):
            raise VerificationError(
                f"signature {i} of request {request.id} does not verify over its digest "
                "with the key's public key; nothing was written"
            ) from None
    if not request.HasField("audit_proof"):
        raise VerificationError(f"the server returned no audit proof for request {request.id}")
    p = request.audit_proof
    proof = SignedProof(p.index, p.entry, p.tree_size, list(p.inclusion_proof), p.checkpoint)
    try:
        verify_signed_proof(
            proof, profile.audit_verifier, request.id, request.key_id, list(request.signatures)
        )
    except (VerificationError, ValueError) as e:
        raise VerificationError(
            f"the audit proof for request {request.id} does not verify: {e}; nothing was written"
        ) from e
    return Verified(request, key, proof, signed_chain(profile, stub, request.id, proof))


def signed_chain(
    profile: Profile, stub: Any, request_id: str, proof: SignedProof
) -> tuple[dict[str, Any], ...]:
    """The policy versions from 1 to the one request `request_id` was signed under (its
    `request.signed` entry names it), each as its `policy.adopted` entry records it,
    checked as a chain and logged before the signature; () for a signature recorded
    without a version. ResponseMismatchError if the server's chain is not that."""
    under = AuditEntry.from_bytes(proof.entry).details.get("policy_sha256")
    if not isinstance(under, str):
        return ()
    answer = call(profile, stub.GetPolicyChain, signing_pb2.GetPolicyChainRequest())
    versions: list[Version] = []
    details: list[dict[str, Any]] = []
    try:
        for v in answer.versions:
            entry = AuditEntry.from_bytes(v.entry)
            if entry.index != v.index or entry.event != "policy.adopted":
                raise PolicyChainError(f"entry {v.index} is not a policy.adopted entry")
            if entry.index >= proof.index:
                break  # adopted after the signature
            versions.append(version_of(entry.details, entry.index))
            details.append(dict(entry.details))
        if versions:
            check_chain(versions)
    except (PolicyChainError, ValueError, KeyError, TypeError) as e:
        raise ResponseMismatchError(
            f"the server's policy chain is not valid ({e}); nothing was written"
        ) from None
    if not versions or versions[-1].sha256 != under:
        raise ResponseMismatchError(
            f"the last policy version the server's chain holds before request {request_id} "
            f"was signed is not {under[:16]}..., which it names; nothing was written"
        )
    return tuple(details)
