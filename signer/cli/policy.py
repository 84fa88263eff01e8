"""`signer policy`: the operator's side of the policy chain (docs/architecture.md §11).

`propose` turns a new `signer.toml` into a proposal file for the officers (and a
`policy.proposed` audit entry); `adopt` makes it the next version with their
approvals, or names whose are missing; `history` lists the versions in force with
who approved each. All run where the token and the store are; none of them can
change the policy without the officers (`signer.server.policy_admin`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from signer.cli._common import config_opt
from signer.cli.kit import handle_errors, json_opt, print_json, print_table, stderr
from signer.errors import ConfigError
from signer.policy_chain import Proposal, diff
from signer.server import policy_admin

__all__ = ["policy"]

MAX_APPROVAL_BYTES = 64 * 1024


@click.group()
def policy() -> None:
    """Change the policy with the officers' approval (admin; where the token is)."""


@policy.command("propose")
@config_opt
@click.argument("new", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Default: NEW's name + .proposal.json")
@click.option("--yes", is_flag=True, help="Overwrite --out if it exists.")
@handle_errors
def propose(config_path: Path, new: Path, out: Path | None, yes: bool) -> None:
    """Propose NEW (a whole new signer.toml) as the next policy version: recorded in the
    audit log, where the officers find it (`approver policy list`), and written as a
    proposal file for officers offline (`approver policy show | approve FILE`). Nothing
    changes until a threshold of the officers of the version in force and of the new
    one approve it (online, or with their files and `signer policy adopt`)."""
    target = out or new.with_name(new.name + ".proposal.json")
    if target.exists() and not yes:
        raise click.BadParameter(f"{target} exists; give --yes to overwrite it", param_hint="--out")
    proposal = policy_admin.propose(config_path, new, actor="admin (signer policy propose)")
    target.write_text(json.dumps(proposal.to_json(), indent=2, sort_keys=True) + "\n")
    _print_diff(proposal)
    stderr.print(
        f"proposal of policy version {proposal.number} ({proposal.sha256}) written to {target}"
    )


def _print_diff(proposal: Proposal) -> None:
    rows = [
        [path, old if old is not None else "(none)", value if value is not None else "(removed)"]
        for path, old, value in diff(proposal.previous_document, proposal.document)
    ]
    title = f"policy version {proposal.number}: changes from version {proposal.number - 1}"
    print_table(
        title if proposal.previous_document else "policy version 1", ["path", "was", "is"], rows
    )


@policy.command("adopt")
@config_opt
@click.option(
    "--approval",
    "approvals",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="An officer's approval file (from `approver policy approve`); repeat.",
)
@handle_errors
def adopt(config_path: Path, approvals: tuple[Path, ...]) -> None:
    """Make --config's policy the next version, with the officers' approvals of it.
    Refused, and nothing written, unless they come from a threshold of the officers of
    the version in force and of the new one, as distinct people with distinct keys."""
    envelopes = []
    for a in approvals:
        raw = a.read_bytes()
        if len(raw) > MAX_APPROVAL_BYTES:
            raise ConfigError(f"{a}: larger than {MAX_APPROVAL_BYTES} bytes; not an approval")
        envelopes.append(raw)
    version = policy_admin.adopt(config_path, envelopes, actor="admin (signer policy adopt)")
    stderr.print(
        f"policy version {version.number} ({version.sha256}) is in force; restart the "
        "servers with this config"
    )


@policy.command("history")
@config_opt
@json_opt
@handle_errors
def history(config_path: Path, as_json: bool) -> None:
    """The policy versions in force in turn, checked from version 1, with who approved
    each (exit 1, naming the first bad link, if the chain does not hold)."""
    found = policy_admin.history(config_path)
    if as_json:
        print_json(
            [
                {
                    "version": v.number,
                    "sha256": v.sha256,
                    "previous_sha256": v.previous_sha256,
                    "approvers": list(who),
                    "time": when.isoformat(),
                }
                for v, who, when in found
            ]
        )
        return
    rows = [
        [str(v.number), v.sha256[:16] + "...", when.isoformat(timespec="seconds"), ", ".join(who)]
        for v, who, when in found
    ]
    print_table("policy versions", ["version", "sha256", "adopted", "approved by"], rows)
