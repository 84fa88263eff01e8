"""What an officer is shown of a request before deciding on it.

The request fetched is the one asked for (an answer for another id is
refused), with every digest of a batch; the table shows every field the
officer decides on (requester, OIDC caller and claims, CI context, key, key id,
digests a page at a time, the batch's manifest hash, and a carried payload as
its format shows it: an in-toto statement's subjects and predicate, and
whether the digest is that statement's) and warns when something must not be
approved. Every cell passes through
`signer.cli.kit.print_table`, which escapes whatever the server sent.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from approver.errors import ApproverError
from signer.cli.kit import Cell, print_table, request_dict, stubs
from signer.client.profile import Profile, fetch_request
from signer.errors import InvalidArgumentError, TooLargeError
from signer.formats import registry
from signer.model import INLINE_DIGESTS, Digest
from signer.v1 import approval_pb2_grpc, types_pb2

__all__ = ["PAGE_SIZE", "check_files", "describe", "fetch", "summary_dict"]


def summary_dict(r: types_pb2.SigningRequest) -> dict[str, Any]:
    """A listed request: a summary, whose digests may be only the first of a batch."""
    d = request_dict(r)
    d["digest_count"] = max(r.digest_count, len(r.digests))
    if d["digest_count"] > len(r.digests):
        d["manifest_sha256"] = None  # see `approver show` for every digest and the manifest
    return d


def fetch(profile: Profile, request_id: str) -> types_pb2.SigningRequest:
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
        rows += [list(row) for row in registry.shown_by(d["payload_type"]).rows(d)]
    if d["status_message"]:
        rows.append(["status", d["status_message"]])
    return rows


def check_files(
    d: dict[str, Any], files: Sequence[Path]
) -> tuple[list[tuple[Path, str | None]], list[list[Cell]], list[str]]:
    """The officer's own copies of the artifacts against the request: each file with the
    artifact it is (None: none), a row for each, and a problem for each matching none, for
    each artifact the request signs that none of them is, and for a name it gives twice
    (which of the two would the file vouch for?)."""
    if not files:
        return [], [], []
    payload = base64.b64decode(d["payload"]) if "payload" in d else b""
    # Plain digests are each a file's own; a payload's format says which files it names.
    fmt = registry.shown_by(d["payload_type"]) if "payload_type" in d else registry.FORMATS["raw"]
    digests = [
        Digest(x["algorithm"], bytes.fromhex(x["digest"]), x["artifact"]) for x in d["digests"]
    ]
    results: list[tuple[Path, str | None]] = []
    rows: list[list[Cell]] = []
    problems: list[str] = []
    try:
        matches = fmt.local_files(payload, digests, files)
        error = ""
    except (InvalidArgumentError, TooLargeError, ValueError) as e:
        matches, error = [[] for _ in files], f"cannot be checked: {e}"
    taken: dict[str, Path] = {}
    for f, names in zip(files, matches, strict=True):
        # Each artifact is one of the officer's files, under its own name if it can be.
        own = [n for n in names if _base(n) == f.name and n not in taken]
        free = [n for n in names if n not in taken]
        found: str | None = (own or free)[0] if own or free else None
        results.append((f, found))
        if found is None:
            why = error or (
                f"the same file as your {taken[names[0]].name}"
                if names
                else "MATCHES NOTHING in this request"
            )
            rows.append([f"your file {f.name}", f"{why}; do not approve"])
            problems.append(f"your file {f} is not a file this request signs ({why})")
            continue
        taken[found] = f
        if _base(found) != f.name:
            rows.append([f"your file {f.name}", f"is signed as {found}; do not approve"])
            problems.append(
                f"your file {f.name} is signed under another name, {found}: name your copy "
                "as the request does"
            )
        else:
            rows.append([f"your file {f.name}", f"is {found}, as the request says"])
    try:
        names = fmt.signed_names(payload, digests)
    except (InvalidArgumentError, TooLargeError, ValueError) as e:
        names, problems = [], [*problems, f"the artifacts it signs cannot be read: {e}"]
    counts = Counter(names)
    if twice := [n for n, c in counts.items() if c > 1]:
        rows.append(["named twice", f"{_some(twice)}; do not approve"])
        problems.append(f"the request names {_some(twice)} more than once")
    if missing := [n for n in counts if n not in taken]:
        rows.append(["not your files", f"{_some(missing)}; do not approve"])
        problems.append(f"the request also signs {_some(missing)}, which none of your files is")
    return results, rows, problems


def _base(name: str) -> str:
    """An artifact name's last path component (what the officer's copy is called)."""
    return name.rsplit("/", 1)[-1]


def _some(names: Sequence[str], most: int = 5) -> str:
    """Up to `most` artifact names, and how many more."""
    shown = ", ".join(n or "(unnamed)" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def describe(
    d: dict[str, Any],
    page: int | None = 1,
    page_size: int = PAGE_SIZE,
    extra: Sequence[Sequence[Cell]] = (),
) -> None:
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
    print_table("signing request", ["field", "value"], [*rows, *_footer(d), *extra])
