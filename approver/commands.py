"""The `approver` command: what a security officer runs.

`approve` and `deny` fetch the request, show the officer exactly what they
are deciding on (requester, CI context, key, digests), ask for confirmation,
then sign a statement bound to that request id, key, key id and digests with
the officer's own approval key (invariant 6). Passphrases come from a file, an
environment variable or a prompt, never argv.

The commands are declared here (the group, `approver.cli`, loads this module
only when one of them runs); what an officer is shown is `approver.review`, and
signing a decision on what was shown is `approver.decide`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from approver.decide import approval_key, decide, token_pin, token_support, unshowable
from approver.errors import ApproverError
from approver.review import PAGE_SIZE, check_files, describe, fetch, summary_dict
from approver.watch import watch
from signer.approval.files import generate
from signer.approval.token_uri import ALGORITHMS_IN_TOKENS, TokenKeyUri
from signer.cli.kit import (
    call,
    handle_errors,
    json_opt,
    print_json,
    print_table,
    profile_opt,
    request_dict,
    say,
    server_opt,
    state_opt,
    stubs,
)
from signer.client import workflow
from signer.client.profile import list_requests, load_profile
from signer.convert import STATE_TO_PB
from signer.errors import ResponseMismatchError
from signer.freeze import MAX_REASON, Freeze, sign_freeze
from signer.model import State
from signer.parsing import read_secret
from signer.text import DISPLAY_RULE, is_displayable
from signer.v1 import approval_pb2, approval_pb2_grpc, signing_pb2_grpc

__all__ = ["approve", "deny", "freeze", "keygen", "list_", "show", "watch_"]

F = TypeVar("F", bound=Callable[..., Any])


def own_files_opt(what: str) -> Callable[[F], F]:
    """`--file F` (repeatable): the officer's own copy of an artifact, and what is done
    with it."""
    return click.option(
        "--file",
        "files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=f"Your own copy of an artifact: {what}.",
    )


@click.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Private key file to create (0600), the public key going to OUT.pub; with "
    "--pkcs11, the public key file to write.",
)
@click.option(
    "--passphrase-file",
    type=click.Path(exists=True, path_type=Path),
    help="Encrypt the key with the passphrase in this file.",
)
@click.option("--passphrase-env", help="Encrypt the key with the passphrase in this variable.")
@click.option("--encrypt", is_flag=True, help="Ask for a passphrase on the terminal.")
@click.option(
    "--pkcs11",
    "uri",
    help="Make the key in your own token instead: pkcs11:token=LABEL;object=NAME"
    "?module-path=MODULE (RFC 7512).",
)
@click.option(
    "--algorithm",
    type=click.Choice(ALGORITHMS_IN_TOKENS),
    default="ecdsa-p256",
    show_default=True,
    help="The key's algorithm, with --pkcs11 (a YubiKey's PIV applet has P-256).",
)
@click.option("--pin-file", type=click.Path(exists=True, path_type=Path), help="The token's PIN.")
@click.option("--pin-env", help="The variable holding the token's PIN.")
@json_opt
@handle_errors
def keygen(
    out: Path,
    passphrase_file: Path | None,
    passphrase_env: str | None,
    encrypt: bool,
    uri: str | None,
    algorithm: str,
    pin_file: Path | None,
    pin_env: str | None,
    as_json: bool,
) -> None:
    """Create your approval key (in a file, or in your own token with --pkcs11); give
    the public key file to the server's admin."""
    if out.exists():
        raise ApproverError(f"{out} exists; not overwriting a key")
    if uri is not None:
        if passphrase_file or passphrase_env or encrypt:
            raise click.UsageError("a key in a token has a PIN, not a passphrase")
        try:
            where = TokenKeyUri.parse(uri)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--pkcs11") from None
        generate_in_token = token_support().generate
        public = generate_in_token(where, token_pin(where.token, pin_file, pin_env), algorithm)
        out.write_bytes(public.pem())
        if as_json:
            print_json(
                {
                    "public_key": str(out),
                    "key_id": public.key_id,
                    "token": where.token,
                    "approval_key": uri,
                }
            )
            return
        click.echo(f"{out}  key id {public.key_id}  (in token {where.token})")
        click.echo(f'profile: approval_key = "{uri}"')
        return
    if pin_file or pin_env:
        raise click.UsageError("--pin-file and --pin-env go with --pkcs11")
    passphrase = None
    if passphrase_file or passphrase_env:
        passphrase = read_secret(passphrase_file, passphrase_env, "passphrase")
    elif encrypt:
        passphrase = getpass.getpass("passphrase for the new key: ")
        if passphrase != getpass.getpass("again: "):
            raise ApproverError("the passphrases differ")
    key = generate(out, passphrase)
    if as_json:
        print_json(
            {
                "public_key": f"{out}.pub",
                "key_id": key.public_key().key_id,
                "encrypted": passphrase is not None,
            }
        )
    else:
        click.echo(f"{out}.pub  key id {key.public_key().key_id}")
    if passphrase is None:
        say(
            f"warning: {out} is not encrypted: anyone who can read it can approve as you. "
            "Use --encrypt (asks for a passphrase), --passphrase-file or --passphrase-env, "
            "or keep the key in a token with --pkcs11",
            style="bold yellow",
        )


@click.command("list")
@profile_opt
@server_opt
@state_opt
@json_opt
@handle_errors
def list_(profile_path: Path | None, server: str | None, state: str, as_json: bool) -> None:
    """List requests on keys you approve for."""
    profile = load_profile(profile_path, server)
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (stub,):
        found = list(list_requests(profile, stub, STATE_TO_PB[State(state.upper())]))
    rows = [summary_dict(r) for r in found]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"{state} requests",
        ["id", "key", "requester", "digests", "approvals", "expires", "context"],
        [
            [
                d["id"],
                d["key_name"],
                d["requester"],
                str(d["digest_count"]),
                f"{sum(a['decision'] == 'approve' for a in d['approvals'])}/{d['threshold']}",
                d["expire_time"],
                " ".join(f"{k}={v}" for k, v in d["context"].items()),
            ]
            for d in rows
        ],
    )


@click.command("watch")
@profile_opt
@server_opt
@json_opt
@handle_errors
def watch_(profile_path: Path | None, server: str | None, as_json: bool) -> None:
    """Show, live, the requests waiting for your decision (Ctrl-C ends it).

    In a terminal, a table redrawn as requests come and go; in a pipe or a log, one
    line per change ("waiting ID ...", then "signed ID", "denied ID", "decided ID"),
    or one JSON object per line with --json.
    """
    profile = load_profile(profile_path, server)
    with contextlib.suppress(KeyboardInterrupt):
        watch(profile, as_json)


@click.command()
@click.argument("request_id")
@profile_opt
@server_opt
@json_opt
@click.option("--page", type=click.IntRange(min=1), default=1, help="Page of digests to show.")
@own_files_opt("shown as the artifact it is, or as matching nothing")
@click.option(
    "--page-size",
    type=click.IntRange(1, 10_000),
    default=PAGE_SIZE,
    show_default=True,
    help="Digests per page.",
)
@handle_errors
def show(
    request_id: str,
    profile_path: Path | None,
    server: str | None,
    as_json: bool,
    page: int,
    files: tuple[Path, ...],
    page_size: int,
) -> None:
    """Show a request: requester, CI context, key, digests, approvals.

    A batch shows its digest count and manifest hash (what an approval signs) and
    its digests a page at a time; --json gives every digest. With --file, each of
    your own copies of the artifacts is shown as the artifact it is (for OpenPGP,
    its digest and the hash state the server finishes), or as matching nothing.
    """
    d = request_dict(fetch(load_profile(profile_path, server), request_id))
    found, rows, problems = check_files(d, files)
    if files:  # checked against the officer's files: as `approve --file` would check it
        problems = unshowable(d) + problems
    if as_json:
        print_json({**d, "your_files": [{"file": str(f), "artifact": a} for f, a in found]})
    else:
        describe(d, page, page_size, rows)
    if problems:
        raise ApproverError("; ".join(problems))


@click.command()
@click.argument("request_id")
@profile_opt
@server_opt
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@own_files_opt("nothing is approved unless each is one the request signs")
@handle_errors
def approve(
    request_id: str,
    profile_path: Path | None,
    server: str | None,
    yes: bool,
    files: tuple[Path, ...],
) -> None:
    """Approve a request (signed with your approval key)."""
    decide(profile_path, server, request_id, "approve", "", yes, files)


@click.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="Why (signed, and recorded in the audit log).")
@profile_opt
@server_opt
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def deny(
    request_id: str, reason: str, profile_path: Path | None, server: str | None, yes: bool
) -> None:
    """Deny a request; one denial ends it."""
    decide(profile_path, server, request_id, "deny", reason, yes)


@click.command()
@click.argument("key_name")
@click.option("--reason", required=True, help="Why (signed, and recorded in the audit log).")
@profile_opt
@server_opt
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def freeze(
    key_name: str, reason: str, profile_path: Path | None, server: str | None, yes: bool
) -> None:
    """Freeze a key at once (break glass): no server signs with it, or takes a request for
    it, until a policy version approved by the officers lifts it. Any one approver of the
    key or policy officer may."""
    if not reason or len(reason) > MAX_REASON or not is_displayable(reason):
        raise click.BadParameter(f"1-{MAX_REASON} characters {DISPLAY_RULE}", param_hint="--reason")
    profile = load_profile(profile_path, server)
    signer = approval_key(profile)
    with stubs(
        profile, signing_pb2_grpc.SigningServiceStub, approval_pb2_grpc.ApprovalServiceStub
    ) as (
        signing,
        approval,
    ):
        key = workflow.public_key(profile, signing, key_name)
        if not yes and not click.confirm(
            f"freeze key {key_name} ({key.key_id[:16]}...) as {profile.identity}? Only a "
            "policy version approved by the officers lifts it",
            default=False,
            err=True,
        ):
            raise ApproverError("not confirmed; nothing was sent")
        statement = Freeze(key_name, key.key_id, profile.identity, reason, dt.datetime.now(dt.UTC))
        asked = approval_pb2.FreezeKeyRequest(
            key_name=key_name, envelope=sign_freeze(statement, signer)
        )
        held = call(profile, approval.FreezeKey, asked)
    if held.key_name != key_name:
        raise ResponseMismatchError(
            f"the server answered for key {held.key_name!r}, not {key_name}"
        )
    say(
        f"key {key_name} is frozen (by {held.officer} at audit entry {held.since_index}: "
        f"{held.reason}); to lift it, the officers approve a policy version with "
        f"lift_freeze = {held.since_index} under [keys.{key_name}]"
    )
