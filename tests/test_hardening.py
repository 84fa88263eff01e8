"""Limits that keep one caller from hurting others, and inputs that must not fool officers."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from signer.core.intake import Limits
from signer.errors import EnvelopeError, InvalidArgumentError, TooLargeError
from signer.model import Digest, State
from signer.v1 import approval_pb2, audit_pb2, signing_pb2
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.env import Db
from testbed.process import Running
from tests.fakes import World, make_world
from tests.harness import rpc_error


@pytest.fixture
def world(tmp_path: Path, new_db: Callable[[], Db]) -> Iterator[World]:
    w = make_world(
        tmp_path,
        db=new_db(),
        limits=Limits(max_pending_per_requester=2, max_rejections_per_minute=3),
    )
    yield w
    w.close()


def test_pending_requests_per_requester_are_capped(world: World) -> None:
    """Past the pending cap a requester gets TOO_MANY_PENDING; others are unaffected."""
    world.create()
    world.create()
    with pytest.raises(TooLargeError) as e:
        world.create()
    assert e.value.reason == "TOO_MANY_PENDING"
    world.create(who="carol")  # another requester still can
    assert world.count(State.PENDING) == 3


def test_rejections_are_rate_limited_and_counted(world: World) -> None:
    """Past the per-minute rate, rejections are counted into the next audited one."""
    err = InvalidArgumentError("bad", reason="X")
    for _ in range(5):
        world.core.record_rejection("mallory", "/m", err)
    rejected = [e for e in world.audit() if e.event == "call.rejected"]
    assert len(rejected) == 3
    world.clock.advance(dt.timedelta(minutes=1))
    world.core.record_rejection("mallory", "/m", err)
    last = [e for e in world.audit() if e.event == "call.rejected"][-1]
    assert last.details["suppressed_before"] == 2
    world.core.record_rejection("someone-else", "/m", err)  # per identity
    assert [e for e in world.audit() if e.event == "call.rejected"][-1].actor == "someone-else"


def test_one_key_under_two_names_counts_once(world: World) -> None:
    """Two approver names with one public key make one approval, not a quorum."""
    keys = {**world.core.approver_keys, "bob": world.core.approver_keys["alice"]}
    world.core.enforce(dataclasses.replace(world.core.enforced, approver_keys=keys))
    world.officers["bob"] = world.officers["alice"]
    r = world.create()
    world.approve("alice", r)
    after = world.approve("bob", r)
    assert after.state is State.PENDING  # bob's approval is alice's key again


def test_quorum_binds_the_signing_scheme(world: World) -> None:
    """A request made for one scheme is never signed with a key now labelled another."""
    r = world.create()
    spec = world.core.keys["release"]
    relabelled = dataclasses.replace(
        spec, algorithm=dataclasses.replace(spec.algorithm, name="ecdsa-p384")
    )
    world.core.enforce(dataclasses.replace(world.core.enforced, keys={"release": relabelled}))
    world.approve("alice", r)
    assert world.approve("bob", r).state is not State.SIGNED
    assert not world.token.calls


@pytest.mark.parametrize("artifact", ["app\u202egpj.exe", "a\x85b", "a\u2028b", "x\u2066y"])
def test_text_that_could_mislead_officers_is_refused(world: World, artifact: str) -> None:
    """Bidi overrides, C1 controls and line separators in artifact names are refused."""
    with pytest.raises(InvalidArgumentError) as e:
        world.create(digests=[Digest("sha256", b"\x01" * 32, artifact)])
    assert e.value.reason == "BAD_ARTIFACT_NAME"
    with pytest.raises(InvalidArgumentError):
        world.create(context={"ref": artifact})


def test_envelope_with_repeated_json_key_is_refused(world: World) -> None:
    """An envelope whose JSON repeats a key (parser-dependent meaning) is BAD_ENVELOPE."""
    r = world.create()
    env = world.envelope("alice", r)
    doubled = env.replace(b'{"payload"', b'{"payloadType":"x","payload"', 1)
    with pytest.raises(EnvelopeError):
        world.core.decide("alice", r.id, doubled, "approve")


# -- over gRPC ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda c: c.signing().CreateSigningRequest(
            signing_pb2.CreateSigningRequestRequest(
                key_name="release",
                digests=[sha256_digest(b"x")],
                ttl=duration_pb2.Duration(seconds=2**62),
            ),
            timeout=RPC_TIMEOUT,
        ),
        lambda c: c.signing().WaitSigningRequest(
            signing_pb2.WaitSigningRequestRequest(
                id="00000000-0000-4000-8000-000000000000",
                timeout=duration_pb2.Duration(seconds=10**14),
            ),
            timeout=RPC_TIMEOUT,
        ),
        lambda c: c.approval("alice").ListRequests(
            approval_pb2.ListRequestsRequest(page_token="9" * 30), timeout=RPC_TIMEOUT
        ),
        lambda c: c.audit().ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(start_time=timestamp_pb2.Timestamp(seconds=2**62)),
            timeout=RPC_TIMEOUT,
        ),
    ],
    ids=["huge-ttl", "huge-wait", "huge-page-token", "out-of-range-time"],
)
def test_out_of_range_numbers_are_invalid_argument(clients: Clients, make: object) -> None:
    """Overflowing durations, page tokens and times are INVALID_ARGUMENT, never UNKNOWN."""
    err = rpc_error(lambda: make(clients))  # type: ignore[operator]
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err


def test_health_watch_is_not_open(clients: Clients) -> None:
    """Health/Watch (an open-ended stream) has no rule: PERMISSION_DENIED for everyone."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stream = health_pb2_grpc.HealthStub(clients.channel("admin")).Watch(
        health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT
    )
    err = rpc_error(lambda: next(iter(stream)))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED


def test_markup_in_context_is_shown_literally(shared: Running, tmp_path: Path) -> None:
    """Rich markup in a requester's context is printed as text and breaks nothing."""
    from testbed.commands import APPROVER, run

    r = shared.clients.create(context={"ref": "[/x][green]reviewed[/green]"})
    out = run([*APPROVER, "show", r.id, "--profile", str(shared.env.profile_path("alice"))])
    assert "[/x][green]reviewed[/green]" in out.stdout
    listed = run([*APPROVER, "list", "--profile", str(shared.env.profile_path("alice"))])
    assert listed.returncode == 0
