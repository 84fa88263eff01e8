"""`signer.policy_chain`: a policy version is in force only as the next link, approved by a
threshold of the previous version's policy officers and a threshold of its own, each
counted as distinct people and distinct keys (TUF root rotation). Unapproved, approved by
m-1 old officers, only by the new officers, one officer counted twice, a key shared by
two names, a replay, a skip, a fork (two competing proposals: only one can be the next),
an approval of another version or by a key the policy does not record: each refused,
naming what is missing; a chain walked from version 1 or from a pinned later version
stops at its first bad link."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

import pytest

from signer.approval.ed25519 import Ed25519Signer
from signer.dsse import sign_payload
from signer.errors import PolicyChainError
from signer.policy_chain import (
    MAX_APPROVALS,
    PAYLOAD_TYPE,
    PolicyApproval,
    Proposal,
    Version,
    check_chain,
    check_next,
    details_of,
    diff,
    new_lifts,
    sign_approval,
    version_of,
)

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
OFFICERS = {n: Ed25519Signer.generate() for n in ("alice", "bob", "carol", "dave", "erin")}


def _document(officers: list[str], threshold: int, **extra: Any) -> dict[str, Any]:
    return {
        "keys": {"release": {"threshold": 2, "approvers": ["alice", "bob", "carol"]}},
        "approver_keys": {n: OFFICERS[n].public_key().policy_value() for n in OFFICERS},
        "policy": {"officers": officers, "threshold": threshold},
        **extra,
    }


def _version(
    number: int, document: dict[str, Any], previous: Version | None, *signers: str
) -> Version:
    v = Version(number, document, previous.sha256 if previous else "", ())
    return replace(v, approvals=tuple(sign_approval(v, n, OFFICERS[n], NOW) for n in signers))


V1_DOC = _document(["alice", "bob", "carol"], 2)


@pytest.fixture
def v1() -> Version:
    return _version(1, V1_DOC, None, "alice", "bob")


def test_version_one_needs_a_threshold_of_its_own_officers(v1: Version) -> None:
    """Version 1 with 2 of its 3 officers is in force; with one, the error names who else
    may approve; unsigned, none."""
    assert check_next(None, v1) == ("alice", "bob")
    with pytest.raises(PolicyChainError, match=r"has 1 of the 2 .* still needed from bob, carol"):
        check_next(None, _version(1, V1_DOC, None, "alice"))
    with pytest.raises(PolicyChainError, match=r"has 0 of the 2 .*\(none approved"):
        check_next(None, _version(1, V1_DOC, None))


def test_a_change_needs_the_old_and_the_new_officers(v1: Version) -> None:
    """Version 2 (officers carol, dave, erin, 2 of 3) is in force with 2 of version 1's and
    2 of its own; with m-1 old officers, or with only the new ones, refused."""
    doc = _document(["carol", "dave", "erin"], 2)
    assert check_next(v1, _version(2, doc, v1, "alice", "bob", "dave", "erin")) == (
        "alice",
        "bob",
        "dave",
        "erin",
    )
    # carol is an officer of both: her one approval counts for each side.
    assert check_next(v1, _version(2, doc, v1, "alice", "carol", "dave")) == (
        "alice",
        "carol",
        "dave",
    )
    with pytest.raises(PolicyChainError, match="from version 1's policy officers"):
        check_next(v1, _version(2, doc, v1, "alice", "dave", "erin"))  # m-1 old
    with pytest.raises(PolicyChainError, match="from version 1's policy officers"):
        check_next(v1, _version(2, doc, v1, "dave", "erin"))  # only the new
    with pytest.raises(PolicyChainError, match="from its own policy officers"):
        check_next(v1, _version(2, doc, v1, "alice", "bob"))  # only the old


def test_an_officer_is_counted_once(v1: Version) -> None:
    """Two approvals by one officer, or by two names sharing one key, count once."""
    doc = dict(V1_DOC, access={"x": ["y"]})
    twice = _version(2, doc, v1, "alice")
    again = sign_approval(twice, "alice", OFFICERS["alice"], NOW + dt.timedelta(seconds=1))
    with pytest.raises(PolicyChainError, match="has 1 of the 2"):
        check_next(v1, replace(twice, approvals=(*twice.approvals, again)))
    shared = dict(doc)
    shared["approver_keys"] = dict(
        doc["approver_keys"], bob=OFFICERS["alice"].public_key().policy_value()
    )
    v2 = Version(2, shared, v1.sha256, ())
    by_alice_key = tuple(sign_approval(v2, n, OFFICERS["alice"], NOW) for n in ("alice", "bob"))
    old_side = tuple(sign_approval(v2, n, OFFICERS[n], NOW) for n in ("alice", "bob"))
    with pytest.raises(PolicyChainError, match="from its own policy officers"):
        check_next(v1, replace(v2, approvals=old_side + by_alice_key))


def test_replays_skips_and_forks_are_refused(v1: Version) -> None:
    """An older version again, a version that skips one, one that names another previous
    version; and of two proposals approved on top of version 2, only the one that names
    it can follow: once one is in force, the other names the wrong previous."""
    doc2 = dict(V1_DOC, access={"a": ["b"]})
    v2 = _version(2, doc2, v1, "alice", "bob")
    check_next(v1, v2)
    with pytest.raises(PolicyChainError, match="replay of an older version"):
        check_next(v2, _version(2, V1_DOC, v2, "alice", "bob"))
    with pytest.raises(PolicyChainError, match="replay"):
        check_next(v2, v1)
    with pytest.raises(PolicyChainError, match=r"skips\); the next is version 3"):
        check_next(v2, _version(4, V1_DOC, v2, "alice", "bob"))
    with pytest.raises(PolicyChainError, match="a fork"):
        check_next(v2, _version(3, V1_DOC, v1, "alice", "bob"))
    left = _version(3, dict(doc2, access={"left": ["x"]}), v2, "alice", "bob")
    right = _version(3, dict(doc2, access={"right": ["x"]}), v2, "bob", "carol")
    check_next(v2, left)
    check_next(v2, right)  # each alone could be next...
    with pytest.raises(PolicyChainError):
        check_chain([v1, v2, left, right])  # ...but not both
    with pytest.raises(PolicyChainError, match="is not the first"):
        check_next(None, v2)


def test_approvals_of_something_else_do_not_count(v1: Version) -> None:
    """An approval of another version or hash, signed by a key the policy does not record
    for that officer, a request approval's payload type, or garbage: none counts."""
    doc2 = dict(V1_DOC, access={"a": ["b"]})
    v2 = Version(2, doc2, v1.sha256, ())
    other = Version(2, dict(doc2, access={"c": ["d"]}), v1.sha256, ())
    forged = [
        sign_approval(other, "alice", OFFICERS["alice"], NOW),  # another document
        sign_approval(v2, "bob", OFFICERS["dave"], NOW),  # bob's name, dave's key
        sign_payload(
            "application/vnd.signer.approval.v1+json",
            PolicyApproval(2, v2.sha256, v1.sha256, "carol", NOW).to_bytes(),
            OFFICERS["carol"],
        ),
        b"{}",
        json.dumps({"payloadType": PAYLOAD_TYPE}).encode(),
    ]
    with pytest.raises(PolicyChainError, match=r"has 0 of the 2"):
        check_next(v1, replace(v2, approvals=tuple(forged)))


def test_a_chain_is_walked_from_version_one_or_from_a_pinned_version(v1: Version) -> None:
    """The version in force is the last of a good chain; a bad link anywhere is named; a
    verifier who pinned version 2 walks from it, and a pin not in the chain is refused."""
    v2 = _version(2, dict(V1_DOC, access={"a": ["b"]}), v1, "alice", "bob")
    v3 = _version(3, dict(V1_DOC, access={"c": ["d"]}), v2, "bob", "carol")
    assert check_chain([v1, v2, v3]) == v3
    assert check_chain([v1, v2, v3], pinned_sha256=v2.sha256) == v3
    bad = replace(v2, approvals=v2.approvals[:1])
    with pytest.raises(PolicyChainError, match="policy version 2 has 1 of the 2"):
        check_chain([v1, bad, v3])
    with pytest.raises(PolicyChainError, match="not in the chain"):
        check_chain([v1, v2, v3], pinned_sha256="0" * 64)
    with pytest.raises(PolicyChainError, match="no policy officers"):
        check_next(None, _version(1, {"keys": {}}, None, "alice"))


def test_a_proposal_file_reads_back_only_as_written(v1: Version) -> None:
    """A proposal reads back to itself; one whose hashes do not match its documents, whose
    version 1 names a previous one, or with a field more or less is refused, naming why."""
    doc2 = _document(["alice", "bob", "carol"], 3)
    proposal = Proposal(2, v1.sha256, doc2, V1_DOC)
    raw = json.dumps(proposal.to_json()).encode()
    assert Proposal.from_bytes(raw) == proposal
    for change, says in (
        ({"sha256": "00" * 32}, "sha256 is not the document's"),
        ({"previous_sha256": "11" * 32}, "previous_document is not the version"),
        ({"previous_document": None}, "null only for version 1"),
        ({"version": 1}, "null only for version 1"),
        ({"version": True}, "positive integer"),
        ({"type": "something else"}, "not a signer policy proposal v1"),
        ({"extra": 1}, "not a signer policy proposal v1"),
    ):
        bad = json.dumps({**proposal.to_json(), **change}).encode()
        with pytest.raises(ValueError, match=says):
            Proposal.from_bytes(bad)
    first = Proposal(1, "", V1_DOC, None)
    assert Proposal.from_bytes(json.dumps(first.to_json()).encode()) == first
    with pytest.raises(ValueError, match="version 1 follows no version"):
        Proposal.from_bytes(json.dumps({**first.to_json(), "previous_sha256": "ab"}).encode())


def test_the_diff_shows_every_change_and_no_two_paths_alike() -> None:
    """Changed, added and removed values each show once; a key holding a dot is quoted,
    so a change under `gh` never reads as one under `gh.officers`."""
    before = {"oidc": {"gh": {"officers": {"audience": "x"}}, "gh.officers": {"audience": "y"}}}
    after = {"oidc": {"gh": {"officers": {"audience": "z"}}, "gh.officers": {"audience": "y"}}}
    assert diff(before, after) == [("oidc.gh.officers.audience", '"x"', '"z"')]
    after2 = {"oidc": {"gh": {"officers": {"audience": "x"}}, "gh.officers": {"audience": "w"}}}
    assert diff(before, after2) == [('oidc."gh.officers".audience', '"y"', '"w"')]
    assert diff({"a": 1, "b": 2}, {"b": 3, "c": 4}) == [
        ("a", "1", None),
        ("b", "2", "3"),
        ("c", None, "4"),
    ]
    assert diff(None, {"a": [1]}) == [("a", None, "[1]")]


def test_a_recorded_version_reads_back_and_a_damaged_one_is_named(v1: Version) -> None:
    """`version_of` reads back what `details_of` recorded; a hash that is not the
    document's, a number that is not one, or approvals that are not base64 are refused
    naming the entry."""
    details = details_of(v1, ("alice", "bob"))
    assert version_of(details, 7) == v1
    for change, says in (
        ({"sha256": "00" * 32}, "entry 7: its policy hash is not its document's"),
        ({"version": "1"}, "entry 7 is not a policy version"),
        ({"approvals": ["not base64!"]}, "entry 7 is not a policy version"),
        ({"approvals": ["AA=="] * (MAX_APPROVALS + 1)}, "more than"),
    ):
        with pytest.raises(PolicyChainError, match=says):
            version_of({**details, **change}, 7)


def test_a_lift_counts_only_in_the_version_that_adds_it(v1: Version) -> None:
    """`new_lifts`: a key's lift_freeze counts in the version that sets or changes it, not
    in the versions that carry it on."""
    keys = {"release": {**V1_DOC["keys"]["release"], "lift_freeze": 12}}
    v2 = Version(2, {**V1_DOC, "keys": keys}, v1.sha256, ())
    v3 = Version(3, {**V1_DOC, "keys": keys, "other": 1}, v2.sha256, ())
    assert new_lifts(v1, v2) == {"release": 12}
    assert new_lifts(v2, v3) == {}
    assert new_lifts(None, v2) == {"release": 12}
