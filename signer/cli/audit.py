"""`signer audit`: the audit log, for operators and auditors.

Operators, where the token is: `verifier` prints the audit key's signed-note
verifier string to pin in profiles; `head` shows the token's tree head and
whether the stored log extends it, and `--reset` (after restoring a backup)
needs the token PIN, a reason, and is recorded in the log.

Auditors, over gRPC: `list`, `export`, `show`, `fetch`, and `verify` offline.
Nothing read from the server is trusted unchecked: `show` checks the entry's
inclusion proof against a checkpoint signed by the pinned audit verifier,
`fetch` checks every page against signed checkpoints and consistency proofs
(`signer.client.auditor`), `verify` needs no server (`signer.audit.offline`),
and what is printed passes through `signer.text.shown`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from google.protobuf import timestamp_pb2

from signer.audit import merkle
from signer.audit.note import Verifier, open_checkpoint
from signer.audit.offline import verify_dir
from signer.cli._common import config_opt
from signer.cli.kit import (
    call,
    fail,
    handle_errors,
    json_opt,
    print_json,
    print_table,
    profile_opt,
    say,
    server_opt,
    stubs,
)
from signer.client.auditor import fetch
from signer.client.profile import Profile, load_profile, paged
from signer.errors import ConfigError, VerificationError
from signer.text import counted, shown
from signer.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """Read the audit log (auditor role)."""


def _time(text: str | None, hint: str) -> timestamp_pb2.Timestamp | None:
    if not text:
        return None
    ts = timestamp_pb2.Timestamp()
    try:
        ts.FromDatetime(dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except (ValueError, OverflowError):  # OverflowError: a time zone shifts it past 0001..9999
        raise click.BadParameter(
            f"{text!r} is not an ISO time from 0001 to 9999", param_hint=hint
        ) from None
    return ts


@audit.command("verifier")
@config_opt
@handle_errors
def audit_verifier_cmd(config_path: Path) -> None:
    """Print the audit key's signed-note verifier string (pin it in profiles)."""
    from signer.server.admin import audit_verifier  # where the token is: signer[server]

    click.echo(audit_verifier(config_path))


@audit.command("head")
@config_opt
@click.option(
    "--reset",
    is_flag=True,
    help="Make the audit key accept the stored log as it is (after restoring a backup); "
    "needs the token PIN, recorded in the log.",
)
@click.option("--reason", default="", help="Why (required with --reset; recorded in the log).")
@json_opt
@handle_errors
def audit_head_cmd(config_path: Path, reset: bool, reason: str, as_json: bool) -> None:
    """Show the token's audit tree head and whether the stored log extends it (admin)."""
    from signer.server.admin import audit_head, reset_audit_head  # signer[server]

    if reset:
        if not reason.strip() or not reason.isprintable() or len(reason) > 1024:
            raise click.UsageError("--reset needs --reason: one line of up to 1024 characters")
        new = reset_audit_head(config_path, reason, actor="admin (signer audit head --reset)")
        click.echo(
            f"tree head reset: the audit key now signs extensions of the stored log of "
            f"{new.size} entries (root {new.root_b64}), recorded as audit.head_reset"
        )
        return
    st = audit_head(config_path)
    if as_json:
        print_json(
            {
                "head": st.head.as_dict() if st.head is not None else None,
                "store": st.tree.as_dict(),
                "consistent": st.consistent,
                "reason": st.problem.reason if st.problem is not None else None,
                "problem": str(st.problem) if st.problem is not None else None,
            }
        )
    else:
        if st.head is None:
            click.echo("token head: none yet (set from the stored checkpoint at the next one)")
        else:
            click.echo(f"token head: size {st.head.size}, root {st.head.root_b64}")
        click.echo(f"stored log: size {st.tree.size}, root {st.tree.root_b64}")
        if st.problem is None:
            click.echo("consistent: the stored log extends the token's head")
    if st.problem is not None:
        fail(f"{st.problem.reason}: {st.problem}")


def _audit_filters(fn: Any) -> Any:
    """The filters shared by `audit list` and `audit export`."""
    for opt in reversed(
        [
            click.option("--event", default="", help="e.g. request.signed"),
            click.option("--actor", default="", help="Who acted (any identity)."),
            click.option("--approver", default="", help="Decisions by this officer."),
            click.option("--requester", default="", help="Events of requests made by this CI."),
            click.option("--request", "request_id", default=""),
            click.option("--key", "key_name", default=""),
            click.option("--since", help="ISO time, inclusive."),
            click.option("--until", help="ISO time, exclusive."),
            click.option(
                "--limit", default=1_000_000, show_default=True, type=click.IntRange(1, 10_000_000)
            ),
        ]
    ):
        fn = opt(fn)
    return fn


def _audit_events(profile: Profile, f: dict[str, Any]) -> Iterator[audit_pb2.AuditEvent]:
    if f["approver"] and f["actor"] and f["approver"] != f["actor"]:
        raise click.UsageError("--approver and --actor name different identities")
    req = audit_pb2.ListAuditEventsRequest(
        event=f["event"],
        actor=f["approver"] or f["actor"],
        request_id=f["request_id"],
        key_name=f["key_name"],
        requester=f["requester"],
        start_time=_time(f["since"], "--since"),
        end_time=_time(f["until"], "--until"),
        page_size=1000,
    )
    with stubs(profile, audit_pb2_grpc.AuditServiceStub) as (stub,):
        events = paged(profile, stub.ListAuditEvents, req, lambda r: r.events, f["limit"])
        for e in itertools.islice(events, f["limit"]):
            if f["approver"] and e.event not in ("request.approved", "request.denied"):
                continue
            yield e


@audit.command("list")
@profile_opt
@server_opt
@_audit_filters
@json_opt
@handle_errors
def audit_list(
    profile_path: Path | None, server: str | None, as_json: bool, **filters: Any
) -> None:
    """List audit events, oldest first, with filters."""
    events = list(_audit_events(load_profile(profile_path, server), filters))
    if as_json:
        print_json([json.loads(e.entry) for e in events])
        return
    rows = [[str(e.index), e.time.ToJsonString(), e.event, e.actor, e.request_id] for e in events]
    print_table("audit events", ["#", "time", "event", "actor", "request"], rows)


@audit.command("export")
@profile_opt
@server_opt
@_audit_filters
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@handle_errors
def audit_export(profile_path: Path | None, server: str | None, fmt: str, **filters: Any) -> None:
    """Write matching entries to stdout, one canonical JSON entry per line."""
    for e in _audit_events(load_profile(profile_path, server), filters):
        line = e.entry.decode("utf-8", errors="replace")
        click.echo(shown(line))  # honest entries hold nothing it changes


@audit.command("show")
@click.argument("index", type=click.IntRange(0, 2**63 - 2))
@profile_opt
@server_opt
@handle_errors
def audit_show(index: int, profile_path: Path | None, server: str | None) -> None:
    """Show one entry in full, with its inclusion proof in the latest checkpoint."""
    profile = load_profile(profile_path, server)
    with stubs(profile, audit_pb2_grpc.AuditServiceStub) as (stub,):
        got = call(
            profile, stub.GetEntries, audit_pb2.GetEntriesRequest(start=index, end=index + 1)
        ).events
        if not got:
            fail(f"no entry {index} in the log")
        cp = call(profile, stub.GetCheckpoint, audit_pb2.GetCheckpointRequest())
        proof = call(
            profile,
            stub.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest(index=index, tree_size=cp.tree_size),
        )
    entry = got[0].entry
    checked = "not checked (no audit_verifier in the profile)"
    if profile.audit_verifier is not None:
        checkpoint = open_checkpoint(cp.checkpoint, profile.audit_verifier)
        merkle.verify_inclusion(
            merkle.leaf_hash(entry), index, checkpoint.size, list(proof.hashes), checkpoint.root
        )
        checked = f"included in the signed checkpoint of size {checkpoint.size}"
    print_json(json.loads(entry))
    say(f"entry {index}: {checked}")


@audit.command("fetch")
@profile_opt
@server_opt
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the local copy (created; updated incrementally).",
)
@json_opt
@handle_errors
def audit_fetch(profile_path: Path | None, server: str | None, out: Path, as_json: bool) -> None:
    """Fetch new entries, verifying the checkpoint and consistency with the last fetch."""
    result = fetch(load_profile(profile_path, server), out)
    if as_json:
        print_json(
            {
                "fetched": result.new_size - result.old_size,
                "entries": result.new_size,
                "directory": str(out),
            }
        )
        return
    click.echo(
        f"fetched {counted(result.new_size - result.old_size, 'entry', 'entries')}; {out} "
        f"holds {result.new_size}, consistent with the last verified checkpoint"
    )


@audit.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--verifier",
    "vkey",
    required=True,
    help="Audit verifier key (name+keyid+key) or a file holding it.",
)
@json_opt
@handle_errors
def audit_verify(directory: Path, vkey: str, as_json: bool) -> None:
    """Verify a fetched log offline: tree, checkpoints, and every signature's quorum."""
    text = Path(vkey).read_text().strip() if Path(vkey).is_file() else vkey
    try:
        verifier = Verifier.parse(text)
    except VerificationError as e:
        raise ConfigError(f"--verifier: {e}") from None
    try:
        report = verify_dir(directory, verifier)
    except VerificationError as e:
        fail(f"verification FAILED: {e}")
    if as_json:
        print_json(dataclasses.asdict(report))
        return
    click.echo(
        f"OK: {counted(report.entries, 'entry', 'entries')}, "
        f"{counted(report.checkpoints, 'checkpoint')} signed by {verifier.name}; "
        f"{counted(report.signed, 'signature')} each backed by a valid quorum "
        f"({counted(report.approvals, 'approval')} verified, "
        f"{counted(report.policies, 'policy', 'policies')} in force, "
        f"{counted(report.policy_versions, 'policy version')} chained)"
    )
    if report.policy_versions and report.policies_before_chain:
        click.echo(
            f"note: policy version 1 was adopted after {report.policies_before_chain} server "
            "starts under policies no version approved: its officers were trusted on first use"
        )
