"""What a caller sends the core, checked before anything is written, and the request built
from it.

Upholds invariant 8: digests (known hash, exact length, displayable artifact
name), the DSSE payload (an in-toto Statement v1 whose PAE the one digest is),
CI context, reasons, ttls, request ids and idempotency keys are each checked
here, with a message a person can act on and a machine-readable reason, before
the core opens a transaction; a refused call changes nothing. `Limits` bounds
what one call or one requester can make the server hold. Also the new request's
record: its stored form, its `request.created` audit details and the hash of
its parameters that a retried create with the same idempotency key must match
(invariant 9).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from signer.algorithms import HASH_SIZES
from signer.bounds import echo
from signer.core.policy import KeyPolicy
from signer.core.unusual import values_of
from signer.encoding import canonical_json, format_time
from signer.errors import ConflictError, InvalidArgumentError, NotFoundError, TooLargeError
from signer.formats import registry as formats
from signer.formats.base import PayloadKey
from signer.model import Digest, KeySpec, Request, State, TokenCaller
from signer.store.base import FrozenKey, Tx
from signer.text import DISPLAY_RULE, MAX_ARTIFACT, is_artifact_name, is_displayable

__all__ = [
    "LIMITS",
    "Limits",
    "check_context",
    "check_digests",
    "check_idempotency_key",
    "check_payload",
    "check_reason",
    "check_ttl",
    "created_details",
    "find_request",
    "is_request_id",
    "lifetime",
    "new_request",
    "parameters_hash",
    "require_unfrozen",
]

_CONTEXT_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_IDEMPOTENCY = re.compile(r"^[\x21-\x7e]{1,128}\Z")
_REQUEST_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


@dataclass(frozen=True)
class Limits:
    max_digests: int = 10_000  # a release manifest; approvals bind its hash
    max_context_entries: int = 32
    max_context_value: int = 1024
    max_reason: int = 1024
    min_ttl: dt.timedelta = dt.timedelta(seconds=1)
    max_pending_per_requester: int = 100
    max_rejections_per_minute: int = 60  # audited per identity; the rest are counted


LIMITS = Limits()


# -- ids -----------------------------------------------------------------------------------


def is_request_id(text: str) -> bool:
    """Whether `text` is a request id as the core makes them (a UUID v4); nothing else is
    looked up or recorded as one."""
    return _REQUEST_ID.match(text) is not None


def find_request(tx: Tx, request_id: str) -> Request:
    """The request `request_id` names; NotFoundError (UNKNOWN_REQUEST) otherwise."""
    request = tx.get_request(request_id) if is_request_id(request_id) else None
    if request is None:
        raise NotFoundError(f"no request with id {echo(request_id)}", reason="UNKNOWN_REQUEST")
    return request


def check_idempotency_key(key: str) -> None:
    if key and not _IDEMPOTENCY.match(key):
        raise InvalidArgumentError(
            "idempotency_key must be 1-128 printable ASCII characters without spaces"
        )


# -- what is to be signed ------------------------------------------------------------------


def check_digests(digests: list[Digest], spec: KeySpec, limits: Limits) -> None:
    if not digests:
        raise InvalidArgumentError("no digests given; send at least one", reason="NO_DIGESTS")
    if len(digests) > limits.max_digests:
        raise TooLargeError(
            f"{len(digests)} digests in one request; the limit is {limits.max_digests}",
            reason="TOO_MANY_DIGESTS",
        )
    if not spec.algorithm.signs_digests:
        raise InvalidArgumentError(
            f"key {spec.name!r} is {spec.algorithm.name} and cannot sign digests",
            reason="KEY_CANNOT_SIGN_DIGESTS",
        )
    for i, d in enumerate(digests):
        size = HASH_SIZES.get(d.algorithm)
        if size is None:
            raise InvalidArgumentError(
                f"digest {i}: unknown hash algorithm; use sha256, sha384 or sha512",
                reason="UNKNOWN_HASH",
            )
        if len(d.value) != size:
            raise InvalidArgumentError(
                f"digest {i}: a {d.algorithm} digest is {size} bytes, got {len(d.value)}",
                reason="BAD_DIGEST_LENGTH",
            )
        if not is_artifact_name(d.artifact):
            raise InvalidArgumentError(
                f"digest {i}: artifact name must be 1-{MAX_ARTIFACT} characters {DISPLAY_RULE}",
                reason="BAD_ARTIFACT_NAME",
            )


def check_payload(
    payload_type: str,
    payload: bytes,
    digests: list[Digest],
    spec: KeySpec,
    limits: Limits,
    now: dt.datetime,
) -> None:
    """A carried payload is one its format knows, and the format's own check passes: the
    digests are those the format derives from it for this key, now."""
    if payload_type or payload:
        fmt = formats.for_payload_type(payload_type)
        key = PayloadKey(
            spec.algorithm.name, spec.public_key_pem, spec.openpgp_created, int(now.timestamp())
        )
        fmt.check_payload(payload, digests, limits.max_digests, key)


# -- what people read ----------------------------------------------------------------------


def check_context(context: Mapping[str, str], limits: Limits) -> None:
    if len(context) > limits.max_context_entries:
        raise TooLargeError(
            f"{len(context)} context entries; the limit is {limits.max_context_entries}",
            reason="CONTEXT_TOO_LARGE",
        )
    for k, v in context.items():
        if not _CONTEXT_KEY.match(k):
            raise InvalidArgumentError(
                f"context key {echo(k)} must be 1-64 of A-Z a-z 0-9 _ . -",
                reason="BAD_CONTEXT",
            )
        if len(v) > limits.max_context_value or not is_displayable(v):
            raise InvalidArgumentError(
                f"context value for {k!r} must be at most {limits.max_context_value} "
                f"characters {DISPLAY_RULE}",
                reason="BAD_CONTEXT",
            )


def require_unfrozen(held: FrozenKey | None, key_name: str) -> None:
    """ConflictError (FAILED_PRECONDITION) if an officer froze `key_name`."""
    if held is not None:
        raise ConflictError(
            f"key {key_name} is frozen: {held.officer} froze it at audit entry "
            f"{held.since_index} ({held.reason}); nothing is signed with it until a policy "
            f"version approved by the officers lifts it (lift_freeze = {held.since_index})",
            reason="KEY_FROZEN",
        )


def check_reason(reason: str, limits: Limits) -> None:
    if len(reason) > limits.max_reason:
        raise InvalidArgumentError(
            f"reason is over {limits.max_reason} characters", reason="BAD_REASON"
        )
    if not is_displayable(reason):
        raise InvalidArgumentError(f"reason must be {DISPLAY_RULE}", reason="BAD_REASON")


# -- how long ------------------------------------------------------------------------------


def lifetime(ttl: dt.timedelta | None, policy: KeyPolicy) -> dt.timedelta:
    """The lifetime of a request asking for `ttl`: the key's max_ttl when none is asked
    (or zero), and never more (the `MaxTtl` rule)."""
    if ttl is None or ttl == dt.timedelta(0):
        return policy.max_ttl
    return min(ttl, policy.max_ttl)


def check_ttl(ttl: dt.timedelta | None, limits: Limits) -> None:
    if ttl is not None and ttl != dt.timedelta(0) and ttl < limits.min_ttl:
        raise InvalidArgumentError(f"ttl must be at least {limits.min_ttl}", reason="BAD_TTL")


# -- the new request -----------------------------------------------------------------------


def parameters_hash(
    key_name: str,
    digests: list[Digest],
    context: Mapping[str, str],
    payload_type: str,
    payload: bytes,
) -> str:
    """What a retried create with the same idempotency key must ask again."""
    return hashlib.sha256(
        canonical_json(
            {
                "key_name": key_name,
                "digests": [d.as_dict() for d in digests],
                "context": dict(context),
                "payload_type": payload_type,
                "payload_sha256": hashlib.sha256(payload).hexdigest(),
            }
        )
    ).hexdigest()


def new_request(
    actor: str,
    key_name: str,
    spec: KeySpec,
    digests: list[Digest],
    context: Mapping[str, str],
    now: dt.datetime,
    lifetime: dt.timedelta,
    idempotency_key: str,
    caller: TokenCaller | None,
    payload_type: str,
    payload: bytes,
) -> Request:
    """A PENDING request with a fresh id."""
    return Request(
        id=str(uuid.uuid4()),
        key_name=key_name,
        key_id=spec.key_id,
        algorithm=spec.algorithm.name,
        requester=actor,
        digests=tuple(digests),
        context=dict(context),
        state=State.PENDING,
        created=now,
        expires=now + lifetime,
        updated=now,
        idempotency_key=idempotency_key,
        caller=caller,
        payload_type=payload_type,
        payload=payload,
    )


def created_details(request: Request, policy: KeyPolicy) -> dict[str, Any]:
    """The `request.created` audit entry's details: all an auditor replays."""
    details: dict[str, Any] = {
        "key_name": request.key_name,
        "key_id": request.key_id,
        "algorithm": request.algorithm,
        "requester": request.requester,
        "digests": [d.as_dict() for d in request.digests],
        "context": dict(request.context),
        "expire_time": format_time(request.expires),
        "idempotency_key": request.idempotency_key,
        "threshold": policy.threshold,
        "approvers": list(policy.approvers),
    }
    if request.caller is not None:
        details["caller"] = request.caller.as_dict()
    if request.payload_type:
        details["payload_type"] = request.payload_type
        details["payload"] = base64.b64encode(request.payload).decode()
    return details


def unusual_of(
    tx: Tx, policy: KeyPolicy, request: Request, details: dict[str, Any]
) -> tuple[Request, dict[str, Any]]:
    """The request and its entry's details as recorded: if the key's policy finds it
    unusual (`signer.core.unusual`), with why, and the approvals it then needs."""
    if policy.unusual is None:
        return request, details
    reasons = policy.unusual.reasons(
        policy.name,
        request.created,
        values_of(request.requester, request.caller),
        lambda kind, value: tx.signed_with(policy.name, kind, value),
    )
    if not reasons:
        return request, details
    needed = policy.approvals_needed(unusual=True)
    said = "; ".join(r["message"] for r in reasons)
    request = replace(
        request,
        unusual=tuple(r["message"] for r in reasons),
        status_message=f"unusual, so it needs {needed} approvals: {said}",
    )
    return request, {**details, "unusual": reasons, "threshold": needed}
