"""The key policy's rules: one class each in one list, applied alike by the core and by the
offline audit verifier; the policy recorded in the log read back strictly.

A toy rule registered in `signer.core.rules.RULES` (by monkeypatch) must change what
the core allows and what `verify_dir` accepts, with nothing else changed; the real
rules must hold offline on synthetic logs (`tests.synthetic_log.Synth`, signed with
in-memory keys) and on the core's own log; `KeyPolicy.from_dict` inverts
`as_dict` and names the field of any wrong type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from signer.algorithms import ALGORITHMS
from signer.approval.ed25519 import Ed25519Signer
from signer.audit.note import Verifier
from signer.audit.offline import Report, verify_dir
from signer.core import rules
from signer.core.policy import ClaimRule, KeyPolicy
from signer.dsse import Binding, Statement
from signer.encoding import canonical_json, format_time
from signer.errors import PermissionDeniedError, StatementMismatchError, VerificationError
from signer.formats.ssh import SshRequest
from signer.model import Digest, State
from tests.fakes import World
from tests.synthetic_log import Synth as _Synth
from tests.synthetic_log import valid_quorum as _valid

_OFFICERS = ("alice", "bob", "carol", "dave")


@pytest.fixture
def synth() -> _Synth:
    return _Synth({o: Ed25519Signer.generate() for o in _OFFICERS})


def _register(monkeypatch: pytest.MonkeyPatch, rule: rules.Rule) -> None:
    monkeypatch.setattr(rules, "RULES", [*rules.RULES, rule])


def _verify(s: _Synth, where: Path) -> Report:
    verifier = s.write(where, ed25519.Ed25519PrivateKey.generate())
    return verify_dir(where, Verifier.parse(verifier))


def _refused(s: _Synth, where: Path) -> str:
    with pytest.raises(VerificationError) as e:
        _verify(s, where)
    return str(e.value)


def _edit(s: _Synth, index: int, **details: Any) -> None:
    e = s.entries[index]
    s.entries[index] = dataclasses.replace(e, details={**e.details, **details})


# -- toy rules -------------------------------------------------------------------------------


class _NeedsAlice(rules.Rule):
    """A quorum must include alice."""

    def quorum_problem(
        self, policy: KeyPolicy, counted: Sequence[str], unusual: bool = False
    ) -> str | None:
        return None if "alice" in counted else "no approval by alice"


class _BobOnLeave(rules.Rule):
    """bob's decisions do not count."""

    def check_approver(self, policy: KeyPolicy, approver: str) -> None:
        if approver == "bob":
            raise PermissionDeniedError("bob is on leave", reason="ON_LEAVE")


class _NoRequestsFromCarol(rules.Rule):
    """carol may not request."""

    def check_request(self, policy: KeyPolicy, ask: rules.Ask) -> None:
        if ask.requester == "carol":
            raise PermissionDeniedError("carol may not request today", reason="NOT_TODAY")


def test_a_registered_quorum_rule_holds_in_the_core(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a quorum rule added to RULES, two approvals without alice's do not sign."""
    _register(monkeypatch, _NeedsAlice())
    r = world.create()
    world.approve("bob", r)
    assert world.approve("carol", r).state is State.PENDING
    signed = world.approve("alice", r)
    assert signed.state is State.SIGNED and len(signed.signatures) == 1


def test_a_registered_quorum_rule_holds_offline(
    synth: _Synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rule refuses, offline, a signature whose quorum lacks alice."""
    synth.started(synth.policy())
    synth.created()
    synth.decided("bob")
    synth.decided("carol")
    bad = synth.signed(["bob", "carol"])
    assert _verify(synth, tmp_path / "before").signed == 1
    _register(monkeypatch, _NeedsAlice())
    assert _refused(synth, tmp_path / "after") == (
        f"entry {bad} (request.signed): signed with no approval by alice"
    )


def test_a_registered_approver_rule_holds_in_the_core_and_offline(
    world: World, synth: _Synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An approver rule refuses bob's decision in the core and does not count it offline."""
    _register(monkeypatch, _BobOnLeave())
    r = world.create()
    with pytest.raises(PermissionDeniedError) as e:
        world.approve("bob", r)
    assert e.value.reason == "ON_LEAVE"
    assert world.core.list_for_approver("bob", frozenset(), 0, 10) == []
    with pytest.raises(PermissionDeniedError):
        world.core.get_for_approver("bob", r.id)
    assert world.get(r.id).approvals == ()
    bad = _valid(synth)  # signed by alice and bob
    assert _refused(synth, tmp_path / "log") == (
        f"entry {bad} (request.signed): signed with 1 valid distinct approvals; the policy needs 2"
    )


def test_a_registered_request_rule_holds_in_the_core_and_offline(
    world: World, synth: _Synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request rule refuses carol's request in the core (nothing written) and offline."""
    _register(monkeypatch, _NoRequestsFromCarol())
    before = len(world.audit())
    with pytest.raises(PermissionDeniedError) as e:
        world.create("carol")
    assert e.value.reason == "NOT_TODAY"
    assert world.requests() == [] and len(world.audit()) == before
    world.create("ci")
    synth.started(synth.policy())
    bad = synth.created(requester="carol")
    assert _refused(synth, tmp_path / "log") == (
        f"entry {bad} (request.created): the policy in force refuses this request: "
        "carol may not request today"
    )


def test_the_core_log_verifies_offline_under_the_same_rules(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log the core wrote (policy recorded as the server does) verifies offline, with a
    toy rule registered for both; a signature it let through the verifier accepts."""
    _register(monkeypatch, _NeedsAlice())
    world.record_policy()
    r = world.create()
    for officer in ("bob", "carol", "alice"):
        world.approve(officer, r)
    assert world.get(r.id).state is State.SIGNED
    s = _Synth(world.officers, entries=world.audit())
    report = _verify(s, tmp_path / "log")
    assert (report.signed, report.approvals, report.policies) == (1, 3, 1)


# -- the real rules, offline -----------------------------------------------------------------


def test_offline_refuses_a_request_from_someone_the_policy_does_not_name(
    synth: _Synth, tmp_path: Path
) -> None:
    """A request.created by an identity not among the key's requesters is refused."""
    synth.started(synth.policy())
    bad = synth.created(requester="mallory")
    assert _refused(synth, tmp_path / "log") == (
        f"entry {bad} (request.created): the policy in force refuses this request: "
        "'mallory' may not request signatures with key 'release'"
    )


def test_offline_refuses_a_lifetime_over_the_max_ttl(synth: _Synth, tmp_path: Path) -> None:
    """A request recorded to live longer than the key's max_ttl is refused; max_ttl passes."""
    synth.started(synth.policy())
    at = synth.created()
    created = synth.entries[at].time
    _edit(synth, at, expire_time=format_time(created + dt.timedelta(hours=1)))
    assert _verify(synth, tmp_path / "ok").entries == 2
    _edit(synth, at, expire_time=format_time(created + dt.timedelta(hours=2)))
    assert _refused(synth, tmp_path / "long") == (
        f"entry {at} (request.created): the policy in force refuses this request: "
        "a lifetime of 2:00:00 is over key 'release''s max_ttl of 1:00:00"
    )


def _oidc_policy(s: _Synth) -> dict[str, Any]:
    policy = s.policy()
    policy["keys"]["release"]["requesters"] = []
    policy["keys"]["release"]["oidc"] = [{"issuer": "gh", "repository": ["org/app"]}]
    return policy


@pytest.mark.parametrize(
    ("repository", "identity", "refusal"),
    [
        ("org/app", "oidc:gh:org/app", None),
        (
            "org/other",
            "oidc:gh:org/other",
            "repository is 'org/other', which matches none of 'org/app'",
        ),
        ("org/app", "oidc:gh:someone-else", "the token's identity is not the requester's"),
    ],
)
def test_offline_applies_the_claim_rules_to_an_oidc_request(
    synth: _Synth, tmp_path: Path, repository: str, identity: str, refusal: str | None
) -> None:
    """A pipeline's request is checked against the key's claim rules as the core checks it:
    the recorded claims must meet a rule, and the token must name the requester."""
    synth.started(_oidc_policy(synth))
    at = synth.created(requester="oidc:gh:org/app")
    caller = {
        "issuer": "gh",
        "identity": identity,
        "claims": {"repository": repository},
        "actor": "",
        "barred_approvers": [],
    }
    _edit(synth, at, caller=caller)
    if refusal is None:
        assert _verify(synth, tmp_path / "log").entries == 2
        return
    assert _refused(synth, tmp_path / "log") == (
        f"entry {at} (request.created): the policy in force refuses this request: "
        f"the token's claims do not meet key 'release''s conditions: {refusal}"
    )


def test_offline_refuses_a_request_created_with_no_policy_in_force(
    synth: _Synth, tmp_path: Path
) -> None:
    """A request.created before any server.started has no policy to admit it: refused."""
    bad = synth.created()
    assert _refused(synth, tmp_path / "log") == (
        f"entry {bad} (request.created): no policy in force for key 'release'"
    )


# -- the recorded policy ----------------------------------------------------------------------

_NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8)
_CLAIMS = _NAMES.filter(lambda c: c != "issuer")


@st.composite
def _policies(draw: st.DrawFn) -> KeyPolicy:
    """A KeyPolicy in the order `as_dict` writes it (sorted names, sorted claims)."""
    approvers = tuple(sorted(draw(st.sets(_NAMES, min_size=1, max_size=5))))
    claims = st.lists(
        st.tuples(_CLAIMS, st.lists(_NAMES, min_size=1, max_size=3).map(tuple)),
        max_size=3,
        unique_by=lambda c: c[0],
    ).map(lambda cs: tuple(sorted(cs)))
    return KeyPolicy(
        name=draw(_NAMES),
        algorithm=draw(st.none() | st.sampled_from(list(ALGORITHMS.values()))),
        approvers=approvers,
        threshold=draw(st.integers(1, len(approvers))),
        requesters=tuple(sorted(draw(st.sets(_NAMES, max_size=4)))),
        max_ttl=dt.timedelta(seconds=draw(st.integers(1, 30 * 86400))),
        oidc=tuple(
            ClaimRule(issuer, conditions)
            for issuer, conditions in draw(st.lists(st.tuples(_NAMES, claims), max_size=3))
        ),
        payload_types=tuple(sorted(draw(st.sets(st.sampled_from(["", _SSH]), max_size=2)))),
    )


@given(_policies())
def test_from_dict_inverts_as_dict(policy: KeyPolicy) -> None:
    """A policy read back from its recorded form (canonical JSON, as logged) is itself."""
    recorded = json.loads(canonical_json(policy.as_dict()))
    assert KeyPolicy.from_dict(recorded) == policy
    assert KeyPolicy.from_dict(policy.as_dict()) == policy


_AT = "details.policy.keys.release"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": 5}, f"{_AT}.name must be a string, not an integer"),
        ({"algorithm": 5}, f"{_AT}.algorithm must be a string, not an integer"),
        ({"algorithm": "rot13"}, f"{_AT}.algorithm must be one of ecdsa-p256, "),
        ({"requesters": "ci"}, f"{_AT}.requesters must be a list, not a string"),
        ({"requesters": [None]}, f"{_AT}.requesters[0] must be a string, not null"),
        ({"approvers": ["alice", "alice"]}, f"{_AT}.approvers lists an approver twice"),
        ({"threshold": "2"}, f"{_AT}.threshold must be an integer, not a string"),
        ({"max_ttl_seconds": True}, f"{_AT}.max_ttl_seconds must be an integer, not a boolean"),
        ({"max_ttl_seconds": 0}, f"{_AT}.max_ttl_seconds must be from 1 to 2592000"),
        ({"max_ttl_seconds": 10**30}, f"{_AT}.max_ttl_seconds must be from 1 to 2592000"),
        ({"oidc": {}}, f"{_AT}.oidc must be a list, not an object"),
        ({"oidc": ["gh"]}, f"{_AT}.oidc[0] must be an object, not a string"),
        ({"oidc": [{"ref": ["x"]}]}, f"{_AT}.oidc[0].issuer is missing"),
        ({"oidc": [{"issuer": "gh", "ref": "x"}]}, f"{_AT}.oidc[0].ref must be a list"),
        ({"oidc": [{"issuer": "gh", "ref": [1]}]}, f"{_AT}.oidc[0].ref[0] must be a string"),
        ({"witnesses": 2}, f"{_AT}.witnesses is not a policy field this verifier knows"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else None,
)
def test_a_recorded_policy_with_a_bad_field_is_refused_naming_it(
    synth: _Synth, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """A recorded key policy with a field of the wrong type, range or name fails verify with
    one line naming the field; `from_dict` raises the same ValueError."""
    policy = synth.policy()
    policy["keys"]["release"].update(change)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        KeyPolicy.from_dict(policy["keys"]["release"], _AT)
    synth.started(policy)
    refusal = _refused(synth, tmp_path / "log")
    assert refusal.startswith(f"entry 0 (server.started): {message}"), refusal


def test_a_recorded_policy_under_another_name_is_refused(synth: _Synth, tmp_path: Path) -> None:
    """A key policy recorded under one key name but naming another is refused."""
    policy = synth.policy()
    policy["keys"]["release"]["name"] = "staging"
    synth.started(policy)
    assert _refused(synth, tmp_path / "log") == (
        f"entry 0 (server.started): {_AT}.name must be 'release', the name it is recorded under"
    )


# -- the one binding rule ---------------------------------------------------------------------


def test_binding_names_every_field_that_differs(world: World) -> None:
    """`Binding.check` returns a statement that binds the request, else names each field."""
    r = world.create()
    st_ok = Statement.for_request(r, "approve", "alice", world.clock())
    assert Binding.of(r).check(st_ok, "alice", "approve") is st_ok
    other = dataclasses.replace(st_ok, key_id="00" * 32, request_id="x")
    with pytest.raises(StatementMismatchError) as e:
        Binding.of(r).check(other, "bob", "approve")
    assert e.value.fields == ("approver", "request_id", "key_id")
    assert e.value.reason == "STATEMENT_MISMATCH"
    assert str(e.value) == (
        f"the signed statement does not match request {r.id}: approver, request_id, key_id "
        "differ; re-fetch the request and sign again"
    )


def test_the_core_and_the_offline_verifier_call_the_one_binding_rule(
    world: World, synth: _Synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `Binding.check` refusing everything, the core refuses a correct approval and the
    verifier a correct log: neither has a copy of the rule."""

    def refuse(self: Binding, statement: Statement, approver: str, decision: str) -> Statement:
        raise StatementMismatchError("refused by the one rule", ("digests",))

    r = world.create()
    _valid(synth)
    monkeypatch.setattr(Binding, "check", refuse)
    with pytest.raises(StatementMismatchError, match="refused by the one rule"):
        world.approve("alice", r)
    assert _refused(synth, tmp_path / "log") == (
        "entry 2 (request.approved): the approve by alice is not bound to this request"
    )


# -- a key kept to its typed requests ------------------------------------------------------

_SSH = "application/vnd.signer.sshsig.v1+json"


def test_a_key_kept_to_ssh_refuses_plain_digests_and_other_payloads(world: World) -> None:
    """With payload_types = [sshsig], a bare digest (which could be an SSHSIG signed-data
    digest officers cannot read as one) and a DSSE statement are refused, nothing is
    recorded; an SSH request is taken."""
    old = world.policies["release"]
    world.policies["release"] = dataclasses.replace(old, payload_types=(_SSH,))
    world.restart()
    before = len(world.audit())
    with pytest.raises(PermissionDeniedError, match=re.escape("signs only " + _SSH)):
        world.create()
    with pytest.raises(PermissionDeniedError) as e:
        world.core.create(
            "ci",
            "release",
            [],
            {},
            None,
            payload_type="application/vnd.in-toto+json",
            payload=b"{}",
        )
    assert e.value.reason == "FORMAT_NOT_ALLOWED"
    assert world.requests() == [] and len(world.audit()) == before
    ssh = SshRequest("git", "sha512", [Digest("sha512", bytes(64), "commit")])
    made = world.core.create(
        "ci",
        "release",
        list(ssh.signed_digests("ecdsa-p256")),
        {},
        None,
        payload_type=_SSH,
        payload=ssh.to_bytes(),
    )
    assert made.payload_type == _SSH


def test_offline_refuses_a_plain_request_on_a_key_kept_to_ssh(
    synth: _Synth, tmp_path: Path
) -> None:
    """A request.created of plain digests under a policy kept to SSH requests is refused."""
    policy = synth.policy()
    policy["keys"]["release"]["payload_types"] = [_SSH]
    synth.started(policy)
    bad = synth.created()
    assert _refused(synth, tmp_path / "log") == (
        f"entry {bad} (request.created): the policy in force refuses this request: "
        f"key 'release' signs only {_SSH}, not plain digests"
    )


@pytest.mark.parametrize(
    "value, message",
    [([], "names at least one"), ([_SSH, _SSH], "lists one twice"), ("x", "list")],
)
def test_recorded_payload_types_are_checked(value: Any, message: str) -> None:
    """A recorded policy's payload_types must be a non-empty list without repeats."""
    d = KeyPolicy("release", None, ("alice",), 1, ("ci",), dt.timedelta(hours=1)).as_dict()
    d["payload_types"] = value
    with pytest.raises(ValueError, match=message):
        KeyPolicy.from_dict(d)
