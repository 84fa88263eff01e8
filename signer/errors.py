"""The signer error hierarchy.

Every error the service raises on purpose derives from `SignerError`; each
port (token, store) translates its library's exceptions into these exactly
once, and the gRPC servicer maps them to status codes exactly once.

    SignerError
    ├── ConfigError              bad or missing configuration (exit 2)
    ├── TokenError               PKCS#11 token failures
    │   ├── TokenNotFoundError   no token with that label
    │   ├── TokenPinError        wrong or locked PIN
    │   ├── KeyNotFoundError     no key with that name in the token
    │   └── WeakKeyError         a private key that breaks invariant 1
    ├── StoreError               the database (and so the audit log) cannot be written
    │   └── AuditHeadError       the stored log is not consistent with the token's tree head
    ├── InvalidArgumentError     malformed input (INVALID_ARGUMENT)
    │   └── EnvelopeError        a DSSE envelope that does not parse or verify
    │       └── StatementMismatchError  a signed statement that does not bind the request
    ├── NotFoundError            unknown request or key (NOT_FOUND)
    ├── UnauthenticatedError     no verified client identity (UNAUTHENTICATED)
    ├── PermissionDeniedError    the caller may not do this (PERMISSION_DENIED)
    ├── ConflictError            the request's state forbids this (FAILED_PRECONDITION)
    ├── AlreadyExistsError       idempotency key reused for another request
    ├── TooLargeError            over a size limit (RESOURCE_EXHAUSTED)
    ├── VerificationError        a proof, checkpoint or signed note does not verify
    │   ├── ResponseMismatchError  a server's answer is not for what the client asked
    │   └── PolicyChainError     a policy version that is not the next link of the chain
    ├── RemoteError              (signer.client.profile) a call the server failed, with its status
    ├── ServiceSignerError       (signer.sslib) the TUF signer got no good signature
    └── ApproverError            (approver.errors) the approver CLI's own errors

Every error carries a short machine-readable `reason` (UPPER_SNAKE) that
clients branch on; the message is for people.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExistsError",
    "AuditHeadError",
    "ConfigError",
    "ConflictError",
    "EnvelopeError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
    "PolicyChainError",
    "ResponseMismatchError",
    "SignerError",
    "StatementMismatchError",
    "StoreError",
    "TokenError",
    "TokenNotFoundError",
    "TokenPinError",
    "TooLargeError",
    "UnauthenticatedError",
    "VerificationError",
    "WeakKeyError",
]


class SignerError(Exception):
    """Root of every error raised by the signer on purpose."""

    default_reason = "INTERNAL"

    def __init__(
        self, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason
        self.details = details or {}  # recorded with the rejection in the audit log


class ConfigError(SignerError):
    default_reason = "BAD_CONFIG"


class TokenError(SignerError):
    default_reason = "TOKEN_ERROR"


class TokenNotFoundError(TokenError):
    default_reason = "TOKEN_NOT_FOUND"


class TokenPinError(TokenError):
    default_reason = "TOKEN_PIN_REJECTED"


class KeyNotFoundError(TokenError):
    default_reason = "UNKNOWN_KEY"


class WeakKeyError(TokenError):
    default_reason = "WEAK_KEY"


class StoreError(SignerError):
    default_reason = "STORE_UNAVAILABLE"


class AuditHeadError(StoreError):
    """The audit key refuses to sign: the stored log does not extend the token's tree head.

    Reasons: AUDIT_ROLLBACK (the log is shorter than the head: truncated or an
    older copy restored) and AUDIT_HEAD_MISMATCH (entries the head covers were
    changed, or the log forked).
    """

    default_reason = "AUDIT_HEAD_MISMATCH"


class InvalidArgumentError(SignerError):
    default_reason = "INVALID_ARGUMENT"


class EnvelopeError(InvalidArgumentError):
    default_reason = "BAD_ENVELOPE"


class StatementMismatchError(EnvelopeError):
    """A verified approval statement that is not this decision on this request; `fields`
    names the statement's fields that differ (each verifier words its own message)."""

    default_reason = "STATEMENT_MISMATCH"

    def __init__(self, message: str, fields: tuple[str, ...]) -> None:
        super().__init__(message)
        self.fields = fields


class NotFoundError(SignerError):
    default_reason = "NOT_FOUND"


class UnauthenticatedError(SignerError):
    default_reason = "NO_CLIENT_CERTIFICATE"


class PermissionDeniedError(SignerError):
    default_reason = "PERMISSION_DENIED"


class ConflictError(SignerError):
    default_reason = "BAD_STATE"


class AlreadyExistsError(SignerError):
    default_reason = "IDEMPOTENCY_KEY_REUSED"


class TooLargeError(SignerError):
    default_reason = "TOO_LARGE"


class VerificationError(SignerError):
    default_reason = "VERIFICATION_FAILED"


class ResponseMismatchError(VerificationError):
    """A server's answer is not for what the client asked (docs/architecture.md §14)."""

    default_reason = "RESPONSE_MISMATCH"


class PolicyChainError(VerificationError):
    """A policy version that is not the next link of the chain (docs/architecture.md §11): skipped,
    rolled back, forked, unsigned or under-signed; the message names what is missing."""

    default_reason = "POLICY_NOT_CHAINED"
