"""Shared pieces of the `signer` and `approver` command lines.

Errors end a command with one clear line and an exit code: 0 success, 1
refused or failed, 2 usage or configuration error, 3 still undecided when a
wait's --timeout passed (the request goes on; fetch it later). No traceback.

Nothing another party sent reaches the terminal as is (DESIGN §14): errors,
messages (`say`, `echo`) and table cells pass through `signer.text.shown`,
which makes every control, format or separator character a visible escape,
and rich reads none of it as markup or emoji.
"""

from __future__ import annotations

import base64
import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from signer.client.profile import stubs
from signer.client.workflow import call
from signer.convert import HASH_FROM_PB, STATE_FROM_PB
from signer.errors import ConfigError, SignerError
from signer.formats import registry
from signer.model import Digest, Manifest
from signer.text import shown
from signer.v1 import types_pb2

__all__ = [
    "EXIT_FAILED",
    "EXIT_UNDECIDED",
    "EXIT_USAGE",
    "Cell",
    "call",
    "echo",
    "fail",
    "handle_errors",
    "json_opt",
    "print_json",
    "print_table",
    "profile_opt",
    "request_dict",
    "say",
    "server_opt",
    "stderr",
    "stubs",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNDECIDED = 3
stderr = Console(stderr=True, highlight=False, markup=False, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])
profile_opt = click.option(
    "--profile",
    "profile_path",
    type=click.Path(path_type=Path),
    help="Client profile (TOML); default $SIGNER_PROFILE.",
)
server_opt = click.option("--server", help="Override the profile's HOST:PORT.")
json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
_DECISION = {types_pb2.DECISION_APPROVE: "approve", types_pb2.DECISION_DENY: "deny"}


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(shown(message))}", markup=True, soft_wrap=True)
    sys.exit(code)


def say(message: str, style: str | None = None) -> None:
    """A line for people on stderr, every character from elsewhere made visible."""
    stderr.print(shown(message), style=style, soft_wrap=True)


def echo(message: str) -> None:
    """A line of output on stdout, every character from elsewhere made visible."""
    click.echo(shown(message))


def handle_errors(fn: F) -> F:
    """Turn a SignerError (RemoteError included) into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            fail(str(e), EXIT_USAGE)
        except SignerError as e:
            fail(str(e))

    return wrapper  # type: ignore[return-value]


def request_dict(r: types_pb2.SigningRequest) -> dict[str, Any]:
    """A signing request as plain JSON-able data (digests and signatures in hex)."""
    return {
        "id": r.id,
        "state": STATE_FROM_PB[r.state].value if r.state in STATE_FROM_PB else "UNKNOWN",
        "key_name": r.key_name,
        "key_id": r.key_id,
        "algorithm": r.algorithm,
        "requester": r.requester,
        "threshold": r.threshold,
        "digests": [
            {
                "algorithm": HASH_FROM_PB.get(d.algorithm, "?"),
                "digest": d.value.hex(),
                "artifact": d.artifact_name,
            }
            for d in r.digests
        ],
        "digest_count": len(r.digests),
        # Computed here from the digests received, never taken from the server: for a
        # batch, this hash is what an officer's approval signs.
        "manifest_sha256": Manifest.of(
            [
                Digest(HASH_FROM_PB.get(d.algorithm, "?"), d.value, d.artifact_name)
                for d in r.digests
            ]
        ).sha256,
        "context": dict(sorted(r.context.items())),
        "create_time": r.create_time.ToJsonString(),
        "expire_time": r.expire_time.ToJsonString(),
        "update_time": r.update_time.ToJsonString(),
        "approvals": [
            {
                "approver": a.approver,
                "decision": _DECISION.get(a.decision, "?"),
                "time": a.create_time.ToJsonString(),
                "reason": a.reason,
            }
            for a in r.approvals
        ],
        "signatures": [s.hex() for s in r.signatures],
        "status_message": r.status_message,
        **_caller_and_payload(r),
    }


def _caller_and_payload(r: types_pb2.SigningRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.HasField("caller"):
        out["caller"] = {
            "issuer": r.caller.issuer,
            "claims": dict(sorted(r.caller.claims.items())),
            "actor": r.caller.actor,
            "barred_approvers": list(r.caller.barred_approvers),
        }
    if r.payload_type or r.payload:
        out["payload_type"] = r.payload_type
        out["payload"] = base64.b64encode(r.payload).decode()
        digests = [
            Digest(HASH_FROM_PB.get(d.algorithm, "?"), d.value, d.artifact_name) for d in r.digests
        ]
        shown_by = registry.shown_by(r.payload_type)
        out.update(shown_by.describe(r.payload_type, r.payload, digests, r.algorithm))
    return out


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


# A table cell: one line, or several (each escaped on its own, then shown one under another).
Cell = str | tuple[str, ...]


def _cell(cell: Cell) -> str:
    lines = (cell,) if isinstance(cell, str) else cell
    return "\n".join(escape(shown(line)) for line in lines)  # data, never rich markup


def print_table(title: str, columns: list[str], rows: Sequence[Sequence[Cell]]) -> None:
    table = Table(title=escape(shown(title)), show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(cell) for cell in row))
    Console(width=None if sys.stdout.isatty() else 160, emoji=False, highlight=False).print(table)
