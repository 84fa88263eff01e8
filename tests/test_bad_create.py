"""A bad CreateSigningRequest gets a clear status, a reason, an audit entry and no effect.

Digests of the wrong length or an unknown hash, an unknown key, no or too many
digests, a message over the limit, bad context, a bad TTL, a reused
idempotency key (tests/bad_input.py checks each refusal).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from signer.client.profile import RemoteError
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.process import Running
from tests.bad_input import (
    CREATE,
    EXHAUSTED,
    INVALID,
    NOT_FOUND,
    PENDING,
    SHA256,
    SHA384,
    SHA512,
    STATE_EVENTS,
    assert_pending,
    create_call,
    expect_refused,
)
from tests.harness import audit_events, rpc_error


def _digest(algorithm: Any, size: int) -> types_pb2.Digest:
    return types_pb2.Digest(algorithm=algorithm, value=os.urandom(size), artifact_name="a.bin")


def _refused_create(
    shared: Running, code: grpc.StatusCode, reason: str, phrase: str, **fields: Any
) -> RemoteError:
    """A CreateSigningRequest by ci with exactly `fields`, refused as `expect_refused` checks."""
    call = create_call(shared.clients, **fields)
    return expect_refused(shared.env, call, code, reason, phrase, actor="ci", method=CREATE)


@pytest.mark.parametrize(
    ("algorithm", "size", "want"),
    [
        (SHA256, 31, 32),
        (SHA256, 33, 32),
        (SHA256, 0, 32),
        (SHA384, 32, 48),
        (SHA512, 48, 64),
    ],
)
def test_wrong_digest_length(shared: Running, algorithm: int, size: int, want: int) -> None:
    """A digest whose length does not match its hash algorithm is INVALID_ARGUMENT."""
    err = _refused_create(
        shared,
        INVALID,
        "BAD_DIGEST_LENGTH",
        f"is {want} bytes, got {size}",
        key_name="release",
        digests=[_digest(algorithm, size)],
    )
    assert "digest 0" in err.message


def test_wrong_digest_length_names_the_digest(shared: Running) -> None:
    """With several digests the message names the position of the bad one."""
    digests = [sha256_digest(b"ok"), _digest(SHA384, 32)]
    _refused_create(
        shared,
        INVALID,
        "BAD_DIGEST_LENGTH",
        "digest 1: a sha384 digest is 48 bytes",
        key_name="release",
        digests=digests,
    )


@pytest.mark.parametrize("algorithm", [types_pb2.HASH_ALGORITHM_UNSPECIFIED, 99])
def test_unknown_hash_algorithm(shared: Running, algorithm: int) -> None:
    """An unspecified or out-of-range hash algorithm is INVALID_ARGUMENT UNKNOWN_HASH."""
    _refused_create(
        shared,
        INVALID,
        "UNKNOWN_HASH",
        "use SHA256, SHA384 or SHA512",
        key_name="release",
        digests=[_digest(algorithm, 32)],
    )


def test_unknown_key(shared: Running) -> None:
    """A request for a key the server does not have is NOT_FOUND UNKNOWN_KEY."""
    _refused_create(
        shared,
        NOT_FOUND,
        "UNKNOWN_KEY",
        "no signing key named 'no-such-key'",
        key_name="no-such-key",
        digests=[sha256_digest(b"x")],
    )


def test_unknown_key_for_public_key(shared: Running) -> None:
    """GetPublicKey for a key the server does not have is NOT_FOUND UNKNOWN_KEY."""
    req = signing_pb2.GetPublicKeyRequest(key_name="no-such-key")
    expect_refused(
        shared.env,
        lambda: shared.clients.signing().GetPublicKey(req, timeout=RPC_TIMEOUT),
        NOT_FOUND,
        "UNKNOWN_KEY",
        "no signing key named 'no-such-key'",
        actor="ci",
        method="/signer.v1.SigningService/GetPublicKey",
    )


def test_no_digests(shared: Running) -> None:
    """A request with no digests is INVALID_ARGUMENT NO_DIGESTS."""
    _refused_create(
        shared, INVALID, "NO_DIGESTS", "send at least one", key_name="release", digests=[]
    )


def test_too_many_digests(shared: Running) -> None:
    """10,001 digests in one request is RESOURCE_EXHAUSTED TOO_MANY_DIGESTS."""
    digests = [sha256_digest(i.to_bytes(4, "big"), f"f{i}") for i in range(10_001)]
    _refused_create(
        shared,
        EXHAUSTED,
        "TOO_MANY_DIGESTS",
        "the limit is 10000",
        key_name="release",
        digests=digests,
    )


@pytest.mark.parametrize("what", ["context value", "artifact list"])
def test_oversized_message(shared: Running, what: str) -> None:
    """A request over the server's 4 MiB message limit is RESOURCE_EXHAUSTED, with no effect."""
    big = 5 * 1024 * 1024
    if what == "context value":
        fields: dict[str, Any] = {
            "digests": [sha256_digest(b"x")],
            "context": {"huge": "x" * big},
        }
    else:
        name = "n" * 500
        fields = {"digests": [sha256_digest(b"x", name) for _ in range(big // 500)]}
    mark = len(audit_events(shared.env))
    err = rpc_error(create_call(shared.clients, key_name="release", **fields))
    assert err.code == EXHAUSTED, err
    assert "larger than max" in err.message.lower(), err.message
    assert not [e for e in audit_events(shared.env)[mark:] if e["event"] in STATE_EVENTS]


@pytest.mark.parametrize(
    ("context", "phrase"),
    [
        ({"has space": "x"}, "context key 'has space' must be 1-64 of"),
        ({"": "x"}, "must be 1-64 of"),
        ({"k" * 65: "x"}, "must be 1-64 of"),
        ({"repo": "a\nb"}, "without control characters"),
        ({"repo": "v" * 1025}, "at most 1024 characters"),
    ],
)
def test_bad_context(shared: Running, context: dict[str, str], phrase: str) -> None:
    """A context key outside [A-Za-z0-9_.-]{1,64} or a bad value is INVALID_ARGUMENT."""
    digests = [sha256_digest(b"x")]
    _refused_create(
        shared, INVALID, "BAD_CONTEXT", phrase, key_name="release", digests=digests, context=context
    )


@pytest.mark.parametrize(
    ("ttl", "phrase"),
    [
        (duration_pb2.Duration(seconds=-5), "must not be negative"),
        (duration_pb2.Duration(nanos=-1), "must not be negative"),
        (duration_pb2.Duration(nanos=500_000_000), "ttl must be at least"),
    ],
)
def test_bad_ttl(shared: Running, ttl: duration_pb2.Duration, phrase: str) -> None:
    """A negative TTL, or one under the 1 s minimum, is INVALID_ARGUMENT BAD_TTL."""
    digests = [sha256_digest(b"x")]
    _refused_create(
        shared, INVALID, "BAD_TTL", phrase, key_name="release", digests=digests, ttl=ttl
    )


def test_ttl_above_policy_is_capped(clients: Clients) -> None:
    """A TTL over the key's max_ttl (1h) is capped to it, not rejected."""
    r = clients.create(ttl=duration_pb2.Duration(seconds=6 * 3600))
    assert r.state == PENDING
    assert r.expire_time.ToDatetime() - r.create_time.ToDatetime() == dt.timedelta(hours=1)


def test_idempotency_key_reused_with_other_parameters(shared: Running) -> None:
    """Reusing an idempotency key for other parameters is ALREADY_EXISTS; the same is a replay."""
    c = shared.clients
    key = f"build-{uuid.uuid4()}"
    first = c.create(digests=[sha256_digest(b"one")], idempotency_key=key)
    assert c.create(digests=[sha256_digest(b"one")], idempotency_key=key).id == first.id
    for fields in (
        {"key_name": "release", "digests": [sha256_digest(b"two")]},
        {"key_name": "k-ecdsa-p256", "digests": [sha256_digest(b"one")]},
        {"key_name": "release", "digests": [sha256_digest(b"one")], "context": {"a": "b"}},
    ):
        err = _refused_create(
            shared,
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
            "use a new key",
            idempotency_key=key,
            **fields,
        )
        assert first.id in err.message
    assert_pending(c, first, [])
