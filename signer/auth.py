"""Authentication and authorization of every RPC (invariant 5).

The caller's identity comes only from the verified TLS client certificate in
the gRPC auth context: its first URI SAN, else its subject CN. Never from a
request field or metadata. Roles come from config; each method has a rule
(the defaults below, extended or replaced by config `[access]`), and a method
with no rule is denied. Rejections are audit-logged through `on_reject`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from signer.errors import PermissionDeniedError, SignerError, StoreError, UnauthenticatedError
from signer.status import abort

__all__ = [
    "ANY",
    "DEFAULT_RULES",
    "AuthInterceptor",
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
            "WaitSigningRequest",
            "CancelSigningRequest",
        )
    },
    **{f"/signer.v1.SigningService/{m}": _ANY_ROLE for m in ("GetPublicKey", "ListKeys")},
    **{
        f"/signer.v1.ApprovalService/{m}": frozenset({"approver"})
        for m in ("ListRequests", "GetRequest", "Approve", "Deny", "WatchRequests")
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
    # certificate holder pin worker threads. Reflection needs a role.
    "/grpc.health.v1.Health/Check": frozenset({ANY}),
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": _ANY_ROLE,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": _ANY_ROLE,
}

current_identity: contextvars.ContextVar[str] = contextvars.ContextVar("identity", default="")
current_method: contextvars.ContextVar[str] = contextvars.ContextVar("method", default="")
log = structlog.get_logger("signer.auth")


def identity_from_cert(pem: bytes) -> str:
    """First URI SAN of the certificate, else its subject common name."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


class AuthInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        roles_of: Callable[[str], frozenset[str]],
        rules: Mapping[str, frozenset[str]],
        on_reject: Callable[[str, str, SignerError], None],
    ) -> None:
        self._roles_of = roles_of
        self._rules = rules
        self._on_reject = on_reject

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        if handler.unary_unary:
            fn, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        elif handler.unary_stream:
            fn, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        elif handler.stream_unary:
            fn, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            fn, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            identity = self._authorize(method, context)
            current_identity.set(identity)
            current_method.set(method)
            structlog.contextvars.bind_contextvars(identity=identity, method=method)
            return fn(request, context)

        return make(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _authorize(self, method: str, context: grpc.ServicerContext) -> str:
        auth = context.auth_context()
        certs = auth.get("x509_pem_cert") or []
        identity = identity_from_cert(certs[0]) if certs else ""
        if not identity:
            abort(context, UnauthenticatedError("a client certificate is required"))
        allowed = self._rules.get(method)
        roles = self._roles_of(identity)
        if allowed is None:
            problem = f"method {method} has no access rule and is denied"
        elif ANY in allowed or roles & allowed:
            return identity
        elif not roles:
            problem = f"identity {identity!r} has no role in this server's config"
        else:
            problem = (
                f"{method.rsplit('/', 1)[-1]} needs role "
                f"{' or '.join(sorted(allowed))}; {identity!r} has {', '.join(sorted(roles))}"
            )
        error = PermissionDeniedError(problem, reason="ROLE_NOT_ALLOWED")
        log.warning("call rejected", identity=identity, method=method, reason=problem)
        try:
            self._on_reject(identity, method, error)
        except StoreError as e:  # the rejection cannot be audited: fail closed
            abort(context, e)
        abort(context, error)
