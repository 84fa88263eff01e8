"""A flood of bad calls cannot fill the disk: values echoed are cut, log lines rate-limited.

Every error message and log line quotes a caller's value through one helper
(`signer.bounds.echo`), the status message and every log value are cut, and the
log lines of rejected calls come at most `max_rejections_per_minute` a minute
per identity (per peer address before authentication), the rest counted into
the next line. A flood of calls carrying 2 MiB fields grows the server's log by
a few dozen KiB; failed TLS handshakes write nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from signer.bounds import (
    MAX_MESSAGE,
    RateLimit,
    Slots,
    Watchdog,
    clip,
    clip_log_values,
    echo,
)
from signer.core.intake import LIMITS
from signer.errors import TooLargeError
from signer.v1 import (
    approval_pb2,
    audit_pb2,
    signing_pb2,
    signing_pb2_grpc,
    types_pb2,
)
from testbed.clients import RPC_TIMEOUT, Clients, sha256_digest
from testbed.env import Env
from testbed.process import Running, running
from tests.harness import audit_events, rpc_error

HUGE = "\x1b]0;owned\x07" + "x" * (2 * 1024 * 1024)  # a 2 MiB field, with a terminal escape
ROUNDS = 15  # ci makes 75 of them: over its 60 lines a minute
IDENTITIES = ("ci", "alice", "auditor", "nobody")


def _flood(c: Clients, real: types_pb2.SigningRequest) -> list[Callable[[], Any]]:
    """One bad call of each kind, every one carrying a 2 MiB field."""
    ci, alice, audit = c.signing("ci"), c.approval("alice"), c.audit("auditor")
    t = RPC_TIMEOUT
    return [
        lambda: ci.GetSigningRequest(signing_pb2.GetSigningRequestRequest(id=HUGE), timeout=t),
        lambda: ci.WaitSigningRequest(signing_pb2.WaitSigningRequestRequest(id=HUGE), timeout=t),
        lambda: ci.CancelSigningRequest(
            signing_pb2.CancelSigningRequestRequest(id=real.id, reason=HUGE), timeout=t
        ),
        lambda: ci.CreateSigningRequest(
            signing_pb2.CreateSigningRequestRequest(key_name=HUGE, digests=[sha256_digest(b"")]),
            timeout=t,
        ),
        lambda: ci.GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name=HUGE), timeout=t),
        lambda: alice.GetRequest(approval_pb2.GetRequestRequest(id=HUGE), timeout=t),
        lambda: alice.ListRequestDigests(
            approval_pb2.ListRequestDigestsRequest(id=HUGE), timeout=t
        ),
        lambda: alice.Approve(
            approval_pb2.ApproveRequest(id=real.id, envelope=HUGE.encode()), timeout=t
        ),
        lambda: audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_token=HUGE), timeout=t),
        lambda: c.signing("nobody").GetSigningRequest(
            signing_pb2.GetSigningRequestRequest(id=HUGE), timeout=t
        ),
    ]


@pytest.fixture
def flooded(fresh_env: Env) -> Iterator[Running]:
    fresh_env.add_client("nobody", [])
    yield from running(fresh_env)


def _new_lines(r: Running, mark: int) -> list[str]:
    return r.server.output()[mark:].splitlines()


def test_a_flood_of_huge_fields_grows_the_log_by_a_bounded_amount(flooded: Running) -> None:
    """120 rejected calls with 2 MiB fields write at most 60 short lines per identity."""
    c = flooded.clients
    real = c.create()
    mark = len(flooded.server.output())
    audit_mark = len(audit_events(flooded.env))
    calls = _flood(c, real)
    for _ in range(ROUNDS):
        for call in calls:
            err = rpc_error(call)
            assert err.code != grpc.StatusCode.OK
            assert len(err.message) <= MAX_MESSAGE + 64, (err.code, len(err.message))
            assert "\x1b" not in err.message and "x" * (MAX_MESSAGE + 1) not in err.message
    sent = ROUNDS * len(calls) * len(HUGE)
    grown = len(flooded.server.output()) - mark
    lines = _new_lines(flooded, mark)
    per_line = 2 * MAX_MESSAGE  # one value cut to MAX_MESSAGE, the rest short
    # At most `limit` lines per identity and minute; the flood may straddle two minutes.
    most = 2 * LIMITS.max_rejections_per_minute * len(IDENTITIES)
    assert len(lines) <= most + 8, len(lines)
    assert all(len(line) <= per_line for line in lines), max(map(len, lines))
    assert grown <= most * per_line, grown
    assert grown * 1000 < sent  # under a thousandth of what was sent
    assert not any("\x1b" in line for line in lines)
    rejected = [e for e in audit_events(flooded.env)[audit_mark:] if e["event"] == "call.rejected"]
    assert len(rejected) <= most
    assert all(len(json.dumps(e)) <= 4 * MAX_MESSAGE for e in rejected)


def test_rejection_lines_are_rate_limited_per_identity_and_counted(flooded: Running) -> None:
    """Past the per-minute rate an identity's rejected calls are not logged, only counted;
    another identity's are still logged."""
    c = flooded.clients
    limit = LIMITS.max_rejections_per_minute
    calls = 2 * limit + 20  # more than two minutes' worth, wherever the minutes fall
    mark = len(flooded.server.output())
    unknown = signing_pb2.GetSigningRequestRequest(id="not-a-request")
    for _ in range(calls):
        rpc_error(lambda: c.signing("ci").GetSigningRequest(unknown, timeout=RPC_TIMEOUT))
    rpc_error(
        lambda: c.approval("alice").GetRequest(
            approval_pb2.GetRequestRequest(id="not-a-request"), timeout=RPC_TIMEOUT
        )
    )
    events = [json.loads(line) for line in _new_lines(flooded, mark) if line.startswith("{")]
    rejected = [e for e in events if e.get("event") == "call rejected"]
    logged = [e for e in rejected if e.get("identity") == "ci"]
    assert limit <= len(logged) < calls
    assert [e.get("identity") for e in rejected].count("alice") == 1


def test_failed_handshakes_write_nothing_to_the_log(
    fresh_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections without a client certificate fail their handshake without a log line."""
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)  # the server decides for itself
    for r in running(fresh_env):
        ci = fresh_env.profile("ci")
        mark = len(r.server.output())
        for _ in range(20):
            creds = grpc.ssl_channel_credentials(root_certificates=ci.ca.read_bytes())
            with grpc.secure_channel(ci.server, creds) as ch:
                stub = signing_pb2_grpc.SigningServiceStub(ch)
                err = rpc_error(lambda: stub.ListKeys(signing_pb2.ListKeysRequest(), timeout=5))  # noqa: B023
                assert err.code == grpc.StatusCode.UNAVAILABLE
        # A request afterwards: its line is written after any the handshakes caused.
        r.clients.create()
        assert "andshake" not in r.server.output()[mark:]


# -- the helpers ----------------------------------------------------------------------------


def test_echo_quotes_escapes_and_cuts() -> None:
    """echo quotes a value, escapes controls and format characters, and cuts it short."""
    assert echo("release") == "'release'"
    assert echo("a\x1b[2Jb\u202e") == "'a\\x1b[2Jb\\u202e'"
    long = echo("y" * 10_000)
    assert long.startswith("'" + "y" * 128 + "'") and long.endswith("(10000 characters)")
    assert len(long) < 160


def test_clip_and_the_log_processor_cut_every_value() -> None:
    """clip cuts a message; the structlog processor cuts every long value of a line."""
    assert clip("short") == "short"
    assert clip("z" * 5000).endswith("... (5000 characters)")
    event = clip_log_values(
        None, "warning", {"event": "e", "error": "e" * 5000, "raw": b"b" * 5000, "n": 7}
    )
    assert len(event["error"]) <= MAX_MESSAGE + 32 and len(event["raw"]) <= MAX_MESSAGE + 32
    assert event["n"] == 7 and event["event"] == "e"


def test_rate_limit_holds_back_then_tells_the_count() -> None:
    """A key's events past its rate are held back and counted into its next one let through."""
    now = [0.0]
    limit = RateLimit(per_key=2, overall=3, window=60, clock=lambda: now[0])
    assert [limit.allow("a"), limit.allow("a"), limit.allow("a"), limit.allow("a")] == [
        0,
        0,
        None,
        None,
    ]
    assert limit.allow("b") == 0
    assert limit.allow("c") is None  # over the cap across keys
    now[0] = 61.0
    assert limit.allow("a") == 2  # the two held back last minute
    assert limit.allow("c") == 1
    now[0] = 200.0
    assert limit.allow("b") == 0


def test_slots_refuse_at_once_over_the_cap_and_forget_idle_identities() -> None:
    """Slots give an identity `limit` holds, refuse the next at once, and free on release."""
    slots = Slots(2, "watch streams open", "TOO_MANY_WATCHES")
    slots.acquire("alice")
    with slots.hold("alice"):
        with pytest.raises(TooLargeError) as e:
            slots.acquire("alice")
        assert e.value.reason == "TOO_MANY_WATCHES" and "already has 2" in str(e.value)
        slots.acquire("bob")
    assert slots.held("alice") == 1
    slots.release("alice")
    slots.release("bob")
    assert slots.held("alice") == 0 and slots._held == {}


def test_watchdog_acts_on_waits_over_their_time_and_only_on_those() -> None:
    """A wait still open after its time has its action run (once, in the order the waits
    began); a wait that ended in time never has, and the schedule forgets it."""
    dog = Watchdog(0.05)
    fired: list[str] = []
    done = threading.Event()
    with dog.within(lambda: fired.append("ended in time")) as quick:
        pass

    def last() -> None:
        fired.append("second")
        done.set()

    with (
        dog.within(lambda: fired.append("first")) as first,
        dog.within(last) as second,
    ):
        assert done.wait(10)
    # Both expired; the one that ended in time, begun before them, never fired.
    assert fired == ["first", "second"]
    assert first.expired and second.expired and not quick.expired
    assert dog._waits == {}


def test_watchdog_survives_an_action_that_fails() -> None:
    """An action that raises is logged; the watchdog goes on with the next wait."""
    dog = Watchdog(0.01)
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("boom")

    with dog.within(boom), dog.within(done.set):
        assert done.wait(10)
