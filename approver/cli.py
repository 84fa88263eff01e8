"""The `approver` command: what a security officer runs.

`approve` and `deny` fetch the request, show the officer exactly what they
are deciding on (requester, CI context, key, digests), ask for confirmation,
then sign a statement bound to that request id, key, key id and digests with
the officer's own Ed25519 key (invariant 6). Passphrases come from a file, an
environment variable or a prompt, never argv.
"""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography.hazmat.primitives.asymmetric import ed25519

from approver.errors import ApproverError
from signer import __version__
from signer.algorithms import HASH_SIZES
from signer.approval.files import generate, load_private
from signer.cli.kit import (
    Cell,
    call,
    fail,
    handle_errors,
    json_opt,
    print_json,
    print_table,
    profile_opt,
    request_dict,
    say,
    server_opt,
    stubs,
)
from signer.client.profile import Profile, fetch_request, list_requests, load_profile
from signer.convert import STATE_TO_PB
from signer.dsse import Statement, key_id_of, sign_statement
from signer.errors import ConfigError
from signer.formats.intoto import predicate_json
from signer.model import INLINE_DIGESTS, Digest, State
from signer.parsing import read_secret
from signer.text import is_displayable
from signer.v1 import approval_pb2, approval_pb2_grpc, types_pb2

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])


def _approver_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApproverError as e:
            fail(str(e))

    return handle_errors(wrapper)  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__)
def main() -> None:
    """Review and decide on signing requests as a security officer."""


@main.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Private key file to create (0600); the public key goes to OUT.pub.",
)
@click.option(
    "--passphrase-file",
    type=click.Path(exists=True, path_type=Path),
    help="Encrypt the key with the passphrase in this file.",
)
@click.option("--passphrase-env", help="Encrypt the key with the passphrase in this variable.")
@click.option("--encrypt", is_flag=True, help="Ask for a passphrase on the terminal.")
@_approver_errors
def keygen(
    out: Path, passphrase_file: Path | None, passphrase_env: str | None, encrypt: bool
) -> None:
    """Create your Ed25519 approval key; give OUT.pub to the server's admin."""
    if out.exists():
        raise ApproverError(f"{out} exists; not overwriting a key")
    passphrase = None
    if passphrase_file or passphrase_env:
        passphrase = read_secret(passphrase_file, passphrase_env, "passphrase")
    elif encrypt:
        passphrase = getpass.getpass("passphrase for the new key: ")
        if passphrase != getpass.getpass("again: "):
            raise ApproverError("the passphrases differ")
    key = generate(out, passphrase)
    click.echo(f"{out}.pub  key id {key_id_of(key.public_key())}")


@main.command("list")
@profile_opt
@server_opt
@click.option(
    "--state",
    default="pending",
    show_default=True,
    type=click.Choice([s.value.lower() for s in State]),
)
@json_opt
@_approver_errors
def list_(profile_path: Path | None, server: str | None, state: str, as_json: bool) -> None:
    """List requests on keys you approve for."""
    profile = load_profile(profile_path, server)
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (stub,):
        found = list(list_requests(profile, stub, STATE_TO_PB[State(state.upper())]))
    rows = [_summary_dict(r) for r in found]
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


def _summary_dict(r: types_pb2.SigningRequest) -> dict[str, Any]:
    """A listed request: a summary, whose digests may be only the first of a batch."""
    d = request_dict(r)
    d["digest_count"] = max(r.digest_count, len(r.digests))
    if d["digest_count"] > len(r.digests):
        d["manifest_sha256"] = None  # see `approver show` for every digest and the manifest
    return d


def _fetch(profile: Profile, request_id: str) -> types_pb2.SigningRequest:
    """The request with every digest (a batch's are fetched page by page)."""
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (stub,):
        request = fetch_request(profile, stub, request_id)
    if request.id != request_id:
        raise ApproverError(
            f"asked for request {request_id}, the server answered with another request; "
            "nothing was signed"
        )
    return request


PAGE_SIZE = 50  # digests per page in `approver show`


def _header(d: dict[str, Any]) -> list[list[Cell]]:
    rows: list[list[Cell]] = [
        ["request", d["id"]],
        ["state", d["state"]],
        ["requester", d["requester"]],
        ["key", f"{d['key_name']} ({d['algorithm']})"],
        ["key id", d["key_id"]],
        ["expires", d["expire_time"]],
        [
            "approvals",
            f"{sum(a['decision'] == 'approve' for a in d['approvals'])} of {d['threshold']} needed",
        ],
    ]
    rows += [[f"context.{k}", v] for k, v in d["context"].items()]
    rows.append(["digests", str(d["digest_count"])])
    if d["digest_count"] > INLINE_DIGESTS:
        rows.append(["manifest sha256", (d["manifest_sha256"], "(your approval signs this hash)")])
    return rows


def _digest_rows(d: dict[str, Any], start: int, stop: int) -> list[list[Cell]]:
    return [
        [f"digest {i}", (x["artifact"], f"{x['algorithm']}:{x['digest']}")]
        for i, x in enumerate(d["digests"][start:stop], start)
    ]


def _footer(d: dict[str, Any]) -> list[list[Cell]]:
    rows: list[list[Cell]] = [
        [a["decision"], f"{a['approver']} at {a['time']} {a['reason']}".strip()]
        for a in d["approvals"]
    ]
    if "caller" in d:
        c = d["caller"]
        rows.append(["oidc issuer", c["issuer"]])
        rows += [[f"claim.{k}", v] for k, v in c["claims"].items()]
        if c["barred_approvers"]:
            rows.append(["may not decide", ", ".join(c["barred_approvers"])])
    if "payload_type" in d:
        rows.append(["payload", d["payload_type"]])
        if "statement" in d:
            st = d["statement"]
            rows.append(["predicate type", st["predicate_type"]])
            rows += [
                [
                    f"subject {i}",
                    (x["name"], *(f"{a}:{v}" for a, v in x["digest"].items())),
                ]
                for i, x in enumerate(st["subjects"])
            ]
            rows.append(["predicate", tuple(predicate_json(st["predicate"]).splitlines())])
        else:
            rows.append(["statement", f"UNREADABLE: {d['statement_error']}; do not approve"])
        rows.append(
            [
                "payload check",
                "the digest is the payload's DSSE PAE"
                if d["payload_matches_digest"]
                else "MISMATCH: the digest is NOT of this payload; do not approve",
            ]
        )
    if d["status_message"]:
        rows.append(["status", d["status_message"]])
    return rows


def _describe(d: dict[str, Any], page: int | None = 1, page_size: int = PAGE_SIZE) -> None:
    """The request as a table: every field, and its digests a page at a time.

    `page=None` shows every digest (what `approve` and `deny` do before asking).
    """
    count = d["digest_count"]
    pages = max(1, -(-count // page_size))
    if page is not None and not 1 <= page <= pages:
        raise click.UsageError(f"--page must be between 1 and {pages} ({count} digests)")
    start, stop = (0, count) if page is None else ((page - 1) * page_size, page * page_size)
    rows = _header(d) + _digest_rows(d, start, stop)
    if page is not None and pages > 1:
        shown = min(stop, count) - start
        rows.append(
            [
                "page",
                f"{page} of {pages}: digests {start}..{start + shown - 1} of {count}; "
                "see the others with --page N",
            ]
        )
    print_table("signing request", ["field", "value"], rows + _footer(d))


@main.command()
@click.argument("request_id")
@profile_opt
@server_opt
@json_opt
@click.option("--page", type=click.IntRange(min=1), default=1, help="Page of digests to show.")
@click.option(
    "--page-size",
    type=click.IntRange(1, 10_000),
    default=PAGE_SIZE,
    show_default=True,
    help="Digests per page.",
)
@_approver_errors
def show(
    request_id: str,
    profile_path: Path | None,
    server: str | None,
    as_json: bool,
    page: int,
    page_size: int,
) -> None:
    """Show a request: requester, CI context, key, digests, approvals.

    A batch shows its digest count and manifest hash (what an approval signs) and
    its digests a page at a time; --json gives every digest.
    """
    d = request_dict(_fetch(load_profile(profile_path, server), request_id))
    if as_json:
        print_json(d)
    else:
        _describe(d, page, page_size)


def _approval_key(profile: Profile) -> ed25519.Ed25519PrivateKey:
    if profile.approval_key is None:
        raise ConfigError(f"profile {profile.path} has no approval_key")
    passphrase = None
    if profile.approval_passphrase_file or profile.approval_passphrase_env:
        passphrase = read_secret(
            profile.approval_passphrase_file,
            profile.approval_passphrase_env,
            "approval key passphrase",
        )
    elif b"ENCRYPTED" in profile.approval_key.read_bytes()[:64] and sys.stdin.isatty():
        passphrase = getpass.getpass(f"passphrase for {profile.approval_key}: ")
    return load_private(profile.approval_key, passphrase)


def _unshowable(d: dict[str, Any]) -> list[str]:
    """What in this request an officer could not be shown faithfully (empty if nothing).

    An approval is never signed over text that had to be escaped to be shown, a
    digest that is not what its hash says, or a statement that did not parse.
    """
    texts: list[tuple[str, str]] = [
        ("request id", d["id"]),
        ("key", d["key_name"]),
        ("key id", d["key_id"]),
        ("algorithm", d["algorithm"]),
        ("requester", d["requester"]),
        ("status", d["status_message"]),
    ]
    texts += [(f"context {k}", f"{k}={v}") for k, v in d["context"].items()]
    texts += [(f"digest {i} artifact", x["artifact"]) for i, x in enumerate(d["digests"])]
    texts += [
        (f"{a['approver']}'s decision", f"{a['approver']} {a['reason']}") for a in d["approvals"]
    ]
    if "caller" in d:
        c = d["caller"]
        texts += [("oidc issuer", c["issuer"]), ("oidc actor", c["actor"])]
        texts += [(f"claim {k}", f"{k}={v}") for k, v in c["claims"].items()]
        texts += [("barred officers", o) for o in c["barred_approvers"]]
    problems = [
        f"the {what} holds characters that cannot be shown"
        for what, t in texts
        if not is_displayable(t)
    ]
    for i, x in enumerate(d["digests"]):
        size = HASH_SIZES.get(x["algorithm"])
        if size is None or len(x["digest"]) != 2 * size:
            problems.append(f"digest {i} is not a valid sha256, sha384 or sha512 digest")
    if "payload_type" in d:
        if not is_displayable(d["payload_type"]):
            problems.append("the payload type holds characters that cannot be shown")
        if "statement" not in d:
            problems.append(f"the statement cannot be shown: {d['statement_error']}")
        if not d["payload_matches_digest"]:
            problems.append("the digest to sign is not that of the statement shown")
    return problems


def _shown_digests(d: dict[str, Any]) -> tuple[Digest, ...]:
    return tuple(
        Digest(x["algorithm"], bytes.fromhex(x["digest"]), x["artifact"]) for x in d["digests"]
    )


def _decide(
    profile_path: Path | None,
    server: str | None,
    request_id: str,
    decision: str,
    reason: str,
    yes: bool,
) -> None:
    """Show the whole request, ask, sign a statement built from what was shown, send it."""
    profile = load_profile(profile_path, server)
    key = _approval_key(profile)
    d = request_dict(_fetch(profile, request_id))
    _describe(d, page=None)
    if d["state"] != "PENDING":
        raise ApproverError(f"request {request_id} is {d['state']}; nothing to decide")
    problems = _unshowable(d)
    if decision == "approve" and problems:
        raise ApproverError(f"request {request_id}: {'; '.join(problems)}; refusing to approve")
    if not yes and not click.confirm(
        f"{decision} this request as {profile.identity}?", default=False, err=True
    ):
        raise ApproverError("not confirmed; nothing was sent")
    digests = _shown_digests(d)
    statement = Statement(
        request_id=d["id"],
        key_name=d["key_name"],
        key_id=d["key_id"],
        decision=decision,
        approver=profile.identity,
        issued_at=dt.datetime.now(dt.UTC),
        reason=reason,
        **Statement.binding(digests),
    )
    envelope = sign_statement(statement, key)
    with stubs(profile, approval_pb2_grpc.ApprovalServiceStub) as (stub,):
        if decision == "approve":
            resp = call(
                profile, stub.Approve, approval_pb2.ApproveRequest(id=request_id, envelope=envelope)
            )
        else:
            resp = call(
                profile, stub.Deny, approval_pb2.DenyRequest(id=request_id, envelope=envelope)
            )
    after = request_dict(resp.request)
    if (after["id"], after["key_name"], after["key_id"], _shown_digests(after)) != (
        d["id"],
        d["key_name"],
        d["key_id"],
        digests,
    ):
        raise ApproverError(
            f"the server answered the {decision} of request {request_id} with a different "
            "request (id, key, key id or digests differ); your signed decision covers only "
            "the request shown above"
        )
    done = "approved" if decision == "approve" else "denied"
    say(f"{done}; request {request_id} is now {after['state']}")


@main.command()
@click.argument("request_id")
@profile_opt
@server_opt
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_approver_errors
def approve(request_id: str, profile_path: Path | None, server: str | None, yes: bool) -> None:
    """Approve a request (signed with your approval key)."""
    _decide(profile_path, server, request_id, "approve", "", yes)


@main.command()
@click.argument("request_id")
@click.option("--reason", required=True, help="Why (signed, and recorded in the audit log).")
@profile_opt
@server_opt
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_approver_errors
def deny(
    request_id: str, reason: str, profile_path: Path | None, server: str | None, yes: bool
) -> None:
    """Deny a request; one denial ends it."""
    _decide(profile_path, server, request_id, "deny", reason, yes)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
