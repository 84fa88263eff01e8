"""gRPC clients of a dev environment, one per identity, over real mTLS.

`Clients` reuses one channel per identity (closed by `close`) and builds the
flows a test or a benchmark drives: create a request, approve or deny it with
a DSSE envelope signed by the officer's own key (or, to build bad approvals,
another one), get it. Every call carries a deadline (`RPC_TIMEOUT`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from typing import Any

import grpc

from signer.dsse import Statement, sign_statement
from signer.model import Digest
from signer.v1 import (
    approval_pb2,
    approval_pb2_grpc,
    audit_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
    types_pb2,
)
from testbed.env import Env

__all__ = ["RPC_TIMEOUT", "Clients", "sha256_digest"]

RPC_TIMEOUT = 20.0


class Clients:
    """Stubs per identity over real mTLS, with channels reused and closed at the end."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self._channels: dict[str, grpc.Channel] = {}

    def channel(self, name: str) -> grpc.Channel:
        if name not in self._channels:
            self._channels[name] = self.env.profile(name).channel()
        return self._channels[name]

    def signing(self, name: str = "ci") -> signing_pb2_grpc.SigningServiceStub:
        return signing_pb2_grpc.SigningServiceStub(self.channel(name))

    def approval(self, name: str) -> approval_pb2_grpc.ApprovalServiceStub:
        return approval_pb2_grpc.ApprovalServiceStub(self.channel(name))

    def audit(self, name: str = "auditor") -> audit_pb2_grpc.AuditServiceStub:
        return audit_pb2_grpc.AuditServiceStub(self.channel(name))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    # -- flows --------------------------------------------------------------

    def create(
        self,
        *,
        key: str = "release",
        digests: list[types_pb2.Digest] | None = None,
        who: str = "ci",
        **fields: Any,
    ) -> types_pb2.SigningRequest:
        req = signing_pb2.CreateSigningRequestRequest(
            key_name=key, digests=digests or [sha256_digest(os.urandom(16))], **fields
        )
        resp = self.signing(who).CreateSigningRequest(req, timeout=RPC_TIMEOUT)
        return resp.request

    def envelope(
        self,
        officer: str,
        request: types_pb2.SigningRequest,
        *,
        decision: str = "approve",
        reason: str = "",
        signer: str | None = None,
        **overrides: Any,
    ) -> bytes:
        """A DSSE approval for `request` by `officer`, signed with `signer`'s key.

        `overrides` replace statement fields (request_id, key_name, key_id, digests,
        approver, issued_at, decision) to build bad approvals.
        """
        fields: dict[str, Any] = {
            "request_id": request.id,
            "key_name": request.key_name,
            "key_id": request.key_id,
            **Statement.binding(
                tuple(
                    Digest(_HASH_NAMES[d.algorithm], d.value, d.artifact_name)
                    for d in request.digests
                ),
                request.payload_type,
                request.payload,
            ),
            "decision": decision,
            "approver": officer,
            "issued_at": dt.datetime.now(dt.UTC),
            "reason": reason,
        }
        fields.update(overrides)
        return sign_statement(Statement(**fields), self.env.approval_key(signer or officer))

    def approve(
        self, officer: str, request: types_pb2.SigningRequest, **kw: Any
    ) -> types_pb2.SigningRequest:
        env = self.envelope(officer, request, **kw)
        return (
            self.approval(officer)
            .Approve(approval_pb2.ApproveRequest(id=request.id, envelope=env), timeout=RPC_TIMEOUT)
            .request
        )

    def deny(
        self, officer: str, request: types_pb2.SigningRequest, reason: str = "no", **kw: Any
    ) -> types_pb2.SigningRequest:
        env = self.envelope(officer, request, decision="deny", reason=reason, **kw)
        return (
            self.approval(officer)
            .Deny(approval_pb2.DenyRequest(id=request.id, envelope=env), timeout=RPC_TIMEOUT)
            .request
        )

    def get(self, request_id: str, who: str = "ci") -> types_pb2.SigningRequest:
        return (
            self.signing(who)
            .GetSigningRequest(
                signing_pb2.GetSigningRequestRequest(id=request_id), timeout=RPC_TIMEOUT
            )
            .request
        )


_HASH_NAMES = {
    types_pb2.HASH_ALGORITHM_SHA256: "sha256",
    types_pb2.HASH_ALGORITHM_SHA384: "sha384",
    types_pb2.HASH_ALGORITHM_SHA512: "sha512",
}


def sha256_digest(data: bytes, artifact: str = "artifact.bin") -> types_pb2.Digest:
    return types_pb2.Digest(
        algorithm=types_pb2.HASH_ALGORITHM_SHA256,
        value=hashlib.sha256(data).digest(),
        artifact_name=artifact,
    )
