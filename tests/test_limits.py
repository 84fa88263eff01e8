"""Signing limits (docs/architecture.md §12): signatures per request, per day and per
release window, approvals that expire, and requests held until a window opens.

The server refuses a request that could never be signed and writes nothing; one that
would take the key past a count waits, APPROVED, and is signed once the count allows;
an approval older than the key's `approval_max_age` no longer counts; with
`outside_windows = "hold"` a request made outside the windows is taken and signed when
one opens. `signer audit verify` replays each rule on the log, so a server that
ignored one is caught; bad settings are named at load time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.approval.keys import ApprovalSigner
from signer.core.limits import KeyLimits
from signer.core.policy import KeyPolicy
from signer.core.windows import Window
from signer.errors import ConfigError, PermissionDeniedError
from signer.model import State
from signer.server.config import load_config
from tests.config_files import root as root  # a fixture
from tests.config_files import valid_config, write_config
from tests.core_world import snapshot
from tests.fakes import World, sha256_digest
from tests.harness import ok, refused
from tests.synthetic_log import OFFICERS, Synth
from tests.tamper import audit_verify

HOUR = dt.timedelta(hours=1)
# The fake clock starts on Friday 2026-01-02 03:04 UTC.
EARLY = "Mon-Sun 03:00-04:00 UTC"


def limited(world: World, windows: tuple[str, ...] = (), **limits: Any) -> KeyPolicy:
    """Enforce `release` with these limits (and windows) from now on."""
    policy = dataclasses.replace(
        world.policy,
        windows=tuple(Window.parse(w) for w in windows),
        limits=KeyLimits(**limits),
    )
    world.core.enforce(dataclasses.replace(world.core.enforced, policies={"release": policy}))
    return policy


def signed(world: World, n: int = 1, tag: str = "") -> State:
    """A request of `n` digests, approved by alice and bob: its state after."""
    digests = [sha256_digest(f"{tag} {i}".encode(), f"f{i}") for i in range(n)]
    r = world.create(digests=digests)
    world.approve("alice", r)
    return world.approve("bob", r).state


# -- the server --------------------------------------------------------------------------------


def test_a_request_over_the_per_request_count_is_refused_and_writes_nothing(
    world: World,
) -> None:
    """Three digests against a limit of two: OVER_SIGNATURE_LIMIT, naming both numbers."""
    limited(world, per_request=2)
    before = snapshot(world)
    digests = [sha256_digest(f"{i}".encode(), f"f{i}") for i in range(3)]
    with pytest.raises(PermissionDeniedError, match="at most 2 signatures per request") as e:
        world.create(digests=digests)
    assert e.value.reason == "OVER_SIGNATURE_LIMIT" and "asks for 3" in str(e.value)
    assert snapshot(world) == before
    assert signed(world, 2) is State.SIGNED


def test_a_day_s_count_holds_the_next_request_until_it_allows(world: World) -> None:
    """Two signatures a day: the first two requests sign; the third waits, APPROVED,
    through the day, and is signed by the sweeper once 24 hours have passed."""
    limited(world, per_day=2)
    assert signed(world, tag="a") is State.SIGNED
    assert signed(world, tag="b") is State.SIGNED
    world.clock.advance(HOUR)
    assert signed(world, tag="c") is State.APPROVED
    held = [r for r in world.requests() if r.state is State.APPROVED]
    assert [r.status_message for r in held] == [
        "key 'release' made 2 signatures in the last 24 hours and makes at most 2: "
        "signed once the count allows"
    ]
    with pytest.raises(PermissionDeniedError, match="at most 2 signatures in 24 hours"):
        world.create(digests=[sha256_digest(b"x", f"f{i}") for i in range(3)])
    assert world.core.recover(min_age=dt.timedelta(0)) == 0
    world.clock.advance(dt.timedelta(hours=22, minutes=59))
    assert world.core.recover(min_age=dt.timedelta(0)) == 0
    world.clock.advance(dt.timedelta(minutes=2))  # 24 hours after the first two
    assert world.core.recover(min_age=dt.timedelta(0)) == 1
    assert world.count(State.SIGNED) == 3


def test_a_window_s_count_leaves_the_rest_for_the_next_window(world: World) -> None:
    """One signature per opening of a 03:00-04:00 window: the second request waits for
    the next day's window."""
    limited(world, (EARLY,), per_window=1)
    assert signed(world, tag="a") is State.SIGNED
    assert signed(world, tag="b") is State.APPROVED
    world.clock.advance(dt.timedelta(minutes=50))  # 03:54: the same window
    assert world.core.recover(min_age=dt.timedelta(0)) == 0
    world.clock.advance(dt.timedelta(hours=23, minutes=10))  # Saturday 03:04
    assert world.core.recover(min_age=dt.timedelta(0)) == 1
    assert world.count(State.SIGNED) == 2


def test_an_approval_past_its_age_no_longer_counts(world: World) -> None:
    """alice approves; three hours later bob's approval makes no quorum (hers is past the
    two hours it counts for); carol's, now, does."""
    limited(world, approval_max_age=2 * HOUR)
    r = world.create(ttl=dt.timedelta(hours=1))
    world.approve("alice", r)
    world.clock.advance(dt.timedelta(minutes=59))
    limited(world, approval_max_age=dt.timedelta(minutes=30))
    assert world.approve("bob", r).state is State.PENDING
    assert world.approve("carol", r).state is State.SIGNED


def test_a_held_request_whose_approvals_expire_is_not_signed(world: World) -> None:
    """Approved after the window closed, held a week against an approval age of 12
    hours: when the window opens again the quorum no longer holds, and the
    request fails saying so, unsigned."""
    limited(world, ("Fri 03:00-04:00 UTC",), approval_max_age=12 * HOUR)
    r = world.create()
    world.approve("alice", r)
    world.clock.advance(dt.timedelta(minutes=57))  # 04:01: closed, the request alive
    assert world.approve("bob", r).state is State.APPROVED
    world.clock.advance(dt.timedelta(days=7, minutes=-57))  # next Friday 03:04
    world.core.recover(min_age=dt.timedelta(0))
    got = world.get(r.id)
    assert got.state is State.FAILED
    assert "approvals are older than the approval_max_age of key 'release'" in got.status_message
    assert not world.token.calls


def test_a_request_made_outside_the_windows_is_held_when_the_policy_says(world: World) -> None:
    """`outside_windows = "hold"`: made at 05:04, outside its window, the request is taken,
    approved, held APPROVED, and signed in the next morning's window."""
    world.clock.advance(2 * HOUR)
    limited(world, (EARLY,), hold_outside_windows=True)
    assert signed(world) is State.APPROVED
    world.clock.advance(dt.timedelta(hours=22))  # Saturday 03:04
    assert world.core.recover(min_age=dt.timedelta(0)) == 1


def test_an_approval_that_ages_out_while_the_token_signs_drops_the_signatures(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's approval is 59 minutes old at bob's, against an hour; the token takes two
    minutes: the signatures are not recorded (the log would count a stale approval),
    and the request fails saying why when it is tried again."""
    limited(world, approval_max_age=HOUR)
    r = world.create()
    world.approve("alice", r)
    world.clock.advance(dt.timedelta(minutes=59))
    world.slow_signing(monkeypatch, dt.timedelta(minutes=2))
    assert world.approve("bob", r).state is State.APPROVED
    assert "request.signed" not in world.events(r.id)
    world.core.recover(min_age=dt.timedelta(0))
    assert world.get(r.id).state is State.FAILED
    assert "approval_max_age" in world.get(r.id).status_message


# -- the offline verifier ------------------------------------------------------------------------


def _flows(s: Synth, count: int) -> None:
    for _ in range(count):
        s.rid = str(uuid.uuid4())
        s.created()
        s.decided("alice")
        s.decided("bob")
        s.add("request.quorum", "bob", {"approvers": ["alice", "bob"], "threshold": 2})
        s.signed(["alice", "bob"])


def _verify(
    tmp_path: Path, name: str, limits: dict[str, Any], flows: int = 1, **kw: Any
) -> subprocess.CompletedProcess[str]:
    keys: dict[str, ApprovalSigner] = {o: Ed25519Signer.generate() for o in OFFICERS}
    s = Synth(keys, **kw)
    policy = s.policy()
    policy["keys"]["release"].update(limits)
    s.started(policy)
    _flows(s, flows)
    out = tmp_path / name
    return audit_verify(out, s.write(out, ed25519.Ed25519PrivateKey.generate()))


def test_audit_verify_replays_every_count(tmp_path: Path) -> None:
    """Within its counts a log verifies; a server that signed past a day's count, past a
    window's or over a request's count is caught at the entry."""
    ok(_verify(tmp_path, "within", {"max_signatures_per_day": 2}, flows=2))
    refused(
        _verify(tmp_path, "day", {"max_signatures_per_day": 2}, flows=3),
        "request.signed",
        "in the last 24 hours",
    )
    window = {"windows": ["Fri 03:00-04:00 UTC"], "max_signatures_per_window": 1}
    refused(_verify(tmp_path, "window", window, flows=2), "request.signed", "this release window")
    two = (sha256_digest(b"a", "a"), sha256_digest(b"b", "b"))
    refused(
        _verify(
            tmp_path,
            "request",
            {"max_signatures_per_request": 1},
            digests=two,
        ),
        "request.created",
        "per request",
    )


def test_audit_verify_counts_only_the_approval_kinds_a_key_takes(tmp_path: Path) -> None:
    """A key that takes FIDO approvals only: Ed25519 approvals make no quorum offline."""
    ok(_verify(tmp_path, "any", {}))
    refused(
        _verify(tmp_path, "fido", {"approval_kinds": ["sk-ssh-ed25519"]}),
        "request.signed",
        "valid distinct approvals",
    )


def test_audit_verify_refuses_an_approval_counted_past_its_age(tmp_path: Path) -> None:
    """Approvals logged seconds apart, signed an hour later: an age of two hours verifies;
    of ten minutes, the quorum lacks them."""

    def late(name: str, age: int) -> subprocess.CompletedProcess[str]:
        keys: dict[str, ApprovalSigner] = {o: Ed25519Signer.generate() for o in OFFICERS}
        s = Synth(keys)
        policy = s.policy()
        policy["keys"]["release"]["approval_max_age_seconds"] = age
        s.started(policy)
        _flows(s, 1)
        s.entries[-1] = dataclasses.replace(s.entries[-1], time=s.t0 + HOUR)
        out = tmp_path / name
        return audit_verify(out, s.write(out, ed25519.Ed25519PrivateKey.generate()))

    ok(late("fresh", 7200))
    refused(late("stale", 600), "request.signed", "valid distinct approvals")


# -- load time -------------------------------------------------------------------------------


BAD = [
    ({"max_signatures_per_day": 0}, "max_signatures_per_day: must be from 1"),
    ({"max_signatures_per_request": "10"}, "max_signatures_per_request: must be a int"),
    ({"max_signatures_per_window": 5}, "max_signatures_per_window: needs release windows"),
    ({"outside_windows": "hold"}, "outside_windows: needs release windows"),
    ({"windows": [EARLY], "outside_windows": "wait"}, "must be refuse or hold"),
    ({"approval_max_age": "10s"}, "approval_max_age"),
    ({"approval_max_age": "31d"}, "approval_max_age"),
]


@pytest.mark.parametrize(("settings", "message"), BAD)
def test_a_limit_that_cannot_hold_stops_the_load(
    root: Path, settings: dict[str, Any], message: str
) -> None:
    """Each bad limit is named with its key and the fix."""
    cfg = valid_config()
    cfg["keys"]["release"].update(settings)
    with pytest.raises(ConfigError, match=r"keys\.release\.") as e:
        load_config(write_config(root, cfg))
    assert message in str(e.value)


def test_limits_load_and_are_recorded_in_the_policy(root: Path) -> None:
    """Set limits reach the policy document (what the log records and verifiers replay)."""
    cfg = valid_config()
    cfg["keys"]["release"].update(
        windows=[EARLY],
        max_signatures_per_request=10,
        max_signatures_per_day=100,
        max_signatures_per_window=50,
        approval_max_age="8h",
        outside_windows="hold",
    )
    recorded = load_config(write_config(root, cfg)).policy_document["keys"]["release"]
    assert {
        k: recorded[k] for k in recorded if k.startswith(("max_sig", "approval", "outside"))
    } == {
        "max_signatures_per_request": 10,
        "max_signatures_per_day": 100,
        "max_signatures_per_window": 50,
        "approval_max_age_seconds": 8 * 3600,
        "outside_windows": "hold",
    }
    assert KeyPolicy.from_dict(recorded).limits == KeyLimits(10, 100, 50, 8 * HOUR, True)
    for bad in (
        {"max_signatures_per_day": -1},
        {"approval_max_age_seconds": "8h"},
        {"outside_windows": 1},
    ):
        with pytest.raises(ValueError, match="policy"):
            KeyPolicy.from_dict({**recorded, **bad})
