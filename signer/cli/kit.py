"""Shared pieces of the `signer` and `approver` command lines.

Errors end a command with one clear line and an exit code: 0 success, 1
refused or failed, 2 usage or configuration error, 3 still undecided when a
wait's --timeout passed (the request goes on; fetch it later). No traceback.

Nothing another party sent reaches the terminal as is: errors, messages
(`say`, `echo`) and table cells pass through `signer.text.shown`, which makes
every control, format or separator character a visible escape, and rich reads
none of it as markup or emoji. Tables (`print_table`) never break an id, digest
or path, on a terminal of any width or in a CI log.
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
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from signer.cli.options import SERVER_MODULES
from signer.client.profile import stubs
from signer.client.workflow import call
from signer.convert import HASH_FROM_PB, STATE_FROM_PB
from signer.errors import ConfigError, SignerError
from signer.formats import registry
from signer.model import Digest, Manifest, State
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
    "state_opt",
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
server_opt = click.option(
    "--server", help="Override the profile's HOST:PORT; default $SIGNER_SERVER."
)
json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
state_opt = click.option(
    "--state",
    default="pending",
    show_default=True,
    type=click.Choice([s.value.lower() for s in State]),
    help="Requests in this state.",
)
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
    """Turn a SignerError (RemoteError included) into one line and an exit code; a
    command that needs the server's dependencies, where only the client is installed,
    says how to install them."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            fail(str(e), EXIT_USAGE)
        except SignerError as e:
            fail(str(e))
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] not in SERVER_MODULES:
                raise
            fail(
                f"this command runs where the server does and needs its dependencies "
                f"(no module {e.name}): pip install 'signer[server]'",
                EXIT_USAGE,
            )

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


# A table cell: one line, or several (each shown on its own, one under another).
Cell = str | tuple[str, ...]
_OVERHEAD_PER_COLUMN = 3  # a border and a space each side
_TABLE_PADDING = 2  # gap between columns when nothing is drawn


def _lines(cell: Cell) -> list[str]:
    """A cell's lines, every character from elsewhere made visible (data, never markup)."""
    return [shown(line) for line in ((cell,) if isinstance(cell, str) else cell)]


def print_table(
    title: str, columns: list[str], rows: Sequence[Sequence[Cell]], empty: str = ""
) -> None:
    """Rows for people, in a layout that fits where they are read.

    An id, digest or path (any word) is never broken: on a terminal, a table whose
    columns each fit their longest word, wrapping longer text at spaces; when even
    that is too wide, one "column: value" block per row. Elsewhere (a CI log, a
    pipe): plain columns, no box drawing and no wrapping. No rows: one sentence,
    `empty` or "no TITLE".
    """
    if not rows:
        echo(empty or f"no {title}")
        return
    cells = [[_lines(cell) for cell in row] for row in rows]
    if not sys.stdout.isatty():
        _plain(shown(title), columns, cells)
        return
    console = Console(emoji=False, highlight=False)
    widths = _fitted(columns, cells, console.width)
    if widths is None:
        _blocks(console, shown(title), columns, cells)
        return
    table = Table(title=Text(shown(title)), show_lines=False)
    for c, w in zip(columns, widths, strict=True):
        table.add_column(c, width=w, overflow="fold")
    for row in cells:
        table.add_row(*(Text("\n".join(lines)) for lines in row))
    console.print(table)


def _fitted(columns: list[str], cells: list[list[list[str]]], width: int) -> list[int] | None:
    """Column widths for `width` in which no word breaks; None if there are none."""
    room = width - _OVERHEAD_PER_COLUMN * len(columns) - 1
    need = [cell_len(c) for c in columns]
    want = list(need)
    for row in cells:
        for i, lines in enumerate(row):
            for line in lines:
                want[i] = max(want[i], cell_len(line))
                need[i] = max([need[i], *(cell_len(word) for word in line.split())])
    if sum(want) <= room:
        return want
    if sum(need) > room:
        return None
    spare, lack = room - sum(need), [w - n for w, n in zip(want, need, strict=True)]
    return [n + spare * short // sum(lack) for n, short in zip(need, lack, strict=True)]


def _blocks(console: Console, title: str, columns: list[str], cells: list[list[list[str]]]) -> None:
    """One block per row: "column: value" when it fits the width, else the value on its
    own lines under the column, wrapped only at spaces (a longer word runs on)."""
    console.print(Text(title, style="bold"))
    labelled = columns == ["field", "value"]  # a record: each row's first cell names it
    for row in cells:
        console.print()
        pairs = [(" ".join(row[0]), row[1])] if labelled else list(zip(columns, row, strict=True))
        for label, lines in pairs:
            one = f"{label}: {lines[0]}" if len(lines) == 1 else ""
            if one and cell_len(one) <= console.width:
                console.print(Text(one), soft_wrap=True)
                continue
            console.print(Text(f"{label}:"))
            for line in lines:
                console.print(Text(f"  {line}", overflow="ignore"), width=console.width)


_MAX_PAD = 80  # a column is padded to its widest cell up to this; a wider cell runs on


def _plain(title: str, columns: list[str], cells: list[list[list[str]]]) -> None:
    """Columns padded with spaces, the last one not; no drawing, no wrapping. A cell
    wider than _MAX_PAD is not padded to, so one long value does not pad every row."""
    widths = [cell_len(c) for c in columns]
    for row in cells:
        for i, lines in enumerate(row):
            fitting = [cell_len(line) for line in lines if cell_len(line) <= _MAX_PAD]
            widths[i] = max([widths[i], *fitting])
    out = [title, ""]
    for row in [[[c] for c in columns], *cells]:
        for n in range(max(len(lines) for lines in row)):
            parts = [lines[n] if n < len(lines) else "" for lines in row]
            padded = [p + " " * max(widths[i] - cell_len(p), 0) for i, p in enumerate(parts[:-1])]
            out.append((" " * _TABLE_PADDING).join([*padded, parts[-1]]).rstrip())
    click.echo("\n".join(out))
