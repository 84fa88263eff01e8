"""The `signer` command: a group whose subcommands load only when one runs.

Each audience's commands live in their own module: `operator` (init, serve, keys),
`requester` (sign, status, list, cancel, public-key: CI), `verify` (whoever
downloads an artifact, offline), `audit` (operators and auditors), `policy`, and
the drop-ins other tools call (`dropins`). `signer --help` lists them from the
table below without importing any (so it answers at once); `signer NAME` imports
the one module NAME needs. `tests/test_cli_startup.py` holds each summary here to
its command's own.
"""

from __future__ import annotations

import click

from signer import __version__
from signer.cli.options import LazyGroup, completion_command, group_profile_opt, group_server_opt

__all__ = ["COMMANDS", "main"]

# name -> (module, attribute, the summary `signer --help` shows)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "audit": ("signer.cli.audit", "audit", "Read the audit log (auditor role)."),
    "cancel": ("signer.cli.requester", "cancel", "Cancel one of your pending requests."),
    "gpg": (
        "signer.cli.dropins",
        "gpg",
        "A drop-in for git's gpg.program and rpm's %__gpg: signing calls sign through the "
        "service (OpenPGP), every other call runs the real gpg.",
    ),
    "init": (
        "signer.cli.operator",
        "init",
        "Create a dev environment: token, keys, CA, certificates, config, profiles.",
    ),
    "keys": (
        "signer.cli.operator",
        "keys",
        "The keys the server offers; with a subcommand, the keys in the token (admin).",
    ),
    "list": (
        "signer.cli.requester",
        "list_",
        "List your own requests in one state (pending by default), oldest first.",
    ),
    "policy": (
        "signer.cli.policy",
        "policy",
        "Change the policy with the officers' approval (admin; where the token is).",
    ),
    "public-key": (
        "signer.cli.requester",
        "public_key",
        "Fetch a signing key's public key from the server (checked against its key id).",
    ),
    "serve": ("signer.cli.operator", "serve", "Run the signing server until SIGTERM or SIGINT."),
    "sign": (
        "signer.cli.requester",
        "sign",
        "Ask for a signature; print the request id at once; optionally wait for it.",
    ),
    "ssh-keygen": (
        "signer.cli.dropins",
        "ssh_keygen",
        "A drop-in for git's gpg.ssh.program: `-Y sign` signs through the service, every "
        "other call runs the real ssh-keygen.",
    ),
    "status": (
        "signer.cli.requester",
        "status",
        "Show one of your requests (and fetch its signature).",
    ),
    "verify": (
        "signer.cli.verify",
        "verify",
        "Verify a signature offline (exit 0 valid, 1 invalid).",
    ),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)
@group_profile_opt
@group_server_opt
def main() -> None:
    """Threshold signing: keys in an HSM, signatures only after m-of-n approval."""


@main.command()
def version() -> None:
    """Print this client's version (as `signer --version` does)."""
    click.echo(f"signer {__version__}")


main.add_command(completion_command("signer"))
