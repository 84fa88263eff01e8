"""Unusual requests that need more officers (docs/architecture.md §12): the one way an alert holds
signing, and only when the key's policy has an `unusual` section.

A request made outside the key's usual hours, or by a requester, repository or
workflow never yet on a signature of the key, needs `extra_approvals` more; the
server records why in the request's entry, and `signer audit verify` finds the
same reasons from the log, so a server that skipped them, or signed an unusual
request with the ordinary quorum, is caught. Bad settings stop the load.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.audit.note import Verifier
from signer.audit.offline import Report, verify_dir
from signer.core.policy import ClaimRule, KeyPolicy
from signer.core.unusual import Unusual
from signer.core.windows import Window
from signer.errors import ConfigError, VerificationError
from signer.model import Request, State, TokenCaller
from signer.notify.messages import notification
from signer.server.config import load_config
from signer.v1 import types_pb2
from testbed.env import Env
from testbed.process import serving
from tests.config_files import root as root  # a fixture
from tests.config_files import valid_config, write_config
from tests.fakes import World, sha256_digest
from tests.synthetic_log import OFFICERS, Synth

# The fake clock starts on Friday 2026-01-02 03:04 UTC: outside office hours.
OFFICE = "Mon-Fri 08:00-18:00 UTC"
ISSUER = "ci-issuer"


def unusual(world: World, **section: Any) -> KeyPolicy:
    """Enforce `release` (2 of alice, bob, carol) with this `unusual` section from now on."""
    section.setdefault("extra_approvals", 1)
    section["usual_hours"] = tuple(Window.parse(w) for w in section.get("usual_hours", ()))
    section["first_signed"] = tuple(section.get("first_signed", ()))
    policy = dataclasses.replace(
        world.policy,
        unusual=Unusual(**section),
        oidc=(ClaimRule(ISSUER, (("repository", ("org/*",)),)),),
    )
    world.core.enforce(dataclasses.replace(world.core.enforced, policies={"release": policy}))
    return policy


def approved_by(world: World, r: Request, *officers: str) -> State:
    for officer in officers:
        state = world.approve(officer, r).state
    return state


def created_details(world: World, r: Request) -> dict[str, Any]:
    return next(
        e.details for e in world.audit() if e.request_id == r.id and e.event == "request.created"
    )


def oidc_request(world: World, repository: str, tag: str) -> Request:
    caller = TokenCaller(
        ISSUER, f"oidc:{ISSUER}:{repository}", {"repository": repository, "workflow": "release"}
    )
    return world.core.create(
        caller.identity,
        "release",
        [sha256_digest(tag.encode())],
        {},
        None,
        caller=caller,
    )


# -- the server --------------------------------------------------------------------------------


def test_a_requester_new_to_the_key_needs_one_more_approval(world: World) -> None:
    """ci's first request is unusual: two approvals leave it PENDING, the third signs it;
    its status and entry say why and how many. ci's next request needs the usual two."""
    unusual(world, first_signed=("requester",))
    r = world.create()
    assert r.unusual == ("requester ci has never had a signature of key 'release'",)
    assert r.status_message == (
        "unusual, so it needs 3 approvals: requester ci has never had a signature of key 'release'"
    )
    details = created_details(world, r)
    assert details["threshold"] == 3
    assert details["unusual"] == [
        {
            "reason": "first_signed",
            "seen": "requester",
            "value": "ci",
            "message": "requester ci has never had a signature of key 'release'",
        }
    ]
    assert approved_by(world, r, "alice", "bob") is State.PENDING
    assert approved_by(world, r, "carol") is State.SIGNED
    quorum = next(e for e in world.audit() if e.event == "request.quorum")
    assert quorum.details["threshold"] == 3
    again = world.create(digests=[sha256_digest(b"build 2")])
    assert again.unusual == () and "unusual" not in created_details(world, again)
    assert approved_by(world, again, "alice", "bob") is State.SIGNED


def test_a_denied_or_unsigned_request_does_not_make_its_requester_usual(world: World) -> None:
    """Only a recorded signature makes a requester known: after a denied request and a
    cancelled one, ci's third is still unusual."""
    unusual(world, first_signed=("requester",))
    denied = world.create()
    world.deny("alice", denied)
    cancelled = world.create(digests=[sha256_digest(b"build 2")])
    world.core.cancel("ci", cancelled.id, "not now")
    third = world.create(digests=[sha256_digest(b"build 3")])
    assert third.unusual and approved_by(world, third, "alice", "bob") is State.PENDING


def test_a_request_outside_the_usual_hours_needs_more_until_they_come(world: World) -> None:
    """At 03:04 on a Friday a request is unusual (off hours); at 09:04 one is not."""
    unusual(world, usual_hours=(OFFICE,))
    night = world.create()
    assert night.unusual == (f"made outside key 'release''s usual hours ({OFFICE})",)
    assert approved_by(world, night, "alice", "bob") is State.PENDING
    assert approved_by(world, night, "carol") is State.SIGNED
    world.clock.advance(dt.timedelta(hours=6))
    day = world.create(digests=[sha256_digest(b"build 2")])
    assert day.unusual == ()
    assert approved_by(world, day, "alice", "bob") is State.SIGNED


def test_only_what_the_server_verified_makes_a_request_usual(world: World) -> None:
    """The repository a token's claims name counts; the one a request's own context names
    does not, so context cannot pass an OIDC request off as a known repository. A
    repository signed for is known; another of the same organisation is not."""
    unusual(world, first_signed=("repository",))
    r = world.create(context={"repository": "org/app"})  # mTLS: no verified repository
    assert r.unusual == () and approved_by(world, r, "alice", "bob") is State.SIGNED
    first = oidc_request(world, "org/app", "a")
    assert first.unusual == ("repository org/app has never had a signature of key 'release'",)
    assert approved_by(world, first, "alice", "bob", "carol") is State.SIGNED
    assert oidc_request(world, "org/app", "b").unusual == ()
    assert oidc_request(world, "org/other", "c").unusual != ()


def test_an_unusual_request_keeps_its_quorum_across_a_restart(world: World) -> None:
    """The reasons are stored with the request: after a restart two approvals still do
    not sign it, and its threshold still reads 3."""
    policy = unusual(world, first_signed=("requester",))
    r = world.create()
    world.approve("alice", r)
    world.restart()
    world.core.enforce(dataclasses.replace(world.core.enforced, policies={"release": policy}))
    assert world.get(r.id).unusual == r.unusual
    assert approved_by(world, world.get(r.id), "bob") is State.PENDING
    assert policy.approvals_needed(bool(world.get(r.id).unusual)) == 3
    assert approved_by(world, world.get(r.id), "carol") is State.SIGNED


def test_without_an_unusual_section_nothing_is_unusual(world: World) -> None:
    """Alerts never hold signing unless the policy says so: a first request at 03:04 with
    no `unusual` section signs with the usual two."""
    r = world.create()
    assert r.unusual == () and "unusual" not in created_details(world, r)
    assert approved_by(world, r, "alice", "bob") is State.SIGNED


def test_the_waiting_notification_says_why_it_needs_more(world: World) -> None:
    """The webhook's request.waiting event names the raised count and the reasons."""
    unusual(world, first_signed=("requester",))
    r = world.create()
    entry = next(e for e in world.audit() if e.request_id == r.id)
    n = notification(entry, "release", "test")
    assert n.body["waiting_for"]["threshold"] == 3
    assert n.body["unusual"] == ["requester ci has never had a signature of key 'release'"]
    assert "(unusual: requester ci has never had" in n.summary


# -- offline -----------------------------------------------------------------------------------


def test_the_core_s_log_with_unusual_requests_verifies_offline(
    world: World, tmp_path: Path
) -> None:
    """A log the core wrote, with an unusual request signed by three and a usual one by two,
    verifies; the same log with the reasons taken out of the first request's entry is
    refused there, as is one where the unusual request's third approval is dropped."""
    policy = unusual(world, first_signed=("requester",), usual_hours=(OFFICE,))
    world.policies["release"] = policy
    world.record_policy()
    first = world.create()
    approved_by(world, first, "alice", "bob", "carol")
    world.clock.advance(dt.timedelta(hours=6))
    second = world.create(digests=[sha256_digest(b"build 2")])
    assert approved_by(world, second, "alice", "bob") is State.SIGNED
    entries = world.audit()
    report = _verify(Synth(world.officers, entries=list(entries)), tmp_path / "ok")
    assert report.signed == 2

    created = next(i for i, e in enumerate(entries) if e.event == "request.created")
    quiet = list(entries)
    details = {k: v for k, v in entries[created].details.items() if k != "unusual"}
    quiet[created] = dataclasses.replace(entries[created], details=details)
    assert _refused(Synth(world.officers, entries=quiet), tmp_path / "quiet") == (
        f"entry {created} (request.created): the request was unusual (made outside key "
        f"'release''s usual hours ({OFFICE}); requester ci has never had a signature of key "
        "'release') but its entry does not say so: it needed 3 approvals"
    )

    third = next(
        i for i, e in enumerate(entries) if e.event == "request.approved" and e.actor == "carol"
    )
    short = [e for i, e in enumerate(entries) if i != third]
    short = [dataclasses.replace(e, index=i) for i, e in enumerate(short)]
    signed = next(i for i, e in enumerate(short) if e.event == "request.signed")
    assert _refused(Synth(world.officers, entries=short), tmp_path / "short") == (
        f"entry {signed} (request.signed): signed with 2 valid distinct approvals; the policy "
        "needs 3 (an unusual request)"
    )


def _synth_policy(s: Synth, **section: Any) -> dict[str, Any]:
    policy = s.policy()
    policy["keys"]["release"]["unusual"] = {"extra_approvals": 1, **section}
    return policy


def _verify(s: Synth, where: Path) -> Report:
    verifier = s.write(where, ed25519.Ed25519PrivateKey.generate())
    return verify_dir(where, Verifier.parse(verifier))


def _refused(s: Synth, where: Path) -> str:
    with pytest.raises(VerificationError) as e:
        _verify(s, where)
    return str(e.value)


def test_a_server_that_asks_for_more_is_not_refused(tmp_path: Path) -> None:
    """A recorded reason the verifier does not find (a replica that had not yet seen a
    signature) only raised the quorum: the log verifies with three approvals."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    s.started(_synth_policy(s, usual_hours=["Mon-Sun 00:00-24:00 UTC"]))
    at = s.created()
    reason = {"reason": "first_signed", "seen": "requester", "value": "ci", "message": "new"}
    e = s.entries[at]
    s.entries[at] = dataclasses.replace(e, details={**e.details, "unusual": [reason]})
    for officer in ("alice", "bob", "carol"):
        s.decided(officer)
    s.signed(["alice", "bob", "carol"])
    assert _verify(s, tmp_path / "log").signed == 1


def test_malformed_recorded_reasons_are_refused(tmp_path: Path) -> None:
    """A reason of a kind the verifier does not know, or not an object, names the field."""
    for n, bad in enumerate(([{"reason": "moon", "message": "x"}], ["off_hours"], "x")):
        s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
        s.started(s.policy())
        at = s.created()
        e = s.entries[at]
        s.entries[at] = dataclasses.replace(e, details={**e.details, "unusual": bad})
        assert "details.unusual" in _refused(s, tmp_path / f"log{n}")


# -- load time ---------------------------------------------------------------------------------


BAD = [
    ({"extra_approvals": 0, "first_signed": ["requester"]}, "extra_approvals must be from 1"),
    ({"extra_approvals": 2, "first_signed": ["requester"]}, "more than the key's 3 approvers"),
    ({"extra_approvals": 1}, "names neither usual_hours nor first_signed"),
    ({"extra_approvals": 1, "first_signed": ["branch"]}, "'branch' is not one of requester"),
    ({"extra_approvals": 1, "usual_hours": ["9-17"]}, "usual_hours: [0]: '9-17' is not a window"),
    ({"extra_approvals": 1, "first_signed": ["requester"], "hours": []}, "did you mean"),
    ({"first_signed": ["requester"]}, "extra_approvals: missing"),
]


@pytest.mark.parametrize(("section", "message"), BAD)
def test_an_unusual_section_that_cannot_hold_stops_the_load(
    root: Path, section: dict[str, Any], message: str
) -> None:
    """Each bad setting is named under keys.release.unusual, with what is wrong."""
    cfg = valid_config()
    cfg["keys"]["release"]["unusual"] = section
    with pytest.raises(ConfigError, match=r"keys\.release\.unusual") as e:
        load_config(write_config(root, cfg))
    assert message in str(e.value)


def test_an_unusual_section_is_recorded_in_the_policy(root: Path) -> None:
    """The section reaches the policy document and reads back the same; a recorded one that
    could never be met, or has a field the verifier does not know, is refused."""
    cfg = valid_config()
    section = {"extra_approvals": 1, "usual_hours": [OFFICE], "first_signed": ["workflow"]}
    cfg["keys"]["release"]["unusual"] = section
    recorded = load_config(write_config(root, cfg)).policy_document["keys"]["release"]
    assert recorded["unusual"] == section
    policy = KeyPolicy.from_dict(recorded)
    assert policy.unusual == Unusual(1, (Window.parse(OFFICE),), ("workflow",))
    assert policy.approvals_needed() == recorded["threshold"]
    assert policy.approvals_needed(unusual=True) == recorded["threshold"] + 1
    for bad, message in (
        ({**section, "extra_approvals": 5}, "could never be signed"),
        ({**section, "soon": 1}, "unusual.soon is not a field"),
        ({**section, "extra_approvals": True}, "extra_approvals must be an integer"),
    ):
        with pytest.raises(ValueError, match=message):
            KeyPolicy.from_dict({**recorded, "unusual": bad})


@pytest.mark.sqlite_only("the server's answer is tested; the store's part on both backends above")
def test_a_running_server_answers_with_the_raised_threshold(fresh_env: Env) -> None:
    """Over gRPC, the first request of a requester the key never signed for says it needs
    3 approvals and stays PENDING after 2; once signed, the next needs the usual 2."""
    cfg = fresh_env.read_config()
    cfg["keys"]["release"]["unusual"] = {"extra_approvals": 1, "first_signed": ["requester"]}
    fresh_env.write_config(cfg)
    with serving(fresh_env) as r:
        first = r.clients.create()
        assert first.threshold == 3 and "unusual" in first.status_message
        r.clients.approve("alice", first)
        assert r.clients.approve("bob", first).state == types_pb2.REQUEST_STATE_PENDING
        assert r.clients.approve("carol", first).state == types_pb2.REQUEST_STATE_SIGNED
        second = r.clients.create()
        assert second.threshold == 2
        r.clients.approve("alice", second)
        assert r.clients.approve("bob", second).state == types_pb2.REQUEST_STATE_SIGNED
