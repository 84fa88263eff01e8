"""Authentication and authorization of every RPC (invariant 5).

The caller's identity comes only from the verified TLS client certificate in
the gRPC auth context (its first URI SAN, else its subject CN) or, on the
OIDC port where no client certificate is asked for, from a verified OIDC ID
token (`authorization: Bearer ...`; see `signer.oidc`). Never from a request
field or other metadata. A token caller only ever has the requester role;
other roles come from config. Each method has a rule (the defaults below,
extended or replaced by config `[access]`), and a method with no rule is
denied. Rejections are audit-logged through `on_reject`.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID

from signer.errors import PermissionDeniedError, SignerError, StoreError, UnauthenticatedError
from signer.model import TokenCaller
from signer.oidc import OidcVerifier
from signer.status import abort

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
current_caller: contextvars.ContextVar[TokenCaller | None] = contextvars.ContextVar(
    "caller", default=None
)
_TOKEN_ROLES = frozenset({"requester"})
log = structlog.get_logger("signer.auth")


@functools.lru_cache(maxsize=1024)
def identity_from_cert(pem: bytes) -> str:
    """First URI SAN of the certificate, else its subject common name (cached per
    certificate: the TLS layer verified it, and the same bytes name the same identity)."""
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
        oidc: OidcVerifier | None = None,
    ) -> None:
        self._roles_of = roles_of
        self._rules = rules
        self._on_reject = on_reject
        self._oidc = oidc

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
            caller = self._authenticate(context)
            identity = caller if isinstance(caller, str) else caller.identity
            current_caller.set(None if isinstance(caller, str) else caller)
            roles = self._roles_of(caller) if isinstance(caller, str) else _TOKEN_ROLES
            self._authorize(method, identity, roles, context)
            current_identity.set(identity)
            current_method.set(method)
            structlog.contextvars.bind_contextvars(identity=identity, method=method)
            return fn(request, context)

        return make(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _authenticate(self, context: grpc.ServicerContext) -> str | TokenCaller:
        """The certificate identity, or the verified token's caller; aborts otherwise."""
        auth = context.auth_context()
        certs = auth.get("x509_pem_cert") or []
        if certs:
            # On the mutual-TLS port metadata never speaks for the caller: a bearer
            # token there is ignored, the certificate alone says who calls.
            identity = identity_from_cert(certs[0])
            if identity.startswith("oidc:"):
                abort(context, UnauthenticatedError("certificate identities may not start oidc:"))
            if identity:
                return identity
            abort(context, UnauthenticatedError("a client certificate is required"))
        if self._oidc is None:
            abort(context, UnauthenticatedError("a client certificate is required"))
        bearer = [v for k, v in context.invocation_metadata() if k == "authorization"]
        if bearer:
            value = bearer[0] if isinstance(bearer[0], str) else ""
            scheme, _, token = value.partition(" ")
            if len(bearer) != 1 or scheme.lower() != "bearer" or not token.strip():
                abort(
                    context,
                    UnauthenticatedError(
                        "authorization metadata must be one `Bearer TOKEN`",
                        reason="TOKEN_MALFORMED",
                    ),
                )
            try:
                return self._oidc.verify(token.strip())
            except UnauthenticatedError as e:
                log.warning("token rejected", reason=e.reason, error=str(e))
                abort(context, e)
        abort(
            context,
            UnauthenticatedError(
                "a client certificate or an OIDC bearer token is required",
                reason="NO_CREDENTIALS",
            ),
        )

    def _authorize(
        self, method: str, identity: str, roles: frozenset[str], context: grpc.ServicerContext
    ) -> None:
        allowed = self._rules.get(method)
        if allowed is None:
            problem = f"method {method} has no access rule and is denied"
        elif ANY in allowed or roles & allowed:
            return
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
