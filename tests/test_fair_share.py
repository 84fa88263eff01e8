"""No identity can starve the others, before or after authentication.

A server with 16 workers: an officer opens five times more watch streams than
its cap, a requester holds more silent calls (streams opened, no message sent)
than its share, and a client whose certificate has no role floods HTTP/2
streams on many connections, silent or reset at once; over its cap a caller is
refused at once (RESOURCE_EXHAUSTED, never a wait), a caller without a role
gets PERMISSION_DENIED before its message is waited for, and requesters,
officers and auditors keep getting answers all along. The floods leave a
trace: rate-limited log lines and audited rejections.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from signer.core.intake import LIMITS
from signer.server.app import STREAMS_PER_CONNECTION, _options
from signer.server.config import load_config
from signer.v1 import approval_pb2, audit_pb2, signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT
from testbed.commands import wait_until
from testbed.env import Env
from testbed.process import Running, running
from tests.harness import audit_events, rpc_error

WORKERS = 16  # each identity may hold half: 8 calls in flight
CAP = WORKERS // 2
WATCH_CAP = 4
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
SIGNED = types_pb2.REQUEST_STATE_SIGNED
LIST_KEYS = "/signer.v1.SigningService/ListKeys"
GET_REQUEST = "/signer.v1.SigningService/GetSigningRequest"


@pytest.fixture
def capped(fresh_env: Env) -> Iterator[Running]:
    fresh_env.add_client("nobody", [])
    fresh_env.add_client("hog", ["requester"])
    cfg = fresh_env.read_config()
    cfg["server"]["workers"] = WORKERS
    cfg["server"]["message_timeout"] = "5m"  # silent calls here end when the test says
    fresh_env.write_config(cfg)
    yield from running(fresh_env)


@pytest.fixture
def impatient(fresh_env: Env) -> Iterator[Running]:
    """Two requesters that may hold all the workers between them; messages due in 1 s."""
    fresh_env.add_client("hog", ["requester"])
    fresh_env.add_client("hog2", ["requester"])
    cfg = fresh_env.read_config()
    cfg["server"]["workers"] = WORKERS
    cfg["server"]["message_timeout"] = "1s"
    fresh_env.write_config(cfg)
    yield from running(fresh_env)


def _own_channel(env: Env, who: str) -> grpc.Channel:
    """A channel on a connection of its own (not shared with the test's other channels)."""
    p = env.profile(who)
    assert p.key is not None and p.cert is not None
    creds = grpc.ssl_channel_credentials(
        root_certificates=p.ca.read_bytes(),
        private_key=p.key.read_bytes(),
        certificate_chain=p.cert.read_bytes(),
    )
    return grpc.secure_channel(p.server, creds, options=[("grpc.use_local_subchannel_pool", 1)])


@dataclass
class Silent:
    """Calls that open their stream and never send a message, until released."""

    release: threading.Event = field(default_factory=threading.Event)

    def requests(self) -> Iterator[bytes]:
        self.release.wait(60)
        yield from ()  # the stream ends without a message

    def open(self, channel: grpc.Channel, method: str, timeout: float = 60) -> grpc.Future:
        call = channel.stream_unary(method)
        return call.future(self.requests(), timeout=timeout)


def _code(f: grpc.Future) -> grpc.StatusCode:
    e = f.exception()
    return grpc.StatusCode.OK if e is None else e.code()


def _flow(r: Running) -> None:
    """A requester, two officers and an auditor, each getting an answer."""
    c = r.clients
    req = c.create()
    listed = c.approval("alice").ListRequests(
        approval_pb2.ListRequestsRequest(page_size=50), timeout=RPC_TIMEOUT
    )
    assert listed.requests
    c.approve("alice", req)
    assert c.approve("bob", req).state == SIGNED
    assert c.get(req.id).state == SIGNED
    cp = c.audit().GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=RPC_TIMEOUT)
    assert cp.tree_size > 0


def _log_events(r: Running) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.server.output().splitlines() if x.startswith("{")]


# -- long-lived calls: a cap per identity ------------------------------------------------


def test_an_officer_over_its_watch_cap_is_refused_at_once(capped: Running) -> None:
    """20 watch streams from one officer: 4 are served, 16 RESOURCE_EXHAUSTED at once;
    everyone else (the officer too) keeps getting answers, and the cap frees on cancel."""
    c = capped.clients
    pending = c.create()  # every served watch starts with it
    stub = c.approval("alice")
    streams = [
        stub.WatchRequests(approval_pb2.WatchRequestsRequest(), timeout=60) for _ in range(20)
    ]
    served, refused = [], []
    for s in streams:
        try:
            assert next(s).request.id == pending.id
            served.append(s)
        except grpc.RpcError as e:
            assert e.code() == EXHAUSTED, e  # refused, not timed out
            refused.append(e)
    assert (len(served), len(refused)) == (WATCH_CAP, 20 - WATCH_CAP)
    _flow(capped)
    new = c.create()
    for s in served:  # the served streams still deliver
        while next(s).request.id != new.id:
            pass
    for s in served:
        s.cancel()

    def watch_again() -> bool:
        s = stub.WatchRequests(approval_pb2.WatchRequestsRequest(), timeout=10)
        try:
            return bool(next(s).request.id)
        except grpc.RpcError:
            return False
        finally:
            s.cancel()

    wait_until(watch_again, timeout=20)
    rejected = [
        e["details"]["reason"]
        for e in audit_events(capped.env)
        if e["event"] == "call.rejected" and e["actor"] == "alice"
    ]
    assert rejected and set(rejected) <= {"TOO_MANY_WATCHES", "TOO_MANY_CALLS"}


def test_waits_are_capped_per_identity(capped: Running) -> None:
    """Past its calls in flight a requester's next wait is RESOURCE_EXHAUSTED at once."""
    c = capped.clients
    r = c.create()
    stub = c.signing("ci")
    waits = [
        stub.WaitSigningRequest.future(
            signing_pb2.WaitSigningRequestRequest(id=r.id), timeout=RPC_TIMEOUT
        )
        for _ in range(CAP + 4)
    ]
    wait_until(lambda: sum(f.done() for f in waits) >= 4)
    done = [f for f in waits if f.done()]
    assert [_code(f) for f in done] == [EXHAUSTED] * 4
    c.approve("alice", r)
    c.approve("bob", r)  # signed: the held waits return
    held = [f for f in waits if f not in done]
    assert [f.result().done for f in held] == [True] * CAP


# -- below gRPC: silent streams, floods and resets -------------------------------------------


def test_silent_streams_of_one_identity_hold_at_most_its_share(capped: Running) -> None:
    """A requester opening 12 streams without a message holds 8 workers; 4 are refused at
    once, and the others keep getting answers; released, they end INVALID_ARGUMENT."""
    silent = Silent()
    channels = [_own_channel(capped.env, "hog") for _ in range(2)]
    try:
        calls = [silent.open(channels[i % 2], GET_REQUEST) for i in range(CAP + 4)]
        wait_until(lambda: sum(f.done() for f in calls) >= 4)
        refused = [f for f in calls if f.done()]
        assert [_code(f) for f in refused] == [EXHAUSTED] * 4
        assert all("calls in flight" in f.exception().details() for f in refused)
        _flow(capped)
        silent.release.set()
        codes = [_code(f) for f in calls if f not in refused]
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * CAP
    finally:
        silent.release.set()
        for ch in channels:
            ch.close()
    lines = [e for e in _log_events(capped) if e.get("reason") == "TOO_MANY_CALLS"]
    assert lines and lines[0]["identity"] == "hog"


def test_calls_that_never_send_their_message_are_cancelled(impatient: Running) -> None:
    """Two requesters holding every worker with silent calls: each call is cancelled once
    `server.message_timeout` passes, the others are answered, and the log and the audit
    log say why."""
    silent = Silent()
    channels = [_own_channel(impatient.env, who) for who in ("hog", "hog2")]
    try:
        calls = [silent.open(ch, GET_REQUEST) for ch in channels for _ in range(CAP)]
        _flow(impatient)  # answered once the silent calls give their workers back
        assert [_code(f) for f in calls] == [grpc.StatusCode.CANCELLED] * WORKERS
    finally:
        silent.release.set()
        for ch in channels:
            ch.close()
    lines = [e for e in _log_events(impatient) if e.get("reason") == "MESSAGE_TIMEOUT"]
    assert {e["identity"] for e in lines} == {"hog", "hog2"}
    assert all("within 1s" in e["error"] for e in lines)
    audited = {
        e["actor"]
        for e in audit_events(impatient.env)
        if e["event"] == "call.rejected" and e["details"]["reason"] == "MESSAGE_TIMEOUT"
    }
    assert audited == {"hog", "hog2"}


@dataclass
class Flood:
    """A client with no role opening silent streams on 8 connections and resetting others;
    the codes its silent calls ended with (and the details of those not PERMISSION_DENIED)."""

    env: Env
    stop: threading.Event = field(default_factory=threading.Event)
    batches: int = 0
    codes: set[grpc.StatusCode] = field(default_factory=set)
    details: set[str] = field(default_factory=set)
    errors: list[BaseException] = field(default_factory=list)

    def run(self, max_batches: int = 40) -> None:
        channels = [_own_channel(self.env, "nobody") for _ in range(8)]
        try:
            while not self.stop.is_set() and self.batches < max_batches:
                silent = Silent()
                calls = [
                    silent.open(ch, LIST_KEYS, timeout=30)
                    for ch in channels
                    for _ in range(STREAMS_PER_CONNECTION)
                ]
                for ch in channels:  # rapid resets: a stream opened and cancelled at once
                    for _ in range(16):
                        ch.stream_unary(LIST_KEYS).future(iter([b""]), timeout=30).cancel()
                for f in calls:
                    f.exception(timeout=60)  # each refused at once
                silent.release.set()  # their request threads end
                self.codes |= {_code(f) for f in calls}
                self.details |= {
                    f.exception().details()
                    for f in calls
                    if _code(f) != grpc.StatusCode.PERMISSION_DENIED
                }
                self.batches += 1
        except BaseException as e:  # reported by the test
            self.errors.append(e)
        finally:
            for ch in channels:
                ch.close()


def test_a_client_without_a_role_cannot_starve_anyone(capped: Running) -> None:
    """Thousands of silent and reset streams from a role-less client on 8 connections
    are refused at once; requesters, officers and auditors are answered meanwhile, and
    the flood leaves a bounded trace in the log and the audit log."""
    flood = Flood(capped.env)
    t = threading.Thread(target=flood.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: flood.batches >= 1 or bool(flood.errors), timeout=60)
        flows = 0
        while flows < 3 or (flood.batches < 6 and flows < 40 and not flood.errors):
            _flow(capped)  # answered while the flood goes on
            flows += 1
    finally:
        flood.stop.set()
        t.join(timeout=120)
    assert not t.is_alive() and not flood.errors, flood.errors
    # Refused by the interceptor, or by gRPC core's own pushback on a connection that
    # resets streams (REFUSED_STREAM): never answered late, never served.
    assert grpc.StatusCode.PERMISSION_DENIED in flood.codes
    assert flood.codes <= {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE}
    assert all("RST_STREAM" in d for d in flood.details), flood.details
    calls = flood.batches * 8 * STREAMS_PER_CONNECTION
    lines = [
        e
        for e in _log_events(capped)
        if e.get("event") == "call rejected" and e.get("identity") == "nobody"
    ]
    # A trace, a few lines a minute (the flood may straddle two minutes), not one a call.
    assert 1 <= len(lines) <= 2 * LIMITS.max_rejections_per_minute < calls
    audited = [
        e
        for e in audit_events(capped.env)
        if e["event"] == "call.rejected" and e["actor"] == "nobody"
    ]
    assert 1 <= len(audited) <= 2 * LIMITS.max_rejections_per_minute + 1


def test_the_server_bounds_streams_and_connections(capped: Running) -> None:
    """The gRPC server caps streams per connection and recycles idle and old connections,
    with a grace longer than the longest call."""
    options = dict(_options(load_config(capped.env.config)))
    assert options["grpc.max_concurrent_streams"] == STREAMS_PER_CONNECTION <= WORKERS * 2
    assert 0 < options["grpc.max_connection_idle_ms"] <= 3_600_000
    assert 0 < options["grpc.max_connection_age_ms"] < 2**31 - 1
    assert options["grpc.max_connection_age_grace_ms"] > 10 * 60 * 1000  # a watch's 10 min
    assert options["grpc.keepalive_time_ms"] > 0


def test_a_call_without_its_message_is_refused(capped: Running) -> None:
    """A unary call that ends its stream without a message is INVALID_ARGUMENT."""
    with _own_channel(capped.env, "ci") as ch:

        def no_message() -> Any:
            return ch.stream_unary(LIST_KEYS)(iter(()), timeout=10)

        got = rpc_error(no_message)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT and "one request message" in got.message
