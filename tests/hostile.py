"""A hostile server for client tests: a gRPC proxy that alters a real server's answers.

It presents the dev environment's own server certificate on 127.0.0.1 (so clients
trust it exactly as they trust the real server, like a compromised server or a
man in the middle holding its key), forwards every unary call to the real server
over mTLS as one identity, and passes each answer through `tamper(method,
answer)` before returning it. A tamper function returns the answer (changed or
not), or raises `Abort` to fail the call with a status and message of its choice.
`instead(proxy, method, request)`, if given, may answer a call without forwarding
it (return None to forward). `calls` counts the calls per method name.

Common alterations: `unchanged`; `on_answer(method, change)` alters the request
in every answer to one method; `on_signed(change)` alters every SIGNED request
a requester is sent; `other_digest` makes a request name another digest;
`waited_on` is the real request a wait names. `pending_with` waits for the
pending request of an artifact, as an officer sees it.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from google.protobuf import any_pb2, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from signer.client.profile import list_requests
from signer.v1 import approval_pb2, audit_pb2, signing_pb2, types_pb2
from testbed.clients import Clients
from testbed.commands import wait_until
from testbed.env import Env

Tamper = Callable[[str, Any], Any]
Instead = Callable[["HostileServer", str, bytes], Message | None]


class Abort(Exception):  # not an error of ours: an instruction to the proxy
    """Raised by a tamper or instead function: fail the call with this status and
    message, and the machine-readable reason, if given, as the server sends one."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason

    def abort(self, context: grpc.ServicerContext) -> NoReturn:
        if self.reason:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain="signer.v1"))
            status = status_pb2.Status(
                code=self.code.value[0], message=self.message, details=[detail]
            )
            context.abort_with_status(rpc_status.to_status(status))
        context.abort(self.code, self.message)
        raise AssertionError("unreachable")


def _answers() -> dict[str, type[Message]]:
    """The answer type of every unary method of the signer.v1 services, by full name."""
    out: dict[str, type[Message]] = {}
    for module in (signing_pb2, approval_pb2, audit_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                if not m.server_streaming and not m.client_streaming:
                    out[f"/{service.full_name}/{m.name}"] = message_factory.GetMessageClass(
                        m.output_type
                    )
    return out


_ANSWERS = _answers()


class HostileServer:
    """The proxy; `profile(who)` writes a copy of `who`'s profile that dials it."""

    def __init__(
        self, env: Env, forward_as: str, tamper: Tamper, instead: Instead | None = None
    ) -> None:
        self.env = env
        self.tamper = tamper
        self.instead = instead
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._upstream = env.profile(forward_as).channel()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((_Handler(self),))
        creds = grpc.ssl_server_credentials(
            [
                (
                    (env.root / "tls" / "server.key").read_bytes(),
                    (env.root / "tls" / "server.pem").read_bytes(),
                )
            ]
        )
        self.port = self._server.add_secure_port("127.0.0.1:0", creds)

    def profile(self, who: str) -> Path:
        real = self.env.profile_path(who)
        text = real.read_text().replace(f"127.0.0.1:{self.env.port}", f"127.0.0.1:{self.port}")
        path = real.with_name(f"{who}-via-hostile-{self.port}.toml")
        path.write_text(text)
        return path

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls[method.rsplit("/", 1)[-1]] += 1
        try:
            made = self.instead(self, method.rsplit("/", 1)[-1], request) if self.instead else None
        except Abort as e:
            e.abort(context)
        if made is not None:
            return bytes(made.SerializeToString())
        try:
            answer: bytes = self._upstream.unary_unary(method)(
                request, timeout=context.time_remaining()
            )
        except grpc.RpcError as e:
            context.set_trailing_metadata(e.trailing_metadata() or ())
            context.abort(e.code(), e.details() or "")
        kind = _ANSWERS.get(method)
        if kind is None:
            return answer
        try:
            changed = self.tamper(method.rsplit("/", 1)[-1], kind.FromString(answer))
        except Abort as e:
            e.abort(context)
        return bytes(changed.SerializeToString())

    def upstream(self, method: str, request: Message) -> bytes:
        """Call the real server directly (for `instead` functions)."""
        answer: bytes = self._upstream.unary_unary(method)(request.SerializeToString(), timeout=20)
        return answer

    def start(self) -> HostileServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._upstream.close()


class _Handler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no stubs
    def __init__(self, proxy: HostileServer) -> None:
        self.proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = str(details.method)
        if method not in _ANSWERS:
            return None
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self.proxy.forward(method, request, context)
        )


@contextmanager
def hostile(
    env: Env, forward_as: str, tamper: Tamper, instead: Instead | None = None
) -> Iterator[HostileServer]:
    """A running hostile proxy in front of `env`'s server, stopped at the end."""
    proxy = HostileServer(env, forward_as, tamper, instead).start()
    try:
        yield proxy
    finally:
        proxy.stop()


# The marks of a test file whose clients talk to the proxy: it forwards to the shared
# server, and what is checked is the client's, so one store backend is enough.
CLIENT_SIDE = [
    pytest.mark.sqlite_only("client-side checks: the store plays no part"),
    pytest.mark.usefixtures("shared"),  # the proxy forwards to the shared server
]


# -- alterations -------------------------------------------------------------------------

ESC = "\x1b"


def unchanged(method: str, answer: Any) -> Any:
    return answer


def on_answer(method: str, change: Callable[[types_pb2.SigningRequest], None]) -> Tamper:
    """Apply `change` to the request in every answer to `method`."""

    def tamper(called: str, answer: Any) -> Any:
        if called == method:
            change(answer.request)
        return answer

    return tamper


def on_signed(change: Callable[[types_pb2.SigningRequest], None]) -> Callable[[str, Any], Any]:
    """Apply `change` to every SIGNED request the server returns to a requester."""

    def tamper(method: str, answer: Any) -> Any:
        if method in ("WaitSigningRequest", "GetSigningRequest") and (
            answer.request.state == types_pb2.REQUEST_STATE_SIGNED
        ):
            change(answer.request)
        return answer

    return tamper


def pending_with(clients: Clients, artifact: str) -> types_pb2.SigningRequest:
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


def other_digest(r: types_pb2.SigningRequest) -> None:
    r.digests[0].value = hashlib.sha256(b"another artifact").digest()


def waited_on(proxy: HostileServer, request: bytes) -> types_pb2.SigningRequest:
    """The real request a WaitSigningRequest call names, as the real server has it."""
    asked = signing_pb2.WaitSigningRequestRequest.FromString(request)
    got = signing_pb2.GetSigningRequestResponse.FromString(
        proxy.upstream(
            "/signer.v1.SigningService/GetSigningRequest",
            signing_pb2.GetSigningRequestRequest(id=asked.id),
        )
    )
    return got.request
