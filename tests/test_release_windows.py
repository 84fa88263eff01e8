"""Release windows (docs/architecture.md §12): a key with `windows` takes requests and signs only in
them. A request made outside is refused naming them and writes nothing; one approved
outside waits, APPROVED, and is signed once a window opens; `signer audit verify` and
bundle verification refuse a signature logged outside; a window that cannot be read is
named at load time."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.approval.keys import ApprovalSigner
from signer.audit.entry import AuditEntry
from signer.core.policy import KeyPolicy
from signer.core.windows import Window
from signer.errors import ConfigError, PermissionDeniedError, VerificationError
from signer.formats.trust import Pins, check_signed_under
from signer.model import State
from signer.policy_chain import Version
from signer.server.config import load_config
from tests.config_files import root as root  # a fixture
from tests.config_files import valid_config, write_config
from tests.fakes import World
from tests.harness import ok, refused
from tests.synthetic_log import OFFICERS, Synth, valid_quorum
from tests.tamper import audit_verify

OFFICE = "Mon-Fri 09:00-17:00 Europe/Berlin"


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_a_window_is_read_strictly_and_follows_the_wall_clock() -> None:
    """Days, ranges that wrap past Sunday, a day's end at 24:00, daylight saving; a bad
    day, time, order, zone or a form other than the canonical one is refused."""
    office = Window.parse(OFFICE)
    assert office.contains(_at("2026-01-02T08:30:00+00:00"))  # Friday 09:30 in Berlin (CET)
    assert not office.contains(_at("2026-01-02T16:30:00+00:00"))  # 17:30 CET
    assert office.contains(_at("2026-07-03T14:30:00+00:00"))  # 16:30 CEST
    assert not office.contains(_at("2026-07-03T15:30:00+00:00"))  # 17:30 CEST
    assert not office.contains(_at("2026-01-03T10:00:00+00:00"))  # Saturday
    weekend = Window.parse("Fri-Mon 20:00-24:00 UTC")
    assert weekend.weekdays == frozenset({4, 5, 6, 0})
    assert weekend.contains(_at("2026-01-04T23:59:59+00:00"))  # Sunday
    assert not weekend.contains(_at("2026-01-06T21:00:00+00:00"))  # Tuesday
    assert Window.parse("Mon,Wed 10:00-11:00 UTC").weekdays == frozenset({0, 2})
    for bad, phrase in [
        ("Mon-Fry 09:00-17:00 UTC", "is not a day"),
        ("Mon 09:00-25:00 UTC", "not a time of day"),
        ("Mon 17:00-09:00 UTC", "start before it ends"),
        ("Mon 09:00-17:00 Mars/Olympus", "is not a time zone"),
        ("mon 09:00-17:00 UTC", "is not a day"),
        ("Mon-Tue-Wed 09:00-17:00 UTC", "not a day or a range"),
        ("Mon 9:00-17:00 UTC", "is not a window"),
    ]:
        with pytest.raises(ValueError, match=phrase):
            Window.parse(bad)


def _office_hours(world: World) -> KeyPolicy:
    policy = dataclasses.replace(world.policy, windows=(Window.parse(OFFICE),))
    world.core.enforce(dataclasses.replace(world.core.enforced, policies={"release": policy}))
    return policy


def test_outside_its_windows_a_key_takes_no_request_and_signs_nothing(world: World) -> None:
    """At 04:04 in Berlin a request is refused naming the window, and nothing is written;
    at 16:34 it is taken; approved at 17:14 it waits, APPROVED, unsigned; on Monday
    morning the recovery signs it."""
    _office_hours(world)
    before = len(world.audit())
    with pytest.raises(PermissionDeniedError, match="release windows") as refusal:
        world.create()
    assert refusal.value.reason == "OUTSIDE_RELEASE_WINDOW" and OFFICE in str(refusal.value)
    assert len(world.audit()) == before and not world.requests()
    world.clock.advance(dt.timedelta(hours=12, minutes=30))  # Friday 16:34 in Berlin
    request = world.create()
    world.approve("alice", request)
    world.clock.advance(dt.timedelta(minutes=40))  # 17:14: closed, the request alive
    assert world.approve("bob", request).state is State.APPROVED
    assert world.core.recover() == 0 and world.get(request.id).state is State.APPROVED
    assert not world.token.calls
    world.clock.advance(dt.timedelta(days=2, hours=16))  # Monday 09:14
    world.core.recover()
    assert world.get(request.id).state is State.SIGNED


def test_audit_verify_refuses_a_signature_logged_outside_the_windows(tmp_path: Path) -> None:
    """The same flow verifies under a policy without windows or with one that holds its
    times; made outside the windows it fails at `request.created`, signed outside them
    (an hour later) at `request.signed`."""
    keys: dict[str, ApprovalSigner] = {o: Ed25519Signer.generate() for o in OFFICERS}

    def verify(
        windows: list[str] | None, name: str, late: bool = False
    ) -> subprocess.CompletedProcess[str]:
        s = Synth(keys)
        policy = s.policy()
        if windows is not None:
            policy["keys"]["release"]["windows"] = windows
        valid_quorum(s, policy)
        if late:  # the signature logged an hour after the rest
            s.entries[-1] = dataclasses.replace(s.entries[-1], time=s.t0 + dt.timedelta(hours=1))
        out = tmp_path / name
        return audit_verify(out, s.write(out, ed25519.Ed25519PrivateKey.generate()))

    ok(verify(None, "none"))
    ok(verify(["Fri 03:00-04:00 UTC"], "inside"))
    refused(verify(["Sat 00:00-24:00 UTC"], "created"), "request.created", "release windows")
    refused(verify(["Fri 03:00-04:00 UTC"], "signed", late=True), "request.signed", "signs only")


def test_a_window_that_cannot_be_read_stops_the_load(root: Path) -> None:
    """A bad window in signer.toml is named with its key and what is wrong."""
    cfg = valid_config()
    cfg["keys"]["release"]["windows"] = ["Mon-Fri 09:00-17:00 Atlantis/Capital"]
    with pytest.raises(ConfigError, match=r"keys\.release\.windows.*is not a time zone"):
        load_config(write_config(root, cfg))


def test_a_bundle_logged_outside_the_windows_fails_verification() -> None:
    """A bundle whose `request.signed` entry was logged at 04:04 in Berlin fails against a
    pinned version whose key signs only in office hours, and passes without windows."""
    version = Version(1, {"keys": {}}, "", ())
    entry = AuditEntry(
        7,
        _at("2026-01-02T03:04:05+00:00"),
        "request.signed",
        "signer",
        "r-1",
        {"policy_sha256": version.sha256},
    )
    bundle = SimpleNamespace(audit=SimpleNamespace(entry=entry.to_bytes()), key_id="ab" * 32)
    rule = KeyPolicy("release", None, ("alice",), 1, ("ci",), dt.timedelta(hours=1))
    for windows, fails in (((), False), ((Window.parse(OFFICE),), True)):
        pins = Pins(None, {}, 1, version, {}, dataclasses.replace(rule, windows=windows))  # type: ignore[arg-type]
        if fails:
            with pytest.raises(VerificationError, match="signs only in its release windows"):
                check_signed_under(pins, bundle, entry.time)  # type: ignore[arg-type]
        else:
            check_signed_under(pins, bundle, entry.time)  # type: ignore[arg-type]


def test_a_window_that_closes_while_the_token_signs_drops_the_signatures(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quorum is reached at 16:59 in Berlin and the token takes two minutes: the
    signatures are not recorded (the log would hold one outside the window); the request
    waits, APPROVED, and is signed on Monday."""
    _office_hours(world)
    world.clock.advance(dt.timedelta(hours=12, minutes=55))  # Friday 16:59 in Berlin
    request = world.create()
    world.approve("alice", request)
    world.slow_signing(monkeypatch, dt.timedelta(minutes=2))
    assert world.approve("bob", request).state is State.APPROVED
    assert "request.signed" not in world.events(request.id)
    world.clock.advance(dt.timedelta(days=2, hours=16))  # Monday 09:01
    assert world.core.recover() == 1 and world.get(request.id).state is State.SIGNED


def test_zone_names_that_mean_the_host_are_refused() -> None:
    """`localtime`, `posixrules`, `Factory` and the `posix/`, `right/` trees read differently
    on another host: refused."""
    for zone in ("localtime", "posixrules", "Factory", "posix/Europe/Berlin", "right/UTC"):
        with pytest.raises(ValueError, match="is not a time zone"):
            Window.parse(f"Mon 09:00-17:00 {zone}")


def test_a_held_request_can_be_called_off_by_its_requester(world: World) -> None:
    """Approved after the window closed, the request waits; its requester cancels it,
    and Monday's recovery signs nothing."""
    _office_hours(world)
    world.clock.advance(dt.timedelta(hours=12, minutes=30))  # Friday 16:34 in Berlin
    request = world.create()
    world.approve("alice", request)
    world.clock.advance(dt.timedelta(minutes=40))
    assert world.approve("bob", request).state is State.APPROVED
    with pytest.raises(PermissionDeniedError, match="only the requester"):
        world.core.cancel("carol", request.id, "not yours")
    assert world.core.cancel("ci", request.id, "release moved").state is State.CANCELLED
    world.clock.advance(dt.timedelta(days=2, hours=16))  # Monday 09:14
    world.core.recover()
    assert world.get(request.id).state is State.CANCELLED and not world.token.calls


def test_a_retry_after_the_window_closed_gets_the_request_made_inside(world: World) -> None:
    """The same idempotency key and parameters after 17:00 return the request made at
    16:34; other parameters, or no key, are refused as outside the window."""
    _office_hours(world)
    world.clock.advance(dt.timedelta(hours=12, minutes=30))
    first = world.create(idempotency_key="build-42")
    world.clock.advance(dt.timedelta(hours=1))  # 17:34: closed
    assert world.create(idempotency_key="build-42").id == first.id
    for kw in ({"idempotency_key": "build-43"}, {}):
        with pytest.raises(PermissionDeniedError, match="release windows"):
            world.create(**kw)  # type: ignore[arg-type]
    with pytest.raises(PermissionDeniedError, match="release windows"):
        world.create(context={"repository": "org/other"}, idempotency_key="build-42")
