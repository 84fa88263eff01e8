"""Clients against a hostile server: nothing it alters is written, signed or obeyed.

A proxy (tests/hostile.py) with the real server's certificate sits between each
client and the real server and alters its answers. `signer sign`, `signer
status`, `signer public-key`, the securesystemslib signer and `approver` must
refuse every answer that is not for what they asked, verify signatures over
their own digests before writing anything, back off however the server answers,
and show, never obey, the text it sends.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from securesystemslib.signer import Signer  # type: ignore[attr-defined]  # no __all__

from signer.client.profile import list_requests
from signer.sslib import (
    SignatureCheckError,
    SigningRefusedError,
    SigningTimeoutError,
    import_key,
)
from signer.v1 import approval_pb2, audit_pb2, signing_pb2, types_pb2
from testbed.clients import Clients, sha256_digest
from testbed.commands import APPROVER, SIGNER, run, wait_until
from testbed.env import Env
from tests.hostile import Abort, HostileServer, hostile

pytestmark = [
    pytest.mark.sqlite_only("client-side checks: the store plays no part"),
    pytest.mark.usefixtures("shared"),  # the proxy forwards to the shared server
]

ESC = "\x1b"


def _unchanged(method: str, answer: Any) -> Any:
    return answer


def _on_signed(change: Callable[[types_pb2.SigningRequest], None]) -> Callable[[str, Any], Any]:
    """Apply `change` to every SIGNED request the server returns to a requester."""

    def tamper(method: str, answer: Any) -> Any:
        if method in ("WaitSigningRequest", "GetSigningRequest") and (
            answer.request.state == types_pb2.REQUEST_STATE_SIGNED
        ):
            change(answer.request)
        return answer

    return tamper


def _pending_with(clients: Clients, artifact: str) -> types_pb2.SigningRequest:
    """Wait until a pending request for `artifact` exists; return it as alice sees it."""
    found: list[types_pb2.SigningRequest] = []
    shared_profile = clients.env.profile("alice")

    def look() -> bool:
        found[:] = [
            r
            for r in list_requests(
                shared_profile, clients.approval("alice"), types_pb2.REQUEST_STATE_PENDING
            )
            if r.digests and r.digests[0].artifact_name == artifact
        ]
        return bool(found)

    wait_until(look, timeout=30)
    return found[0]


def _sign_via(
    proxy: HostileServer, clients: Clients, tmp_path: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`signer sign --file F` through the proxy while alice and bob approve directly."""
    artifact = tmp_path / f"app-{uuid.uuid4().hex[:8]}.tar.gz"
    artifact.write_bytes(os.urandom(64))
    cmd = [
        *SIGNER,
        "sign",
        "--profile",
        str(proxy.profile("ci")),
        "--key-name",
        "release",
        "--file",
        str(artifact),
        "--timeout",
        "60s",
        *extra,
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        request = _pending_with(clients, artifact.name)
        clients.approve("alice", request)
        clients.approve("bob", request)
        out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), artifact


def _other_digest(r: types_pb2.SigningRequest) -> None:
    r.digests[0].value = hashlib.sha256(b"another artifact").digest()


def _flip_signature(r: types_pb2.SigningRequest) -> None:
    sig = bytearray(r.signatures[0])
    sig[-1] ^= 1
    r.signatures[0] = bytes(sig)


def _extra_digest(r: types_pb2.SigningRequest) -> None:
    r.digests.append(sha256_digest(b"x", "smuggled.bin"))
    r.signatures.append(r.signatures[0])


ALTERED_SIGNED = [
    ("request id", lambda r: setattr(r, "id", str(uuid.uuid4())), "request id"),
    ("key name", lambda r: setattr(r, "key_name", "k-ecdsa-p384"), "key"),
    ("digest", _other_digest, "digests"),
    ("artifact name", lambda r: setattr(r.digests[0], "artifact_name", "other.tgz"), "digests"),
    ("extra digest", _extra_digest, "digests"),
    ("signature", _flip_signature, "does not verify"),
    ("audit proof", lambda r: r.ClearField("audit_proof"), "no audit proof"),
    ("key id", lambda r: setattr(r, "key_id", "ab" * 32), "key id"),
]


@pytest.mark.parametrize(
    ("change", "phrase"),
    [(c, p) for _, c, p in ALTERED_SIGNED],
    ids=[name for name, _, _ in ALTERED_SIGNED],
)
def test_sign_refuses_an_altered_signed_answer_and_writes_nothing(
    shared_env: Env,
    clients: Clients,
    tmp_path: Path,
    change: Callable[[types_pb2.SigningRequest], None],
    phrase: str,
) -> None:
    """`signer sign --file` refuses a SIGNED answer altered in any bound field; no file."""
    with hostile(shared_env, "ci", _on_signed(change)) as proxy:
        p, artifact = _sign_via(proxy, clients, tmp_path)
    assert p.returncode == 1, p.stderr
    assert phrase in p.stderr
    assert not artifact.with_name(artifact.name + ".sig").exists()
    assert not artifact.with_name(artifact.name + ".sig.audit.json").exists()


def test_sign_refuses_a_created_request_for_other_digests(shared_env: Env, tmp_path: Path) -> None:
    """The server's answer to Create must be for the digests asked: else nothing waits."""

    def tamper(method: str, answer: Any) -> Any:
        if method == "CreateSigningRequest":
            _other_digest(answer.request)
        return answer

    artifact = tmp_path / "app.tar.gz"
    artifact.write_bytes(b"release")
    with hostile(shared_env, "ci", tamper) as proxy:
        p = run(
            [
                *SIGNER,
                "sign",
                "--profile",
                str(proxy.profile("ci")),
                "--key-name",
                "release",
                "--file",
                str(artifact),
            ],
            check=False,
        )
        assert proxy.calls["WaitSigningRequest"] == 0
    assert p.returncode == 1
    assert "not what was asked: digests differ" in p.stderr


def test_sign_retries_an_overloaded_server_and_makes_one_request(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """gRPC's own "no room" refusal of a create (answer lost after the request was made)
    is retried with the same idempotency key: the signature comes, from one request."""
    refused: list[str] = []

    def tamper(method: str, answer: Any) -> Any:
        if method == "CreateSigningRequest" and not refused:
            refused.append(answer.request.id)
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
        return answer

    with hostile(shared_env, "ci", tamper) as proxy:
        p, artifact = _sign_via(proxy, clients, tmp_path)
        creates = proxy.calls["CreateSigningRequest"]
    assert p.returncode == 0, p.stderr
    assert creates == 2 and refused
    assert artifact.with_name(artifact.name + ".sig").exists()
    assert clients.get(refused[0]).state == types_pb2.REQUEST_STATE_SIGNED


def test_other_resource_exhausted_errors_are_not_retried(shared_env: Env, tmp_path: Path) -> None:
    """A cap of the caller's own (a reason is given) is said at once, not retried."""

    def tamper(method: str, answer: Any) -> Any:
        raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pending requests")

    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"a")
    with hostile(shared_env, "ci3", tamper) as proxy:
        profile = str(proxy.profile("ci3"))
        sign = ["sign", "--profile", profile, "--key-name", "release", "--file", str(artifact)]
        p = run([*SIGNER, *sign], check=False)
        creates = proxy.calls["CreateSigningRequest"]
    assert p.returncode == 1 and "too many pending requests" in p.stderr
    assert creates == 1


def test_a_public_key_that_is_not_the_key_id_is_refused(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """A server that hands out another PEM under the key's id is caught; nothing written."""
    other = clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name="k-ecdsa-p384"), timeout=20
    )

    def tamper(method: str, answer: Any) -> Any:
        if method == "GetPublicKey":
            answer.key.public_key_pem = other.key.public_key_pem
        return answer

    with hostile(shared_env, "ci", tamper) as proxy:
        p, artifact = _sign_via(proxy, clients, tmp_path)
        out = tmp_path / "release.pem"
        pk = run(
            [
                *SIGNER,
                "public-key",
                "--profile",
                str(proxy.profile("ci")),
                "--key-name",
                "release",
                "--out",
                str(out),
            ],
            check=False,
        )
    assert p.returncode == 1 and "key id" in p.stderr
    assert not artifact.with_name(artifact.name + ".sig").exists()
    assert pk.returncode == 1 and "key id is not that of its public key" in pk.stderr
    assert not out.exists()


def test_status_checks_the_files_and_the_request_id(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """`signer status ID --file F` refuses another request or digests that are not F's."""
    artifact = tmp_path / "lib.jar"
    artifact.write_bytes(b"jar")
    request = clients.create(digests=[sha256_digest(b"jar", "lib.jar")])
    clients.approve("alice", request)
    clients.approve("bob", request)

    def status(proxy: HostileServer, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            [*SIGNER, "status", request.id, "--profile", str(proxy.profile("ci")), *extra],
            check=False,
        )

    with hostile(shared_env, "ci", _unchanged) as proxy:
        ok = status(proxy, "--file", str(artifact))
    assert ok.returncode == 0, ok.stderr
    assert artifact.with_name("lib.jar.sig").exists()
    artifact.with_name("lib.jar.sig").unlink()

    with hostile(shared_env, "ci", _on_signed(_other_digest)) as proxy:
        wrong = status(proxy, "--file", str(artifact))
        bare = status(proxy, "--out", str(tmp_path / "x.sig"))
    assert wrong.returncode == 1 and "is not the request's digest" in wrong.stderr
    assert bare.returncode == 1 and "does not verify" in bare.stderr
    assert not artifact.with_name("lib.jar.sig").exists() and not (tmp_path / "x.sig").exists()

    with hostile(
        shared_env, "ci", _on_signed(lambda r: setattr(r, "id", str(uuid.uuid4())))
    ) as proxy:
        other = status(proxy, "--out", str(tmp_path / "x.sig"))
    assert other.returncode == 1 and "request id" in other.stderr
    assert not (tmp_path / "x.sig").exists()


# -- polling ----------------------------------------------------------------------------


def _waited_on(proxy: HostileServer, request: bytes) -> types_pb2.SigningRequest:
    """The real request a WaitSigningRequest call names, as the real server has it."""
    asked = signing_pb2.WaitSigningRequestRequest.FromString(request)
    got = signing_pb2.GetSigningRequestResponse.FromString(
        proxy.upstream(
            "/signer.v1.SigningService/GetSigningRequest",
            signing_pb2.GetSigningRequestRequest(id=asked.id),
        )
    )
    return got.request


def _never_done(proxy: HostileServer, method: str, request: bytes) -> Any:
    """Answer every wait at once, undecided (with the real request, so it matches)."""
    if method != "WaitSigningRequest":
        return None
    return signing_pb2.WaitSigningRequestResponse(request=_waited_on(proxy, request), done=False)


def test_tuf_signer_backs_off_a_server_that_never_says_done(shared_env: Env) -> None:
    """However fast a server answers "not done", the TUF signer polls a bounded number of times."""
    with hostile(shared_env, "ci", _unchanged, _never_done) as proxy:
        uri, key = import_key("release", proxy.profile("ci"))
        signer = Signer.from_priv_key_uri(uri + "&timeout=4s", key)
        with pytest.raises(SigningTimeoutError):
            signer.sign(b"tuf metadata bytes")
        waits = proxy.calls["WaitSigningRequest"]
    # Pauses of 0.2, 0.4, 0.8, 1.6, 3.2 s fill the 4 s: a handful of polls, not thousands.
    assert 1 <= waits <= 8, waits


def test_sign_cli_backs_off_a_server_that_never_says_done(shared_env: Env, tmp_path: Path) -> None:
    """`signer sign --timeout 4s` against an always-undecided server polls a handful of times."""
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"a")
    with hostile(shared_env, "ci3", _unchanged, _never_done) as proxy:
        p = run(
            [
                *SIGNER,
                "sign",
                "--profile",
                str(proxy.profile("ci3")),
                "--key-name",
                "release",
                "--file",
                str(artifact),
                "--timeout",
                "4s",
            ],
            check=False,
        )
        waits = proxy.calls["WaitSigningRequest"]
    assert p.returncode == 1 and "still PENDING" in p.stderr
    # The way to fetch it later checks the file's digest again.
    assert "signer status" in p.stderr and f"--file {artifact}" in p.stderr
    assert 1 <= waits <= 8, waits


def _tuf_sign_via(proxy: HostileServer, clients: Clients) -> Any:
    """Sign through the proxy with the TUF signer while alice and bob approve directly."""
    uri, key = import_key("release", proxy.profile("ci"))
    signer = Signer.from_priv_key_uri(uri, key)
    outcome: list[Any] = []

    def sign() -> None:
        try:
            outcome.append(signer.sign(os.urandom(32)))
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=sign, daemon=True)
    t.start()
    request = _pending_with(clients, "tuf metadata")
    clients.approve("alice", request)
    clients.approve("bob", request)
    t.join(60)
    assert not t.is_alive(), "the signer is still waiting"
    return outcome[0]


def test_tuf_signer_refuses_a_signed_answer_for_another_digest(
    shared_env: Env, clients: Clients
) -> None:
    """The TUF signer refuses a SIGNED answer whose digest is not the payload's."""
    with hostile(shared_env, "ci", _on_signed(_other_digest)) as proxy:
        got = _tuf_sign_via(proxy, clients)
    assert isinstance(got, SignatureCheckError), got
    assert "digests differ" in str(got)


def test_tuf_signer_progress_shows_server_text_escaped(
    shared_env: Env, clients: Clients, capsys: pytest.CaptureFixture[str]
) -> None:
    """Names and messages the server sends reach the TUF signer's stderr escaped."""

    def tamper(method: str, answer: Any) -> Any:
        if method in ("WaitSigningRequest", "GetSigningRequest"):
            for a in answer.request.approvals:
                a.approver = f"{ESC}]0;owned{chr(7)}{a.approver}"
        return answer

    with hostile(shared_env, "ci", tamper) as proxy:
        got = _tuf_sign_via(proxy, clients)
    assert not isinstance(got, BaseException), got
    err = capsys.readouterr().err
    assert "\\x1b]0;owned\\x07alice" in err
    assert ESC not in err and chr(7) not in err


def test_tuf_signer_refusal_carries_the_server_text_escaped(shared_env: Env) -> None:
    """A refusal's status message from the server is escaped in the exception's text."""

    def denied(proxy: HostileServer, method: str, request: bytes) -> Any:
        if method != "WaitSigningRequest":
            return None
        real = _waited_on(proxy, request)
        real.state = types_pb2.REQUEST_STATE_DENIED
        real.status_message = f"no{ESC}]0;owned{chr(7)}"
        return signing_pb2.WaitSigningRequestResponse(request=real, done=True)

    with hostile(shared_env, "ci3", _unchanged, denied) as proxy:
        uri, key = import_key("release", proxy.profile("ci3"))
        with pytest.raises(SigningRefusedError) as e:
            Signer.from_priv_key_uri(uri, key).sign(b"tuf metadata bytes")
    assert "ended DENIED: no\\x1b]0;owned\\x07" in str(e.value)
    assert ESC not in str(e.value)


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

    def tamper(method: str, answer: Any) -> Any:
        if method == "Approve":
            _other_digest(answer.request)
        return answer

    with hostile(shared_env, "alice", tamper) as proxy:
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

    def tamper(method: str, answer: Any) -> Any:
        if method == "GetRequest":
            change(answer.request)
        return answer

    with hostile(shared_env, "alice", tamper) as proxy:
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

    def tamper(method: str, answer: Any) -> Any:
        if method == "GetRequest":
            answer.request.requester = f"ci{ESC}[2J"
        return answer

    with hostile(shared_env, "alice", tamper) as proxy:
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
    with hostile(shared_env, "alice", _unchanged, pages) as proxy:
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

    with hostile(shared_env, "auditor", _unchanged, empty) as proxy:
        p = run([*SIGNER, "audit", "list", "--profile", str(proxy.profile("auditor"))], check=False)
        listed = proxy.calls["ListAuditEvents"]
    assert p.returncode == 1 and "listing does not move on" in p.stderr
    assert listed == 1
