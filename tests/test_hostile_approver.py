"""`approver` and `signer audit list` against a hostile server: nothing altered is obeyed.

A proxy (tests/hostile.py) alters the server's answers to an officer: an answer
for another request or other digests is refused, control and format characters
are shown escaped and never approved (a denial stays possible), and listings
that never end stop after a few calls.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from signer.v1 import approval_pb2, audit_pb2, types_pb2
from testbed.clients import Clients
from testbed.commands import APPROVER, SIGNER, run
from testbed.env import Env
from tests.hostile import (
    CLIENT_SIDE,
    ESC,
    Abort,
    HostileServer,
    hostile,
    on_answer,
    other_digest,
    unchanged,
)

pytestmark = CLIENT_SIDE

# -- officers -------------------------------------------------------------------------


def _approver(proxy: HostileServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run([*APPROVER, *args, "--profile", str(proxy.profile("alice"))], check=False)


def test_approver_refuses_an_answer_for_another_request(shared_env: Env, clients: Clients) -> None:
    """GetRequest answered with another request: nothing is signed or sent."""
    wanted = clients.create(who="ci3")
    decoy = clients.create(who="ci3")

    def tamper(method: str, answer: Any) -> Any:
        if method == "GetRequest":
            answer.request.CopyFrom(
                clients.approval("alice")
                .GetRequest(approval_pb2.GetRequestRequest(id=decoy.id), timeout=20)
                .request
            )
        return answer

    with hostile(shared_env, "alice", tamper) as proxy:
        p = _approver(proxy, "approve", wanted.id, "--yes")
        assert proxy.calls["Approve"] == 0
    assert p.returncode == 1 and "answered with another request" in p.stderr
    assert (
        not clients.get(wanted.id, "ci3").approvals and not clients.get(decoy.id, "ci3").approvals
    )


def test_approver_reports_an_approve_answer_for_other_digests(
    shared_env: Env, clients: Clients
) -> None:
    """An Approve answer whose digests differ from those shown and signed is an error."""
    request = clients.create(who="ci3")

    with hostile(shared_env, "alice", on_answer("Approve", other_digest)) as proxy:
        p = _approver(proxy, "approve", request.id, "--yes")
    assert p.returncode == 1 and "with a different request" in p.stderr
    # What was signed is the statement over what was shown: the real request.
    assert [a.approver for a in clients.get(request.id, "ci3").approvals] == ["alice"]


HIDDEN = [
    ("artifact", lambda r: setattr(r.digests[0], "artifact_name", f"a{ESC}[8mhidden{ESC}[0m")),
    ("context", lambda r: r.context.__setitem__("commit", "abc\u202edcba")),
    ("requester", lambda r: setattr(r, "requester", f"ci{ESC}[2J")),
    ("status", lambda r: setattr(r, "status_message", "ok\u200b")),
]


@pytest.mark.parametrize("change", [c for _, c in HIDDEN], ids=[name for name, _ in HIDDEN])
def test_approver_shows_escaped_text_and_refuses_to_approve_it(
    shared_env: Env, clients: Clients, change: Callable[[types_pb2.SigningRequest], None]
) -> None:
    """Control or format characters from the server are shown as escapes; approve refuses."""
    request = clients.create(who="ci3")

    with hostile(shared_env, "alice", on_answer("GetRequest", change)) as proxy:
        shown = _approver(proxy, "show", request.id)
        approved = _approver(proxy, "approve", request.id, "--yes")
        assert proxy.calls["Approve"] == 0
    assert shown.returncode == 0, shown.stderr
    for out in (shown.stdout, approved.stdout, approved.stderr):
        assert ESC not in out and "\u202e" not in out and "\u200b" not in out
    assert "\\x1b" in shown.stdout or "\\u202e" in shown.stdout or "\\u200b" in shown.stdout
    assert approved.returncode == 1 and "cannot be shown" in approved.stderr
    assert not clients.get(request.id, "ci3").approvals


def test_a_denial_of_escaped_text_is_still_possible(shared_env: Env, clients: Clients) -> None:
    """An officer can always deny a request, even one whose text had to be escaped."""
    request = clients.create(who="ci3")

    def escaped(r: types_pb2.SigningRequest) -> None:
        r.requester = f"ci{ESC}[2J"

    with hostile(shared_env, "alice", on_answer("GetRequest", escaped)) as proxy:
        p = _approver(proxy, "deny", request.id, "--reason", "odd text", "--yes")
    assert p.returncode == 0, p.stderr
    assert clients.get(request.id, "ci3").state == types_pb2.REQUEST_STATE_DENIED


def test_error_texts_from_the_server_are_escaped(shared_env: Env, clients: Clients) -> None:
    """An error message carrying terminal controls reaches the officer escaped."""
    request = clients.create(who="ci3")

    def tamper(method: str, answer: Any) -> Any:
        raise Abort(grpc.StatusCode.NOT_FOUND, f"no such request{ESC}[2J{ESC}]8;;http://x\a")

    with hostile(shared_env, "alice", tamper) as proxy:
        p = _approver(proxy, "show", request.id)
    assert p.returncode == 1
    assert ESC not in p.stderr and "\a" not in p.stderr
    assert "no such request\\x1b[2J\\x1b]8;;http://x\\x07" in p.stderr


# -- listings that never end ----------------------------------------------------------


def _cycling_pages(proxy: HostileServer, method: str, request: bytes) -> Any:
    """Real pending requests, on pages whose tokens go a, b, a, b, ..."""
    if method != "ListRequests":
        return None
    asked = approval_pb2.ListRequestsRequest.FromString(request)
    token, asked.page_token = asked.page_token, ""  # always the real first page
    page = approval_pb2.ListRequestsResponse.FromString(
        proxy.upstream("/signer.v1.ApprovalService/ListRequests", asked)
    )
    page.next_page_token = "b" if token == "a" else "a"
    return page


def _empty_pages(proxy: HostileServer, method: str, request: bytes) -> Any:
    if method == "ListRequests":
        return approval_pb2.ListRequestsResponse(next_page_token="more")
    return None


def _huge_tokens(proxy: HostileServer, method: str, request: bytes) -> Any:
    if method == "ListRequests":
        asked = approval_pb2.ListRequestsRequest.FromString(request)
        asked.page_token = ""
        page = approval_pb2.ListRequestsResponse.FromString(
            proxy.upstream("/signer.v1.ApprovalService/ListRequests", asked)
        )
        page.next_page_token = os.urandom(8).hex() * 100_000  # 1.6 MB, new every time
        return page
    return None


@pytest.mark.parametrize(
    ("pages", "phrase"),
    [
        (_cycling_pages, "listing does not move on"),
        (_empty_pages, "listing does not move on"),
        (_huge_tokens, "page token of 1600000 characters"),
    ],
    ids=["cycling", "empty", "huge tokens"],
)
def test_approver_list_stops_a_listing_that_never_ends(
    shared_env: Env, clients: Clients, pages: Any, phrase: str
) -> None:
    """Page tokens that come back, pages without items that say more follows, or tokens
    of megabytes end the listing with an error after a few calls, not a loop."""
    clients.create(who="ci3")
    with hostile(shared_env, "alice", unchanged, pages) as proxy:
        p = _approver(proxy, "list")
        listed = proxy.calls["ListRequests"]
    assert p.returncode == 1
    assert phrase in p.stderr
    assert listed <= 3


def test_audit_list_stops_on_empty_pages_that_say_more_follows(shared_env: Env) -> None:
    """`signer audit list` against a server sending empty pages with a token stops at once."""

    def empty(proxy: HostileServer, method: str, request: bytes) -> Any:
        if method == "ListAuditEvents":
            return audit_pb2.ListAuditEventsResponse(next_page_token="more")
        return None

    with hostile(shared_env, "auditor", unchanged, empty) as proxy:
        p = run([*SIGNER, "audit", "list", "--profile", str(proxy.profile("auditor"))], check=False)
        listed = proxy.calls["ListAuditEvents"]
    assert p.returncode == 1 and "listing does not move on" in p.stderr
    assert listed == 1
