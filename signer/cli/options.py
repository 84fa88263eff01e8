"""What the `signer` and `approver` groups share: options before the subcommand, and
the `completion` command.

`signer --profile P status ID` and `approver --server H:P list` work as kubectl and
vault users expect: the value becomes $SIGNER_PROFILE or $SIGNER_SERVER for the
command that follows, whose own `--profile` or `--server` still wins. Kept apart
from `signer.cli.kit` so that loading the group loads nothing else.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.shell_completion import get_completion_class

__all__ = [
    "SERVER_MODULES",
    "LazyGroup",
    "completion_command",
    "group_profile_opt",
    "group_server_opt",
]

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


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand runs.

    `lazy` maps each name to (module, attribute, the summary `--help` shows); `--help`
    lists them without importing any. A module that needs what `signer[server]`
    installs, where only the client is, gives a command that says so.
    """

    def __init__(
        self, *args: Any, lazy: dict[str, tuple[str, str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attribute, _ = self.lazy[cmd_name]
            try:
                command: click.Command = getattr(importlib.import_module(module), attribute)
            except ModuleNotFoundError as e:
                if (e.name or "").split(".")[0] not in SERVER_MODULES:
                    raise
                return _needs_server(f"{ctx.find_root().info_name} {cmd_name}", e.name or "")
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in self.lazy:
                summary = _shortened(self.lazy[name][2], limit)
            else:
                summary = self.commands[name].get_short_help_str(limit)
            rows.append((name, summary))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _needs_server(name: str, missing: str) -> click.Command:
    """A stand-in for a command whose module needs what `signer[server]` installs."""

    @click.command(name.rsplit(" ", 1)[-1], context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stand_in(args: tuple[str, ...]) -> None:
        click.echo(
            f"error: `{name}` runs where the server does and needs its dependencies "
            f"(no module {missing}): pip install 'signer[server]'",
            err=True,
        )
        raise SystemExit(2)

    return stand_in


def _shortened(text: str, limit: int) -> str:
    """`text` cut at a word to fit `limit` characters, "..." saying so."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 1)].rsplit(" ", 1)[0] + "..."
