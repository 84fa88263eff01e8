"""Authentication and authorization of every RPC (invariant 5).

The caller's identity comes only from the verified TLS client certificate in
the gRPC auth context (its first URI SAN, else its subject CN) or, on the
OIDC port where no client certificate is asked for, from a verified OIDC ID
token (`authorization: Bearer ...`; see `signer.server.oidc`). Never from a request
field or other metadata. A token caller only ever has the requester role;
other roles come from config. Each method has a rule (the defaults below,
extended or replaced by config `[access]`), and a method with no rule is
denied. Rejections are audit-logged through `on_reject`.

No caller holds the server's shared capacity without a role (docs/architecture.md §14):
every method is served as a request stream, so the caller is authenticated
and authorized as soon as a worker takes the call, before its request message
is waited for; a caller without a role, or over its cap of calls in flight,
is refused at once (PERMISSION_DENIED, RESOURCE_EXHAUSTED) and gives the
worker back. A caller with a role that does not send its message within
`server.message_timeout` (each message, on a stream) has its call cancelled:
no one holds a worker by saying nothing. Log lines of refused calls are
rate-limited per identity (per peer address before authentication) and echo
values cut short.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import grpc
import structlog

from signer.bounds import MAX_ECHO, RateLimit, Slots, Watchdog, clip, echo
from signer.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    SignerError,
    StoreError,
    UnauthenticatedError,
)
from signer.model import TokenCaller
from signer.server.oidc import OidcVerifier
from signer.server.status import abort
from signer.tls import identity_from_cert

__all__ = [
    "ANY",
    "DEFAULT_RULES",
    "AuthInterceptor",
    "current_caller",
    "current_identity",
    "current_method",
    "identity_from_cert",
]

ANY = "*"  # any authenticated caller
_ANY_ROLE = frozenset({"requester", "approver", "auditor", "admin"})
DEFAULT_RULES: dict[str, frozenset[str]] = {
    **{
        f"/signer.v1.SigningService/{m}": frozenset({"requester"})
        for m in (
            "CreateSigningRequest",
            "GetSigningRequest",
            "ListSigningRequests",
            "WaitSigningRequest",
            "CancelSigningRequest",
        )
    },
    **{
        f"/signer.v1.SigningService/{m}": _ANY_ROLE
        for m in ("GetPublicKey", "ListKeys", "GetPolicyChain")
    },
    **{
        f"/signer.v1.ApprovalService/{m}": frozenset({"approver"})
        for m in (
            "ListRequests",
            "GetRequest",
            "ListRequestDigests",
            "Approve",
            "Deny",
            "WatchRequests",
            "FreezeKey",
            "ListPolicyProposals",
            "ApprovePolicy",
            "DenyPolicy",
        )
    },
    **{
        f"/signer.v1.AuditService/{m}": frozenset({"auditor"})
        for m in (
            "ListAuditEvents",
            "GetCheckpoint",
            "GetEntries",
            "GetInclusionProof",
            "GetConsistencyProof",
        )
    },
    # Health/Watch is left without a rule: an open-ended stream would let any
    # certificate holder pin worker threads. Reflection, a stream a caller keeps open
    # as long as it sends a message now and then, is for admins.
    "/grpc.health.v1.Health/Check": frozenset({ANY}),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": frozenset({"admin"}),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": frozenset({"admin"}),
}

current_identity: contextvars.ContextVar[str] = contextvars.ContextVar("identity", default="")
current_method: contextvars.ContextVar[str] = contextvars.ContextVar("method", default="")
current_caller: contextvars.ContextVar[TokenCaller | None] = contextvars.ContextVar(
    "caller", default=None
)
_TOKEN_ROLES = frozenset({"requester"})
MESSAGE_TIMEOUT = 10.0  # seconds a call may take to send a request message
log = structlog.get_logger("signer.server.auth")


def _peer_host(context: grpc.ServicerContext) -> str:
    """The caller's address without its port (`ipv4:10.0.0.1`), for callers with no identity."""
    peer = str(context.peer() or "")
    host, sep, _port = peer.rpartition(":")
    return clip(host if sep and host else peer, 64)


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        roles_of: Callable[[str], frozenset[str]],
        rules: Mapping[str, frozenset[str]],
        on_reject: Callable[[str, str, SignerError], None],
        oidc: OidcVerifier | None = None,
        *,
        calls_per_identity: int = 32,
        log_limit: RateLimit | None = None,
        message_timeout: float = MESSAGE_TIMEOUT,
    ) -> None:
        self._policy = (roles_of, rules)
        self._on_reject = on_reject
        self._oidc = oidc
        self.calls = Slots(calls_per_identity, "calls in flight", "TOO_MANY_CALLS")
        self._log_limit = log_limit or RateLimit(60)
        self._watchdog = Watchdog(message_timeout)

    @property
    def oidc(self) -> OidcVerifier | None:
        return self._oidc

    def use(
        self, roles_of: Callable[[str], frozenset[str]], rules: Mapping[str, frozenset[str]]
    ) -> None:
        """Who holds which role, and which roles may call what, from now on (a policy
        version adopted while the server runs)."""
        self._policy = (roles_of, rules)

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        # Every method is served as a request stream: the call reaches `admit` as soon as
        # a worker takes it, before its message has arrived (a unary handler would hold
        # the worker waiting for a message that an unauthorized caller may never send).
        if handler.unary_unary or handler.unary_stream:
            deserializer = handler.request_deserializer
            if handler.unary_unary:
                fn = handler.unary_unary

                def unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                    identity = self._admit(method, context)
                    with self._holding(identity, method, context):
                        return fn(self._one(identity, method, requests, context), context)

                return grpc.stream_unary_rpc_method_handler(
                    unary, deserializer, handler.response_serializer
                )
            stream_fn = handler.unary_stream

            def unary_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                identity = self._admit(method, context)
                return self._streaming(
                    identity,
                    method,
                    context,
                    lambda: stream_fn(self._one(identity, method, requests, context), context),
                )

            return grpc.stream_stream_rpc_method_handler(
                unary_stream, deserializer, handler.response_serializer
            )
        if handler.stream_unary:
            fn_su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                identity = self._admit(method, context)
                with self._holding(identity, method, context):
                    return fn_su(self._each(identity, method, requests, context), context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        fn_ss = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            identity = self._admit(method, context)
            return self._streaming(
                identity,
                method,
                context,
                lambda: fn_ss(self._each(identity, method, requests, context), context),
            )

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )

    def _admit(self, method: str, context: grpc.ServicerContext) -> str:
        """Authenticate and authorize the call (aborting it otherwise); its identity."""
        try:
            caller = self._authenticate(context)
        except UnauthenticatedError as e:
            if not e.reason.startswith("TOKEN"):  # those are logged where they are found
                self._log("call unauthenticated", "", context, reason=e.reason)
            abort(context, e)
        identity = caller if isinstance(caller, str) else caller.identity
        current_caller.set(None if isinstance(caller, str) else caller)
        roles = self._policy[0](caller) if isinstance(caller, str) else _TOKEN_ROLES
        self._authorize(method, identity, roles, context)
        current_identity.set(identity)
        current_method.set(method)
        structlog.contextvars.bind_contextvars(identity=identity, method=method)
        return identity

    @contextlib.contextmanager
    def _holding(self, identity: str, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        """One of the identity's calls in flight, refused at once over its cap."""
        try:
            self.calls.acquire(identity)
        except SignerError as e:
            self._refuse(identity, method, e, context)
        try:
            yield
        finally:
            self.calls.release(identity)

    def _streaming(
        self,
        identity: str,
        method: str,
        context: grpc.ServicerContext,
        start: Callable[[], Iterator[Any]],
    ) -> Iterator[Any]:
        with self._holding(identity, method, context):
            yield from start()

    def _next(
        self, identity: str, method: str, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Any:
        """The call's next message; the call is cancelled if it is not sent in time (a
        caller with a role holds a worker while it waits, docs/architecture.md §14).

        Once its time is up the call ends, even when a message or the end of the stream
        (gRPC reports a cancelled call either way) came at that moment: nothing a
        cancelled call sent is acted on.
        """
        with self._watchdog.within(context.cancel) as watch:
            try:
                message = next(requests)
                ended: BaseException | None = None
            except (grpc.RpcError, StopIteration) as e:
                ended = e
        if watch.expired:  # final once `within` is left
            error = InvalidArgumentError(
                f"no request message within {self._watchdog.seconds:g}s; call cancelled",
                reason="MESSAGE_TIMEOUT",
            )
            self._log(
                "call cancelled",
                identity,
                context,
                method=method,
                reason=error.reason,
                error=str(error),
            )
            with contextlib.suppress(SignerError):  # the call is over either way
                self._on_reject(identity, method, error)
            abort(context, error)
        if ended is not None:
            raise ended
        return message

    def _one(
        self, identity: str, method: str, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Any:
        """The one request message of a unary method."""
        try:
            return self._next(identity, method, requests, context)
        except StopIteration:
            abort(context, InvalidArgumentError(f"{method} needs exactly one request message"))

    def _each(
        self, identity: str, method: str, requests: Iterator[Any], context: grpc.ServicerContext
    ) -> Iterator[Any]:
        """A streaming call's messages, each within the time a unary call's one has."""
        while True:
            try:
                yield self._next(identity, method, requests, context)
            except StopIteration:
                return

    def _refuse(
        self, identity: str, method: str, error: SignerError, context: grpc.ServicerContext
    ) -> NoReturn:
        """Log (rate-limited), audit and end a call refused here."""
        self._log(
            "call rejected", identity, context, method=method, reason=error.reason, error=str(error)
        )
        try:
            self._on_reject(identity, method, error)
        except StoreError as e:  # the rejection cannot be audited: fail closed
            abort(context, e)
        abort(context, error)

    def _log(self, event: str, identity: str, context: grpc.ServicerContext, **kw: Any) -> None:
        """A warning, at most a few a minute per identity (per peer address without one)."""
        peer = _peer_host(context)
        held = self._log_limit.allow(identity or peer)
        if held is not None:
            extra = {"not_logged_before": held} if held else {}
            log.warning(event, identity=clip(identity, MAX_ECHO), peer=peer, **kw, **extra)

    def _authenticate(self, context: grpc.ServicerContext) -> str | TokenCaller:
        """The certificate identity, or the verified token's caller."""
        auth = context.auth_context()
        certs = auth.get("x509_pem_cert") or []
        if certs:
            # On the mutual-TLS port metadata never speaks for the caller: a bearer
            # token there is ignored, the certificate alone says who calls.
            identity = identity_from_cert(certs[0])
            if identity.startswith("oidc:"):
                raise UnauthenticatedError("certificate identities may not start oidc:")
            if identity:
                return identity
            raise UnauthenticatedError("a client certificate is required")
        if self._oidc is None:
            raise UnauthenticatedError("a client certificate is required")
        bearer = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if bearer:
            value = bearer[0] if isinstance(bearer[0], str) else ""
            scheme, _, token = value.partition(" ")
            if len(bearer) != 1 or scheme.lower() != "bearer" or not token.strip():
                self._log("token rejected", "", context, reason="TOKEN_MALFORMED")
                raise UnauthenticatedError(
                    "authorization metadata must be one `Bearer TOKEN`", reason="TOKEN_MALFORMED"
                )
            try:
                return self._oidc.verify(token.strip())
            except UnauthenticatedError as e:
                self._log("token rejected", "", context, reason=e.reason, error=str(e))
                raise
        raise UnauthenticatedError(
            "a client certificate or an OIDC bearer token is required", reason="NO_CREDENTIALS"
        )

    def _authorize(
        self, method: str, identity: str, roles: frozenset[str], context: grpc.ServicerContext
    ) -> None:
        allowed = self._policy[1].get(method)
        if allowed is None:
            problem = f"method {method} has no access rule and is denied"
        elif ANY in allowed or roles & allowed:
            return
        elif not roles:
            problem = f"identity {echo(identity)} has no role in this server's config"
        else:
            problem = (
                f"{method.rsplit('/', 1)[-1]} needs role "
                f"{' or '.join(sorted(allowed))}; {echo(identity)} has {', '.join(sorted(roles))}"
            )
        self._refuse(
            identity, method, PermissionDeniedError(problem, reason="ROLE_NOT_ALLOWED"), context
        )
