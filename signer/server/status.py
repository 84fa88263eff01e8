"""Domain errors as gRPC statuses: the one mapping used by servicers and the interceptor.

Each status carries an actionable message and a `google.rpc.ErrorInfo`
(domain `signer.v1`) whose reason clients branch on (docs/architecture.md §9). The message is
cut to `MAX_MESSAGE` characters: whatever a caller sent, the answer stays small.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from signer.bounds import clip
from signer.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SignerError,
    StoreError,
    TokenError,
    TooLargeError,
    UnauthenticatedError,
)

__all__ = ["ERROR_DOMAIN", "abort", "status_code_of"]

ERROR_DOMAIN = "signer.v1"
_CODES: list[tuple[type[SignerError], grpc.StatusCode]] = [
    (StoreError, grpc.StatusCode.UNAVAILABLE),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (TooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TokenError, grpc.StatusCode.UNAVAILABLE),
]


def status_code_of(error: SignerError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, error: SignerError) -> NoReturn:
    """End the call with `error`'s status code, message and reason (raises)."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
    status = status_pb2.Status(
        code=status_code_of(error).value[0], message=clip(str(error)), details=[detail]
    )
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # abort_with_status raises
