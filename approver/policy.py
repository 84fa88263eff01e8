"""`approver policy`: an officer's review and decision on a proposed policy version.

Online, `list` shows the open proposals the server holds (`signer policy propose`
recorded them) and `approve --index N` / `deny --index N` send the officer's signed
decision; the approval that completes the quorum adopts the version on every server.
Offline, a proposal file is reviewed with `show FILE` and approved with `approve FILE
--out F` for `signer policy adopt`.

`show` prints what changes (every path of the document whose value differs from
the version before it, which the proposal carries and whose hash it checks) and
the version's number and hashes; `approve` and `deny` show the same and ask. A
decision binds the version's number, its hash and the hash of the version before
it, so a server that shows a document other than the one in force gets an
approval that counts for nothing. Nothing is signed over text that had to be
escaped to be shown, or by an officer whose decision could not count (not an
officer of either version, or a key that is not the one the policy records for
them).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click

from approver.decide import approval_key
from approver.errors import ApproverError
from signer.approval.keys import ApprovalSigner
from signer.cli.kit import (
    call,
    handle_errors,
    json_opt,
    print_json,
    print_table,
    profile_opt,
    say,
    server_opt,
    stderr,
    stubs,
)
from signer.client.profile import Profile, load_profile
from signer.convert import time_of
from signer.encoding import format_time
from signer.errors import PolicyChainError, ResponseMismatchError
from signer.freeze import MAX_REASON
from signer.policy_chain import Officers, Proposal, diff, sign_approval
from signer.policy_denial import PolicyDenial, sign_denial
from signer.text import DISPLAY_RULE, is_displayable
from signer.v1 import approval_pb2, approval_pb2_grpc

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


def _proposals(
    profile: Profile, index: int = 0
) -> list[tuple[approval_pb2.PolicyProposal, Proposal]]:
    """The open proposals the server lists (only the one at `index`, if set), each
    checked as a proposal file is."""
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (approval,):
        asked = approval_pb2.ListPolicyProposalsRequest(index=index)
        listed = call(profile, approval.ListPolicyProposals, asked)
    out = []
    for pb in listed.proposals:
        try:
            out.append((pb, Proposal.from_bytes(pb.proposal)))
        except ValueError as e:
            raise ResponseMismatchError(
                f"the server listed proposal {pb.index}, which is not a policy proposal: {e}"
            ) from None
    return out


def _online(profile: Profile, index: int) -> tuple[approval_pb2.PolicyProposal, Proposal]:
    for pb, proposal in _proposals(profile, index):
        if pb.index == index:
            return pb, proposal
    raise ApproverError(
        f"no open policy proposal at audit entry {index}; see `approver policy list`"
    )


def _decisions(pb: approval_pb2.PolicyProposal) -> str:
    approved = ", ".join(d.officer for d in pb.approvals) or "none"
    denied = "; ".join(f"{d.officer} ({d.reason})" for d in pb.denials)
    return f"approved by {approved}" + (f"; denied by {denied}" if denied else "")


@policy.command("list")
@profile_opt
@server_opt
@json_opt
@handle_errors
def list_(profile_path: Path | None, server: str | None, as_json: bool) -> None:
    """List the open proposals for the next policy version that need your decision."""
    profile = load_profile(profile_path, server)
    found = _proposals(profile)
    if as_json:
        print_json(
            [
                {
                    "index": pb.index,
                    "version": p.number,
                    "sha256": p.sha256,
                    "previous_sha256": p.previous_sha256,
                    "proposed_by": pb.proposed_by,
                    "proposed_at": format_time(time_of(pb.proposed_at)),
                    "approvals": [d.officer for d in pb.approvals],
                    "denials": {d.officer: d.reason for d in pb.denials},
                }
                for pb, p in found
            ]
        )
        return
    if not found:
        say("no open policy proposals")
        return
    rows = [
        [
            str(pb.index),
            str(p.number),
            p.sha256[:16],
            pb.proposed_by,
            format_time(time_of(pb.proposed_at)),
            _decisions(pb),
        ]
        for pb, p in found
    ]
    print_table(
        "open policy proposals",
        ["index", "version", "sha256", "proposed by", "at", "decisions"],
        rows,
    )


def _target(
    proposal_file: Path | None, index: int | None, profile: Profile | None
) -> tuple[Proposal, approval_pb2.PolicyProposal | None]:
    if (proposal_file is None) == (index is None):
        raise click.UsageError("name a proposal: a PROPOSAL_FILE, or --index N (online)")
    if proposal_file is not None:
        return _load(proposal_file), None
    assert index is not None and profile is not None
    pb, proposal = _online(profile, index)
    return proposal, pb


_index_opt = click.option(
    "--index", type=int, default=None, help="The proposal's audit index (approver policy list)."
)


@policy.command("show")
@click.argument("proposal_file", type=click.Path(path_type=Path, dir_okay=False), required=False)
@_index_opt
@profile_opt
@server_opt
@json_opt
@handle_errors
def show(
    proposal_file: Path | None,
    index: int | None,
    profile_path: Path | None,
    server: str | None,
    as_json: bool,
) -> None:
    """Show a proposed policy version (a file, or --index N from the server): what
    changes from the version before it."""
    profile = load_profile(profile_path, server) if index is not None else None
    proposal, pb = _target(proposal_file, index, profile)
    if as_json:
        print_json(proposal.to_json())
        return
    _show(proposal)
    if pb is not None:
        say(f"proposed by {pb.proposed_by}; {_decisions(pb)}")


def _my_officer_key(proposal: Proposal, me: str, signer: ApprovalSigner) -> None:
    """Refuse unless `me` is an officer of either version with this very key."""
    sets = [("new", _officers(proposal.document, "new"))]
    if proposal.previous_document is not None:
        sets.append(("in-force", _officers(proposal.previous_document, "in-force")))
    mine = [(whose, o) for whose, o in sets if me in o.names]
    if not mine:
        raise ApproverError(
            f"{me} is not a policy officer of version {proposal.number} or the one before it; "
            "a decision from you would not count"
        )
    for whose, officers in mine:
        if officers.keys[me].key_id != signer.public_key().key_id:
            raise ApproverError(
                f"the {whose} policy records another approval key for {me}; this one would "
                "not count"
            )


def _refuse_unshowable(proposal: Proposal) -> None:
    if _unshowable(proposal.document) or (
        proposal.previous_document is not None and _unshowable(proposal.previous_document)
    ):
        raise ApproverError("the proposal holds text that cannot be shown; refusing to sign")


@policy.command("approve")
@click.argument("proposal_file", type=click.Path(path_type=Path, dir_okay=False), required=False)
@_index_opt
@profile_opt
@server_opt
@click.option("--out", type=click.Path(path_type=Path), help="Write it here (a file proposal).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def approve(
    proposal_file: Path | None,
    index: int | None,
    profile_path: Path | None,
    server: str | None,
    out: Path | None,
    yes: bool,
) -> None:
    """Approve a proposed policy version: shows it, asks, and sends your signed approval
    to the server (--index N), or writes it to --out for `signer policy adopt` (a
    PROPOSAL_FILE)."""
    if (proposal_file is not None) != (out is not None):
        raise click.UsageError("--out goes with a PROPOSAL_FILE (online, with --index, it is sent)")
    profile = load_profile(profile_path, server)
    proposal, pb = _target(proposal_file, index, profile)
    _show(proposal)
    _refuse_unshowable(proposal)
    me = profile.identity
    signer = approval_key(profile)
    _my_officer_key(proposal, me, signer)
    if out is not None and out.exists():
        raise ApproverError(f"{out} exists; choose another file")
    if not yes and not click.confirm(
        f"approve policy version {proposal.number} as {me}?", default=False, err=True
    ):
        raise ApproverError("not confirmed; nothing was signed")
    envelope = sign_approval(proposal.version, me, signer, dt.datetime.now(dt.UTC))
    if out is not None:
        out.write_bytes(envelope)
        stderr.print(f"your approval of policy version {proposal.number} written to {out}")
        return
    assert pb is not None
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (approval,):
        answer = call(
            profile,
            approval.ApprovePolicy,
            approval_pb2.ApprovePolicyRequest(index=pb.index, envelope=envelope),
        ).proposal
    _check_answer(answer, pb.index, proposal)
    if answer.adopted:
        say(f"policy version {proposal.number} is adopted: in force on every server now")
    else:
        say(f"your approval of policy version {proposal.number} is recorded; {_decisions(answer)}")


@policy.command("deny")
@_index_opt
@click.option("--reason", required=True, help="Why (signed, and recorded in the audit log).")
@profile_opt
@server_opt
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def deny(
    index: int | None, reason: str, profile_path: Path | None, server: str | None, yes: bool
) -> None:
    """Deny a proposed policy version (--index N): once the denials leave too few officers
    for its quorum, it is rejected."""
    if index is None:
        raise click.UsageError("name the proposal with --index N (approver policy list)")
    if not reason or len(reason) > MAX_REASON or not is_displayable(reason):
        raise click.BadParameter(f"1-{MAX_REASON} characters {DISPLAY_RULE}", param_hint="--reason")
    profile = load_profile(profile_path, server)
    proposal, pb = _target(None, index, profile)
    assert pb is not None
    _show(proposal)
    me = profile.identity
    signer = approval_key(profile)
    _my_officer_key(proposal, me, signer)
    if not yes and not click.confirm(
        f"deny policy version {proposal.number} as {me}?", default=False, err=True
    ):
        raise ApproverError("not confirmed; nothing was signed")
    v = proposal.version
    statement = PolicyDenial(
        v.number, v.sha256, v.previous_sha256, me, reason, dt.datetime.now(dt.UTC)
    )
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (approval,):
        answer = call(
            profile,
            approval.DenyPolicy,
            approval_pb2.DenyPolicyRequest(index=pb.index, envelope=sign_denial(statement, signer)),
        ).proposal
    _check_answer(answer, pb.index, proposal)
    state = "rejected" if answer.rejected else "still open"
    say(f"your denial of policy version {proposal.number} is recorded; it is {state}")


def _check_answer(answer: approval_pb2.PolicyProposal, index: int, asked: Proposal) -> None:
    """The server answered for the proposal decided on: same index, version and hash."""
    try:
        said = Proposal.from_bytes(answer.proposal)
    except ValueError as e:
        raise ResponseMismatchError(f"the server answered with no policy proposal: {e}") from None
    if answer.index != index or (said.number, said.sha256) != (asked.number, asked.sha256):
        raise ResponseMismatchError(
            f"the server answered for proposal {answer.index} (version {said.number}, "
            f"{said.sha256[:16]}...), not {index}"
        )
