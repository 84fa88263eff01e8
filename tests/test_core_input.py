"""The signing core through fakes: bad input gets its error and reason and changes nothing.

Digests, artifact names, context, idempotency keys, TTLs, keys and requesters
at and past their limits, keys that cannot sign digests, and malformed or odd
approval envelopes (tests/core_world.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import ALGORITHMS
from signer.approval.keys import spki_key_id
from signer.core.machine import Core
from signer.core.policy import KeyPolicy
from signer.dsse import PAYLOAD_TYPE, Statement, pae
from signer.errors import (
    EnvelopeError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SignerError,
    TooLargeError,
)
from signer.formats.base import PayloadKey
from signer.formats.openpgp import document_request
from signer.freeze import Freeze, sign_freeze
from signer.model import Digest, KeySpec, Request, State
from tests.core_world import MIN, snapshot
from tests.core_world import world as world  # a fixture
from tests.fakes import World, sha256_digest

_D = sha256_digest(b"x")
_BAD_INPUT: list[tuple[str, dict[str, Any], type[SignerError], str]] = [
    (
        "short-sha256",
        {"digests": [Digest("sha256", b"\0" * 31, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "long-sha256",
        {"digests": [Digest("sha256", b"\0" * 33, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "sha384-32",
        {"digests": [Digest("sha384", b"\0" * 32, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "sha512-48",
        {"digests": [Digest("sha512", b"\0" * 48, "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "empty-digest",
        {"digests": [Digest("sha256", b"", "a")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    (
        "second-bad",
        {"digests": [_D, Digest("sha256", b"\0", "b")]},
        InvalidArgumentError,
        "BAD_DIGEST_LENGTH",
    ),
    ("md5", {"digests": [Digest("md5", b"\0" * 16, "a")]}, InvalidArgumentError, "UNKNOWN_HASH"),
    (
        "upper",
        {"digests": [Digest("SHA256", b"\0" * 32, "a")]},
        InvalidArgumentError,
        "UNKNOWN_HASH",
    ),
    ("sha1", {"digests": [Digest("sha1", b"\0" * 20, "a")]}, InvalidArgumentError, "UNKNOWN_HASH"),
    ("no-digests", {"digests": []}, InvalidArgumentError, "NO_DIGESTS"),
    ("too-many", {"digests": [_D] * 4}, TooLargeError, "TOO_MANY_DIGESTS"),
    (
        "artifact-empty",
        {"digests": [Digest("sha256", b"\0" * 32, "")]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    (
        "artifact-newline",
        {"digests": [Digest("sha256", b"\0" * 32, "a\nb")]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    (
        "artifact-long",
        {"digests": [Digest("sha256", b"\0" * 32, "a" * 513)]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    (
        "artifact-trailing-newline",
        {"digests": [Digest("sha256", b"\0" * 32, "app.tar\n")]},
        InvalidArgumentError,
        "BAD_ARTIFACT_NAME",
    ),
    ("context-key-newline", {"context": {"ref\n": "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    ("idem-newline", {"idempotency_key": "build-1\n"}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("context-key-space", {"context": {"a b": "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    ("context-key-empty", {"context": {"": "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    ("context-key-long", {"context": {"k" * 65: "x"}}, InvalidArgumentError, "BAD_CONTEXT"),
    (
        "context-value-control",
        {"context": {"ref": "main\x1b[31m"}},
        InvalidArgumentError,
        "BAD_CONTEXT",
    ),
    ("context-value-long", {"context": {"ref": "x" * 1025}}, InvalidArgumentError, "BAD_CONTEXT"),
    (
        "context-too-many",
        {"context": {f"k{i}": "v" for i in range(5)}},
        TooLargeError,
        "CONTEXT_TOO_LARGE",
    ),
    ("idem-space", {"idempotency_key": "a b"}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("idem-long", {"idempotency_key": "k" * 129}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("idem-unicode", {"idempotency_key": "ключ"}, InvalidArgumentError, "INVALID_ARGUMENT"),
    ("ttl-tiny", {"ttl": dt.timedelta(milliseconds=500)}, InvalidArgumentError, "BAD_TTL"),
    ("ttl-negative", {"ttl": -MIN}, InvalidArgumentError, "BAD_TTL"),
    ("unknown-key", {"key": "staging"}, NotFoundError, "UNKNOWN_KEY"),
    ("not-a-requester", {"who": "alice"}, PermissionDeniedError, "NOT_A_REQUESTER"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "reason"), [c[1:] for c in _BAD_INPUT], ids=[c[0] for c in _BAD_INPUT]
)
def test_bad_create_input_changes_nothing(
    world: World, kwargs: dict[str, Any], error: type[SignerError], reason: str
) -> None:
    """Each bad create input gets its error and reason, and nothing is written."""
    world.create(idempotency_key="a-b")
    before = snapshot(world)
    with pytest.raises(error) as e:
        world.create(**kwargs)
    assert type(e.value) is error and e.value.reason == reason
    assert str(e.value)
    assert snapshot(world) == before


def test_limits_allow_exactly_the_maximum(world: World) -> None:
    """max_digests and max_context_entries are inclusive limits."""
    r = world.create(
        digests=[sha256_digest(bytes([i])) for i in range(3)],
        context={f"k{i}": "v" * 1024 for i in range(4)},
        idempotency_key="k" * 128,
    )
    assert len(r.digests) == 3


def test_ed25519_key_cannot_sign_digests(world: World) -> None:
    """A request naming an Ed25519 key is refused KEY_CANNOT_SIGN_DIGESTS."""
    pub = ed25519.Ed25519PrivateKey.generate().public_key()
    spec = KeySpec("notes", ALGORITHMS["ed25519"], spki_key_id(pub), "")
    policy = KeyPolicy("notes", ALGORITHMS["ed25519"], ("alice", "bob"), 1, ("ci",), MIN * 60)
    core = Core(
        world.store,
        world.token,
        {**world.keys, "notes": spec},
        {**world.policies, "notes": policy},
        world.core.approver_keys,
        clock=world.clock,
    )
    with pytest.raises(InvalidArgumentError) as e:
        core.create("ci", "notes", [_D], {}, None)
    assert e.value.reason == "KEY_CANNOT_SIGN_DIGESTS"
    assert world.requests() == []


@pytest.mark.parametrize(
    "envelope",
    [b"", b"{", b"[]", b'{"payload":"","payloadType":"x","signatures":[]}', b"\xff" * 10],
    ids=["empty", "truncated", "list", "no-sigs", "binary"],
)
def test_malformed_envelope_changes_nothing(world: World, envelope: bytes) -> None:
    """A malformed envelope is an EnvelopeError and records nothing."""
    r = world.create()
    before = snapshot(world)
    with pytest.raises(EnvelopeError):
        world.core.decide("alice", r.id, envelope, "approve")
    assert snapshot(world) == before


def test_record_rejection_keeps_only_valid_request_ids(world: World) -> None:
    """A rejection's request id is logged only when it is a well-formed id."""
    r = world.create()
    world.core.record_rejection("x", "/m", NotFoundError("gone"), r.id)
    world.core.record_rejection("x", "/m", NotFoundError("gone"), "junk\n")
    world.core.record_rejection("x", "/m", NotFoundError("gone"), r.id + "\n")
    last = world.audit()[-3:]
    assert [e.request_id for e in last] == [r.id, "", ""]
    assert last[0].details == {"method": "/m", "reason": "NOT_FOUND", "message": "gone"}


@pytest.mark.parametrize("form", ["utf-16", "nested", "int-reason", "float-digest"])
def test_odd_but_signed_envelopes_are_envelope_errors(world: World, form: str) -> None:
    """A validly signed but odd envelope (UTF-16, deep nesting, wrong types) is an EnvelopeError."""
    r = world.create()
    key = world.officers["bob"]
    if form == "utf-16":
        env = world.envelope("bob", r, decision="deny", reason="no").decode().encode("utf-16")
    elif form == "nested":
        env = b"[" * 100_000 + b"]" * 100_000
    else:
        d = Statement.for_request(r, "deny", "bob", world.clock(), "no").as_dict()
        if form == "int-reason":
            d["reason"] = 5
        else:
            d["digests"][0]["artifact"] = 1.5
        payload = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        sig = key.sign(pae(PAYLOAD_TYPE, payload))
        env = json.dumps(
            {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(sig).decode()}],
            }
        ).encode()
    before = snapshot(world)
    with pytest.raises(EnvelopeError):
        world.core.decide("bob", r.id, env, "deny")
    assert snapshot(world) == before


def _openpgp_request(world: World) -> tuple[int, KeySpec, Request]:
    """An OpenPGP request on `release`, whose creation time is now an hour ago."""
    created = int(world.clock().timestamp()) - 3600
    world.keys["release"] = replace(world.keys["release"], openpgp_created=created)
    world.restart()
    spec = world.keys["release"]
    now = int(world.clock().timestamp())
    key = PayloadKey(spec.algorithm.name, spec.public_key_pem, created, now)
    carried, _ = document_request("binary", [("app.tar", [b"the release"])], key, "sha256")
    request = world.core.create(
        "ci",
        "release",
        list(carried.digests),
        {"repository": "org/app"},
        None,
        payload_type=carried.payload_type,
        payload=carried.payload,
    )
    return created, spec, request


def test_a_payload_that_no_longer_passes_for_the_loaded_key_is_not_signed(world: World) -> None:
    """The signing server checks a carried payload again, for the key as it loaded it: an
    OpenPGP request made while the key had one creation time, approved and then signed by
    a server whose token keeps another (a replica restored apart), fails instead of
    releasing a signature whose issuer is not that key's fingerprint."""
    created, spec, request = _openpgp_request(world)
    world.keys["release"] = replace(spec, openpgp_created=created + 1)
    world.restart()
    world.approve("alice", request)
    world.approve("bob", request)
    failed = world.get(request.id)
    assert failed.state is State.FAILED and not failed.signatures
    assert "does not pass its format's check" in failed.status_message
    assert f"creation time is {created + 1}, the request says {created}" in failed.status_message


def test_an_approved_openpgp_request_waits_for_a_key_without_its_creation_time(
    world: World,
) -> None:
    """A server whose token lost the key's creation time (restored without its data
    objects) leaves an approved OpenPGP request APPROVED instead of failing it: once the
    operator gives the time back, the next start signs it."""
    _, spec, request = _openpgp_request(world)
    world.keys["release"] = replace(spec, openpgp_created=None)
    world.restart()
    world.approve("alice", request)
    world.approve("bob", request)
    assert world.get(request.id).state is State.APPROVED
    world.keys["release"] = spec
    world.restart().recover()
    signed = world.get(request.id)
    assert signed.state is State.SIGNED and signed.signatures


def test_a_freeze_while_the_token_signs_drops_the_signatures(world: World) -> None:
    """An officer freezes the key (on another replica) while the token is signing: the
    transaction that would record the signatures sees the freeze, records none, and the
    request fails naming it."""
    request = world.create()
    world.approve("alice", request)
    spec = world.keys["release"]

    def freeze_now(name: str, hash_name: str, digest: bytes) -> None:
        world.token.on_sign = None
        statement = Freeze("release", spec.key_id, "carol", "stolen laptop", world.clock())
        world.core.freeze("carol", "release", sign_freeze(statement, world.officers["carol"]))

    world.token.on_sign = freeze_now
    done = world.approve("bob", request)
    assert done.state is State.FAILED and not done.signatures
    assert "frozen by carol" in done.status_message
    assert world.token.calls  # the token did sign; nothing of it was kept
    assert [e.event for e in world.audit()][-2:] == ["key.frozen", "request.failed"]


def test_a_version_adopted_while_the_token_signs_leaves_the_request_approved(
    world: World,
) -> None:
    """The cached check before signing passed, then a version was adopted (as the
    fresh read where the signature is recorded finds): the signatures are dropped, the
    request stays APPROVED and no request.signed entry names the superseded version."""
    r = world.create()
    world.approve("alice", r)
    world.core.superseded_now = lambda: "policy version 2 is in force now"
    assert world.approve("bob", r).state is State.APPROVED
    assert "request.signed" not in world.events(r.id)
    assert world.core.get_for_requester("ci", r.id).state is State.APPROVED
    world.core.superseded_now = lambda: None  # restarted under the version in force
    world.core.recover()
    assert world.core.get_for_requester("ci", r.id).state is State.SIGNED
