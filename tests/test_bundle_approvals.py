"""Evidence bundles: the quorum counts distinct pinned officers, each bound to this signature.

Approvals removed, repeated, taken from another request, signed by an unpinned or
fresh key, claiming another officer, tampered, denials, or malformed: each copy
of the real bundle (tests/bundle_env.py) is refused naming the approval.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from signer.approval.ed25519 import Ed25519Signer
from signer.dsse import sign_statement
from tests.bundle_env import (
    Signed,
    approval_of,
    cli_rejects,
    edited,
    flip_bit,
    rejects,
    statement_for,
)


def test_one_approval_removed_cli(signed: Signed) -> None:
    """With bob's approval gone only one officer approved: below the pinned threshold 2."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice")]

    cli_rejects(
        signed,
        "one-approval.json",
        edited(signed, edit),
        "1 distinct officers approved; the pinned threshold is 2",
    )


def test_no_approvals(signed: Signed) -> None:
    """A bundle with no approvals is refused: 0 distinct officers approved."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = []

    rejects(signed, edited(signed, edit), "0 distinct officers approved")


def test_bundle_threshold_field_is_not_trusted(signed: Signed) -> None:
    """Lowering the bundle's own threshold to 1 does not lower the pinned one."""

    def edit(d: dict[str, Any]) -> None:
        d["threshold"] = 1
        d["approvals"] = [approval_of(d, "bob")]

    rejects(signed, edited(signed, edit), "1 distinct officers approved; the pinned threshold is 2")


def test_duplicate_approval_same_officer(signed: Signed) -> None:
    """Alice's envelope twice (bob's removed) is one officer, not two."""

    def edit(d: dict[str, Any]) -> None:
        alice = approval_of(d, "alice")
        d["approvals"] = [alice, alice]

    rejects(signed, edited(signed, edit), "approval 1: alice is counted twice")


def test_second_approval_by_same_officer_freshly_signed(signed: Signed) -> None:
    """A second, distinct, valid envelope by alice still counts alice once."""
    again = sign_statement(
        statement_for(signed.request, "alice", issued_at=dt.datetime.now(dt.UTC)),
        signed.r.env.approval_key("alice"),
    ).decode()
    assert again != approval_of(signed.doc, "alice")

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice"), again]

    rejects(signed, edited(signed, edit), "alice is counted twice")


def test_approval_for_another_request(signed: Signed) -> None:
    """Bob's real approval of the second request does not count for this one."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice"), approval_of(signed.other_doc, "bob")]

    rejects(
        signed,
        edited(signed, edit),
        r"approval 1 \(bob\) is not for this signature: request_id, digests differ",
    )


def test_approval_by_unpinned_officer_dave(signed: Signed) -> None:
    """Dave has a real approval key in the environment, but the trust does not pin it."""
    dave = signed.r.clients.envelope("dave", signed.request).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice"), dave]

    rejects(signed, edited(signed, edit), "approval 1 is not signed by any pinned officer's key")


def test_approval_claiming_bob_signed_by_fresh_key(signed: Signed) -> None:
    """A statement naming bob, signed with a key that is not bob's, is refused."""
    forged = sign_statement(statement_for(signed.request, "bob"), Ed25519Signer.generate()).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice"), forged]

    rejects(signed, edited(signed, edit), "approval 1 is not signed by any pinned officer's key")


def test_approval_claiming_another_officer(signed: Signed) -> None:
    """Carol's key signing a statement that says approver=bob: the claim must match the key."""
    lying = sign_statement(
        statement_for(signed.request, "bob"), signed.r.env.approval_key("carol")
    ).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice"), lying]

    rejects(signed, edited(signed, edit), r"approval 1 \(carol\) .* approver differ")


def test_approval_signature_tampered(signed: Signed) -> None:
    """Bob's approval with a flipped signature bit is signed by no pinned key."""

    def edit(d: dict[str, Any]) -> None:
        env = json.loads(approval_of(d, "bob"))
        env["signatures"][0]["sig"] = flip_bit(env["signatures"][0]["sig"])
        d["approvals"] = [approval_of(d, "alice"), json.dumps(env)]

    rejects(signed, edited(signed, edit), "approval 1 is not signed by any pinned officer's key")


def test_denial_is_not_an_approval(signed: Signed) -> None:
    """Bob's genuinely signed denial of this request does not count as approval."""
    deny = sign_statement(
        statement_for(signed.request, "bob", decision="deny", reason="no"),
        signed.r.env.approval_key("bob"),
    ).decode()

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice"), deny]

    rejects(signed, edited(signed, edit), r"approval 1 \(bob\) .* decision differ")


def test_malformed_approval(signed: Signed) -> None:
    """An approval that is not a JSON envelope is refused as malformed."""

    def edit(d: dict[str, Any]) -> None:
        d["approvals"] = [approval_of(d, "alice"), "{not json"]

    rejects(signed, edited(signed, edit), "approval 1 is malformed")
