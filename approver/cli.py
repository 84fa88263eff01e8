"""The `approver` command: what a security officer runs.

A group whose subcommands load only when one runs (`signer.cli.options.LazyGroup`):
`approver --help` lists them from the table below without importing the client or
grpc. The commands themselves are in `approver.commands` (and `approver.policy`);
`tests/test_cli_startup.py` holds each summary here to its command's own.
"""

from __future__ import annotations

import sys

import click

from signer import __version__
from signer.cli.options import LazyGroup, completion_command, group_profile_opt, group_server_opt

__all__ = ["COMMANDS", "main"]

_C = "approver.commands"
# name -> (module, attribute, the summary `approver --help` shows)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "approve": (_C, "approve", "Approve a request (signed with your approval key)."),
    "deny": (_C, "deny", "Deny a request; one denial ends it."),
    "freeze": (
        _C,
        "freeze",
        "Freeze a key at once (break glass): no server signs with it, or takes a request "
        "for it, until a policy version approved by the officers lifts it.",
    ),
    "keygen": (
        _C,
        "keygen",
        "Create your approval key (in a file, or in your own token with --pkcs11); give "
        "the public key file to the server's admin.",
    ),
    "list": (_C, "list_", "List requests on keys you approve for."),
    "policy": (
        "approver.policy",
        "policy",
        "Review and approve proposed policy versions (policy officers).",
    ),
    "show": (_C, "show", "Show a request: requester, CI context, key, digests, approvals."),
    "watch": (
        _C,
        "watch_",
        "Show, live, the requests waiting for your decision (Ctrl-C ends it).",
    ),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)
@group_profile_opt
@group_server_opt
def main() -> None:
    """Review and decide on signing requests as a security officer."""


@main.command()
def version() -> None:
    """Print this client's version (as `approver --version` does)."""
    click.echo(f"approver {__version__}")


main.add_command(completion_command("approver"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
