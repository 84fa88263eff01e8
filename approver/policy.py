"""`approver policy`: an officer's review and approval of a proposed policy version.

`show` prints what changes (every path of the document whose value differs from
the version before it, which the proposal carries and whose hash it checks) and
the version's number and hashes; `approve` shows the same, asks, and writes the
officer's approval (`signer.policy_chain.sign_approval`) to a file for `signer
policy adopt`. Nothing is signed over text that had to be escaped to be shown, or
by an officer whose approval could not count (not an officer of either version, or
a key that is not the one the policy records for them).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from approver.decide import approval_key
from approver.errors import ApproverError
from signer.cli.kit import handle_errors, json_opt, print_json, print_table, profile_opt, stderr
from signer.client.profile import load_profile
from signer.errors import PolicyChainError
from signer.policy_chain import Officers, Proposal, diff, sign_approval
from signer.text import is_displayable

__all__ = ["policy"]


@click.group()
def policy() -> None:
    """Review and approve proposed policy versions (policy officers)."""


def _load(path: Path) -> Proposal:
    try:
        return Proposal.from_bytes(path.read_bytes())
    except OSError as e:
        raise ApproverError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ApproverError(f"{path} is not a policy proposal: {e}") from None


def _unshowable(value: Any) -> bool:
    if isinstance(value, str):
        return not is_displayable(value)
    if isinstance(value, dict):
        return any(_unshowable(k) or _unshowable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unshowable(v) for v in value)
    return False


def _officers(document: Any, whose: str) -> Officers:
    try:
        return Officers.of(document)
    except PolicyChainError as e:
        raise ApproverError(f"the {whose} policy's officers cannot be read: {e}") from None


def _show(proposal: Proposal) -> None:
    rows: list[list[str]] = [
        ["version", str(proposal.number)],
        ["sha256", proposal.sha256],
        ["follows", proposal.previous_sha256 or "(nothing: the first version)"],
    ]
    changes = diff(proposal.previous_document, proposal.document)
    rows += [
        [
            path,
            f"{old if old is not None else '(none)'} -> {new if new is not None else '(removed)'}"
            if proposal.previous_document is not None
            else str(new),
        ]
        for path, old, new in changes
    ]
    title = (
        f"policy version {proposal.number}: {len(changes)} change{'s' * (len(changes) != 1)}"
        if proposal.previous_document is not None
        else "policy version 1: the whole policy"
    )
    print_table(title, ["field", "value"], rows)


@policy.command("show")
@click.argument("proposal_file", type=click.Path(path_type=Path, dir_okay=False))
@json_opt
@handle_errors
def show(proposal_file: Path, as_json: bool) -> None:
    """Show a proposed policy version: what changes from the version before it."""
    proposal = _load(proposal_file)
    if as_json:
        print_json(proposal.to_json())
        return
    _show(proposal)


@policy.command("approve")
@click.argument("proposal_file", type=click.Path(path_type=Path, dir_okay=False))
@profile_opt
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Write it here.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def approve(proposal_file: Path, profile_path: Path | None, out: Path, yes: bool) -> None:
    """Approve a proposed policy version: shows it, asks, writes your signed approval to
    --out for `signer policy adopt`."""
    proposal = _load(proposal_file)
    profile = load_profile(profile_path)
    _show(proposal)
    if _unshowable(proposal.document) or (
        proposal.previous_document is not None and _unshowable(proposal.previous_document)
    ):
        raise ApproverError("the proposal holds text that cannot be shown; refusing to approve")
    me = profile.identity
    signer = approval_key(profile)
    sets = [("new", _officers(proposal.document, "new"))]
    if proposal.previous_document is not None:
        sets.append(("in-force", _officers(proposal.previous_document, "in-force")))
    mine = [(whose, o) for whose, o in sets if me in o.names]
    if not mine:
        raise ApproverError(
            f"{me} is not a policy officer of version {proposal.number} or the one before it; "
            "an approval from you would not count"
        )
    for whose, officers in mine:
        if officers.keys[me].key_id != signer.public_key().key_id:
            raise ApproverError(
                f"the {whose} policy records another approval key for {me}; this one would "
                "not count"
            )
    if out.exists():
        raise ApproverError(f"{out} exists; choose another file")
    if not yes and not click.confirm(
        f"approve policy version {proposal.number} as {me}?", default=False, err=True
    ):
        raise ApproverError("not confirmed; nothing was written")
    envelope = sign_approval(proposal.version, me, signer, dt.datetime.now(dt.UTC))
    out.write_bytes(envelope)
    stderr.print(f"your approval of policy version {proposal.number} written to {out}")
