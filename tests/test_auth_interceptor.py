"""The authorization interceptor in process: no rule is no access, no certificate is no identity.

A handler wrapped by `AuthInterceptor` with a fake servicer context: a method
without an access rule is denied to every role, a call without a client
certificate is UNAUTHENTICATED, an allowed role passes, and a message that
arrives only after the watchdog fired is refused and never acted on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from signer.errors import SignerError
from signer.server.auth import DEFAULT_RULES, AuthInterceptor
from signer.tls import DevCA


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _FakeContext:
    """Just enough of grpc.ServicerContext for the interceptor."""

    def __init__(self, certs: list[bytes]) -> None:
        self._auth = {"x509_pem_cert": certs} if certs else {}

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def cancel(self) -> None:
        raise AssertionError("a call with its message at hand is never cancelled")

    def abort_with_status(self, status: Any) -> None:
        raise _Aborted(status.code, status.details)


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


def _guard(
    method: str, roles: frozenset[str], certs: list[bytes]
) -> tuple[list[str], list[tuple[str, str, SignerError]], Callable[[], Any]]:
    """Wrap a handler for `method` in the interceptor; return (calls, rejections, invoke)."""
    calls: list[str] = []
    rejected: list[tuple[str, str, SignerError]] = []

    def behaviour(request: str, context: Any) -> str:
        calls.append(request)
        return "ok"

    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    interceptor = AuthInterceptor(
        lambda identity: roles, DEFAULT_RULES, lambda *a: rejected.append(a)
    )
    guarded = interceptor.intercept_service(lambda d: handler, _Details(method))
    # Served as a request stream: the caller is checked before its one message is read.
    return calls, rejected, lambda: guarded.stream_unary(iter(["req"]), _FakeContext(certs))


def test_interceptor_denies_a_method_without_rule() -> None:
    """A method with no access rule is denied even to an identity holding every role."""
    cert, _ = DevCA("unit test CA").issue("root-of-all")
    every = frozenset({"requester", "approver", "auditor", "admin"})
    calls, rejected, invoke = _guard("/signer.v1.SigningService/Unlisted", every, [cert])
    with pytest.raises(_Aborted) as e:
        invoke()
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "has no access rule and is denied" in e.value.details
    assert calls == []
    [(who, method, error)] = rejected
    assert (who, method, error.reason) == (
        "root-of-all",
        "/signer.v1.SigningService/Unlisted",
        "ROLE_NOT_ALLOWED",
    )


def test_interceptor_allows_a_listed_role_and_requires_a_certificate() -> None:
    """The interceptor passes an allowed role through and refuses a call with no certificate."""
    cert, _ = DevCA("unit test CA").issue("ci")
    method = "/signer.v1.SigningService/ListKeys"
    calls, rejected, invoke = _guard(method, frozenset({"requester"}), [cert])
    assert invoke() == "ok" and calls == ["req"] and rejected == []
    calls, rejected, invoke = _guard(method, frozenset({"requester"}), [])
    with pytest.raises(_Aborted) as e:
        invoke()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert calls == []


def test_a_message_that_comes_as_its_time_runs_out_is_not_acted_on() -> None:
    """A call whose message arrives only once the watchdog has fired is refused
    (MESSAGE_TIMEOUT, audited) and its handler never runs: nothing a cancelled call
    sent is acted on."""
    cert, _ = DevCA("unit test CA").issue("ci")
    calls: list[str] = []
    rejected: list[tuple[str, str, SignerError]] = []
    cancelled = threading.Event()

    def behaviour(request: str, context: Any) -> str:
        calls.append(request)
        return "ok"

    class Late(_FakeContext):
        def cancel(self) -> None:
            cancelled.set()

    def late_message() -> Iterator[str]:
        assert cancelled.wait(10)  # the message comes just after the deadline fired
        yield "req"

    interceptor = AuthInterceptor(
        lambda identity: frozenset({"requester"}),
        DEFAULT_RULES,
        lambda *a: rejected.append(a),
        message_timeout=0.05,
    )
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    guarded = interceptor.intercept_service(
        lambda d: handler, _Details("/signer.v1.SigningService/CreateSigningRequest")
    )
    with pytest.raises(_Aborted) as e:
        guarded.stream_unary(late_message(), Late([cert]))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no request message within 0.05s" in e.value.details
    assert calls == []
    assert [(who, err.reason) for who, _, err in rejected] == [("ci", "MESSAGE_TIMEOUT")]
