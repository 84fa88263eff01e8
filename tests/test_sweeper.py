"""The background sweeper outlives any exception: it logs it, with its type, and keeps going.

The sweeper runs over a real Core (fake token, fake clock, real store) with a
short interval; failures are injected where nothing expects them (a bug in the
expiry step, a token library raising something that is not a TokenError), and
each test waits for what the sweeper must still do afterwards.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
import structlog

from signer.model import State
from signer.server.sweeper import Sweeper
from testbed.commands import wait_until
from tests.fakes import World

MIN = dt.timedelta(minutes=1)


@pytest.fixture
def sweeper(world: World) -> Iterator[Sweeper]:
    s = Sweeper(world.core, interval=0.01, min_age=dt.timedelta(0))
    yield s
    s.stop()


def _failures(logs: Sequence[Mapping[str, Any]], step: str) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"].startswith("sweeper step failed") and e["step"] == step]


def test_sweeper_expires_after_an_unexpected_exception(
    world: World, sweeper: Sweeper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyError from the expiry step is logged with its type; the next round expires."""
    request = world.create(ttl=MIN)
    real = world.core.expire_due
    injected = [KeyError("a bug in expiry")]

    def flaky() -> int:
        if injected:
            raise injected.pop()
        return real()

    monkeypatch.setattr(world.core, "expire_due", flaky)
    with structlog.testing.capture_logs() as logs:
        sweeper.start()
        wait_until(lambda: not injected and bool(_failures(logs, "expire")))
        world.clock.advance(2 * MIN)
        wait_until(lambda: world.get(request.id).state is State.EXPIRED)
    (failure,) = _failures(logs, "expire")
    assert failure["error_type"] == "KeyError" and failure["log_level"] == "error"
    assert "a bug in expiry" in failure["error"]
    assert "request.expired" in world.events(request.id)


def test_a_failing_recovery_does_not_stop_expiry_then_signs(world: World, sweeper: Sweeper) -> None:
    """A token raising a non-TokenError fails recovery every round; expiry still runs in
    each round, and once the token works the approved request is signed."""
    broken = [True]
    calls: list[str] = []

    def on_sign(name: str, hash_name: str, digest: bytes) -> None:
        calls.append(name)
        if broken[0]:
            raise RuntimeError("token library bug")

    world.token.on_sign = on_sign
    approved = world.create()
    world.approve("alice", approved)
    with pytest.raises(RuntimeError):
        world.approve("bob", approved)  # quorum reached; the signing call blew up
    assert world.get(approved.id).state is State.APPROVED
    pending = world.create(ttl=MIN)
    with structlog.testing.capture_logs() as logs:
        sweeper.start()
        wait_until(lambda: len(_failures(logs, "recover")) >= 2)  # two rounds at least
        world.clock.advance(2 * MIN)
        wait_until(lambda: world.get(pending.id).state is State.EXPIRED)
        broken[0] = False
        wait_until(lambda: world.get(approved.id).state is State.SIGNED)
    failure = _failures(logs, "recover")[0]
    assert failure["error_type"] == "RuntimeError"
    assert "token library bug" in failure["error"]
    assert world.events(approved.id)[-1] == "request.signed"
