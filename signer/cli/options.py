"""What the `signer` and `approver` groups share: options before the subcommand, and
the `completion` command.

`signer --profile P status ID` and `approver --server H:P list` work as kubectl and
vault users expect: the value becomes $SIGNER_PROFILE or $SIGNER_SERVER for the
command that follows, whose own `--profile` or `--server` still wins. Kept apart
from `signer.cli.kit` so that loading the group loads nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.shell_completion import get_completion_class

__all__ = ["SERVER_MODULES", "completion_command", "group_profile_opt", "group_server_opt"]

# What `signer[server]` installs and a client-only install lacks, by module name.
SERVER_MODULES = frozenset(
    {"pkcs11", "psycopg", "psycopg_pool", "prometheus_client", "jwt", "grpc_health"}
    | {"grpc_reflection"}
)


def _into(variable: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            os.environ[variable] = str(value)  # what every command's profile falls back to
        return value

    return callback


group_profile_opt = click.option(
    "--profile",
    type=click.Path(path_type=Path),
    expose_value=False,
    callback=_into("SIGNER_PROFILE"),
    help="Client profile for the command that follows (as $SIGNER_PROFILE).",
)
group_server_opt = click.option(
    "--server",
    expose_value=False,
    callback=_into("SIGNER_SERVER"),
    help="Server HOST:PORT for the command that follows (as $SIGNER_SERVER).",
)


def completion_command(prog: str) -> click.Command:
    """`PROG completion SHELL`: the completion script of PROG's own group."""

    @click.command("completion")
    @click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
    @click.pass_context
    def completion(ctx: click.Context, shell: str) -> None:
        """Print the shell completion script.

        bash: eval "$(PROG completion bash)" in ~/.bashrc; zsh: the same with zsh in
        ~/.zshrc; fish: PROG completion fish > ~/.config/fish/completions/PROG.fish.
        """
        complete = get_completion_class(shell)
        assert complete is not None  # the choice is of the shells click completes
        root = ctx.find_root().command
        script = complete(root, {}, prog, f"_{prog.upper()}_COMPLETE")
        click.echo(script.source())

    completion.help = (completion.help or "").replace("PROG", prog)
    return completion
