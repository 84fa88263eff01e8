"""Polling a hostile server: the TUF signer and `signer sign` back off, check and escape.

A proxy (tests/hostile.py) answers every wait at once, undecided, or alters
the answers: the securesystemslib signer and the CLI poll a bounded number of
times, refuse a signature for another digest, and show the server's text
escaped, never obeyed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signer  # type: ignore[attr-defined]  # no __all__

from signer.sslib import (
    SignatureCheckError,
    SigningRefusedError,
    SigningTimeoutError,
    import_key,
)
from signer.v1 import signing_pb2, types_pb2
from testbed.clients import Clients
from testbed.commands import SIGNER, run
from testbed.env import Env
from tests.harness import sign_args
from tests.hostile import (
    CLIENT_SIDE,
    ESC,
    HostileServer,
    hostile,
    on_signed,
    other_digest,
    pending_with,
    unchanged,
    waited_on,
)

pytestmark = CLIENT_SIDE


def _never_done(proxy: HostileServer, method: str, request: bytes) -> Any:
    """Answer every wait at once, undecided (with the real request, so it matches)."""
    if method != "WaitSigningRequest":
        return None
    return signing_pb2.WaitSigningRequestResponse(request=waited_on(proxy, request), done=False)


def test_tuf_signer_backs_off_a_server_that_never_says_done(shared_env: Env) -> None:
    """However fast a server answers "not done", the TUF signer polls a bounded number of times."""
    with hostile(shared_env, "ci", unchanged, _never_done) as proxy:
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
    with hostile(shared_env, "ci3", unchanged, _never_done) as proxy:
        sign = sign_args(proxy.profile("ci3"), artifact, "--timeout", "4s")
        p = run([*SIGNER, *sign], check=False)
        waits = proxy.calls["WaitSigningRequest"]
    assert p.returncode == 3 and "still PENDING (0 of 2 approvals)" in p.stderr
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
    request = pending_with(clients, "tuf metadata")
    clients.approve("alice", request)
    clients.approve("bob", request)
    t.join(60)
    assert not t.is_alive(), "the signer is still waiting"
    return outcome[0]


def test_tuf_signer_refuses_a_signed_answer_for_another_digest(
    shared_env: Env, clients: Clients
) -> None:
    """The TUF signer refuses a SIGNED answer whose digest is not the payload's."""
    with hostile(shared_env, "ci", on_signed(other_digest)) as proxy:
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
        real = waited_on(proxy, request)
        real.state = types_pb2.REQUEST_STATE_DENIED
        real.status_message = f"no{ESC}]0;owned{chr(7)}"
        return signing_pb2.WaitSigningRequestResponse(request=real, done=True)

    with hostile(shared_env, "ci3", unchanged, denied) as proxy:
        uri, key = import_key("release", proxy.profile("ci3"))
        with pytest.raises(SigningRefusedError) as e:
            Signer.from_priv_key_uri(uri, key).sign(b"tuf metadata bytes")
    assert "ended DENIED: no\\x1b]0;owned\\x07" in str(e.value)
    assert ESC not in str(e.value)
