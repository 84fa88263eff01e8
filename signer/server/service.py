"""The gRPC servicers: parse, call the core, map domain errors to status codes.

Thin by design: identity comes from `auth.current_identity` (set by the
interceptor from the TLS auth context); all rules live in the core. Domain
errors become gRPC status codes here and only here, with a
`google.rpc.ErrorInfo` carrying the machine-readable reason. Every rejected
call is audit-logged; if that audit write fails the call fails UNAVAILABLE.
Its log line is rate-limited per identity, with every echoed value cut short.

No caller can make an answer too large for others to read (docs/architecture.md §14): a
listing page holds at most `page_size` items and stops before `PAGE_BYTES` of
them (always one at least, and no item is larger than a page). Officers get
requests as summaries (at most `INLINE_DIGESTS` digests inline, and
`digest_count`) and page through a batch's digests with ListRequestDigests.
Long-lived calls (waits, watches) have a per-identity cap and a time bound.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from signer.audit.entry import AuditEntry
from signer.bounds import RateLimit, Slots, clip, echo, fitting
from signer.convert import (
    STATE_FROM_PB,
    audit_event_pb,
    audit_proof_pb,
    digest_from_pb,
    digest_pb,
    duration,
    key_info_pb,
    policy_proposal_pb,
    request_pb,
    time_of,
)
from signer.core.machine import Core
from signer.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PolicyChainError,
    SignerError,
    StoreError,
    TokenError,
)
from signer.model import INLINE_DIGESTS, Request, State, TokenCaller
from signer.policy_decisions import Proposed
from signer.server.auth import current_caller, current_identity, current_method
from signer.server.status import abort
from signer.store.base import PAGE_BYTES, AuditFilter
from signer.v1 import (
    approval_pb2,
    approval_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
    types_pb2,
)

__all__ = ["ApprovalService", "AuditService", "SigningService"]

log = structlog.get_logger("signer.server.service")
F = TypeVar("F", bound=Callable[..., Any])


def _rpc(method: F) -> F:
    """Map SignerErrors to status codes and audit every rejected call."""

    @functools.wraps(method)
    def wrapper(self: _Base, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except SignerError as e:
            self._reject(e, request, context)

    return wrapper  # type: ignore[return-value]


def _stream(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: _Base, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except SignerError as e:
            self._reject(e, request, context)

    return wrapper  # type: ignore[return-value]


def _page_of(items: Sequence[Message], max_bytes: int = PAGE_BYTES) -> int:
    """How many of the first `items` one page carries: under `max_bytes` serialized (a
    repeated field's element costs its size and at most 5 bytes of tag and length)."""
    return fitting([m.ByteSize() + 5 for m in items], max_bytes)


class _Base:
    def __init__(
        self, core: Core, max_wait: dt.timedelta, log_limit: RateLimit | None = None
    ) -> None:
        self.core = core
        self.max_wait = max_wait
        self.log_limit = log_limit or RateLimit(core.limits.max_rejections_per_minute)

    def _reject(self, error: SignerError, request: Any, context: grpc.ServicerContext) -> None:
        identity = current_identity.get()
        method = current_method.get()
        held = self.log_limit.allow(identity)
        if held is not None:  # a flood of bad calls writes a few lines a minute, not one each
            log.warning(
                "call rejected",
                reason=error.reason,
                error=clip(str(error)),
                **({"not_logged_before": held} if held else {}),
            )
        if not isinstance(error, StoreError | TokenError):
            try:
                self.core.record_rejection(identity, method, error, str(getattr(request, "id", "")))
            except (StoreError, TokenError) as e:  # its checkpoint needs the token too
                error = e
        abort(context, error)

    def _pb(self, r: Request, digests: int | None = None) -> types_pb2.SigningRequest:
        """The request as answered: whole, or with only its first `digests` digests."""
        policy = self.core.policies.get(r.key_name)
        shown = r if digests is None else dataclasses.replace(r, digests=r.digests[:digests])
        pb = request_pb(shown, policy.approvals_needed(bool(r.unusual)) if policy else 0)
        pb.digest_count = len(r.digests)
        if r.state is State.SIGNED:
            proof = self.core.audit_proof(r.id)
            if proof is not None:
                pb.audit_proof.CopyFrom(audit_proof_pb(proof))
        return pb

    def _summary_page(
        self, rows: Sequence[tuple[int, Request]]
    ) -> tuple[list[types_pb2.SigningRequest], str]:
        """A listing page of `rows` (store position, request): the summaries that fit in
        PAGE_BYTES, and the token of the next page. The store stops early at large
        batches too: any page but an empty one may have a next, so a listing ends with
        the first empty page."""
        found = [self._summary(r) for _, r in rows]
        n = _page_of(found)
        return found[:n], str(rows[n - 1][0]) if n else ""

    def _summary(self, r: Request) -> types_pb2.SigningRequest:
        """The request as listed: at most INLINE_DIGESTS digests (and `digest_count`),
        approvals without their envelopes, no signatures and no audit proof. Its size is
        bounded by the core's limits (about 300 KiB at most), well under a page."""
        policy = self.core.policies.get(r.key_name)
        shown = dataclasses.replace(
            r,
            digests=r.digests[:INLINE_DIGESTS],
            approvals=tuple(dataclasses.replace(a, envelope=b"") for a in r.approvals),
            signatures=(),
        )
        pb = request_pb(shown, policy.approvals_needed(bool(r.unusual)) if policy else 0)
        pb.digest_count = len(r.digests)
        return pb

    def _wait_budget(
        self, requested: dt.timedelta | None, context: grpc.ServicerContext
    ) -> dt.timedelta:
        budget = min(requested or self.max_wait, self.max_wait)
        remaining = context.time_remaining()
        # Answer before the client's deadline; a call without one reports a remaining
        # time too large for a timedelta (it is not a deadline at all).
        if remaining is not None and remaining < budget.total_seconds() + 0.5:
            budget = dt.timedelta(seconds=max(remaining - 0.5, 0))
        return budget


_OIDC_PAGES = 10  # store pages one OIDC listing reads to find requests its claims admit


class SigningService(_Base, signing_pb2_grpc.SigningServiceServicer):
    max_waits_per_identity = 16  # long polls one identity may hold at once

    def __init__(
        self,
        core: Core,
        max_wait: dt.timedelta,
        log_limit: RateLimit | None = None,
        certificates: Callable[[str], bytes] | None = None,
    ) -> None:
        super().__init__(core, max_wait, log_limit)
        self.certificates = certificates  # a key's OpenPGP certificate, read from the token
        # Bound the worker threads one identity can hold in long polls.
        self.waits = Slots(self.max_waits_per_identity, "waits open", "TOO_MANY_WAITS")

    @_rpc
    def CreateSigningRequest(
        self, request: signing_pb2.CreateSigningRequestRequest, context: grpc.ServicerContext
    ) -> signing_pb2.CreateSigningRequestResponse:
        digests = [digest_from_pb(i, d) for i, d in enumerate(request.digests)]
        r = self.core.create(
            current_identity.get(),
            request.key_name,
            digests,
            dict(request.context),
            duration(request.ttl),
            request.idempotency_key,
            caller=current_caller.get(),
            payload_type=request.payload_type,
            payload=request.payload,
        )
        return signing_pb2.CreateSigningRequestResponse(request=self._pb(r))

    @_rpc
    def GetSigningRequest(
        self, request: signing_pb2.GetSigningRequestRequest, context: grpc.ServicerContext
    ) -> signing_pb2.GetSigningRequestResponse:
        r = self.core.get_for_requester(current_identity.get(), request.id)
        return signing_pb2.GetSigningRequestResponse(request=self._pb(r))

    @_rpc
    def WaitSigningRequest(
        self, request: signing_pb2.WaitSigningRequestRequest, context: grpc.ServicerContext
    ) -> signing_pb2.WaitSigningRequestResponse:
        budget = self._wait_budget(duration(request.timeout), context)
        identity = current_identity.get()
        with self.waits.hold(identity):
            r = self.core.wait(identity, request.id, budget, alive=context.is_active)
        return signing_pb2.WaitSigningRequestResponse(request=self._pb(r), done=r.terminal)

    @_rpc
    def ListSigningRequests(
        self, request: signing_pb2.ListSigningRequestsRequest, context: grpc.ServicerContext
    ) -> signing_pb2.ListSigningRequestsResponse:
        after, size = _page(request.page_token, request.page_size, 20, 50)
        state = STATE_FROM_PB.get(request.state, State.PENDING)
        caller = current_caller.get()
        # A pipeline's token names an identity other pipelines may share (one claim of
        # several): it is shown only the requests its own claims would be admitted to.
        # A page the filter empties reads on, a few pages at most.
        kept: list[tuple[int, Request]] = []
        for _ in range(_OIDC_PAGES if caller is not None else 1):
            rows = self.core.list_for_requester(
                current_identity.get(), frozenset({state}), after, size
            )
            kept = [(seq, r) for seq, r in rows if caller is None or self._admits(caller, r)]
            if kept or not rows:
                break
            after = rows[-1][0]
        found, token = self._summary_page(kept)
        return signing_pb2.ListSigningRequestsResponse(requests=found, next_page_token=token)

    def _admits(self, caller: TokenCaller, r: Request) -> bool:
        policy = self.core.policies.get(r.key_name)
        return policy is not None and policy.admits(caller.issuer, caller.claims)

    @_rpc
    def CancelSigningRequest(
        self, request: signing_pb2.CancelSigningRequestRequest, context: grpc.ServicerContext
    ) -> signing_pb2.CancelSigningRequestResponse:
        r = self.core.cancel(current_identity.get(), request.id, request.reason)
        return signing_pb2.CancelSigningRequestResponse(request=self._pb(r))

    @_rpc
    def GetPublicKey(
        self, request: signing_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> signing_pb2.GetPublicKeyResponse:
        spec = self.core.keys.get(request.key_name)
        if spec is None:
            raise NotFoundError(
                f"no signing key named {echo(request.key_name)}", reason="UNKNOWN_KEY"
            )
        info = key_info_pb(spec)
        wanted = request.openpgp_certificate and spec.openpgp_created is not None
        if wanted and self.certificates is not None:
            info.openpgp_certificate = self.certificates(spec.name)
        return signing_pb2.GetPublicKeyResponse(key=info)

    @_rpc
    def ListKeys(
        self, request: signing_pb2.ListKeysRequest, context: grpc.ServicerContext
    ) -> signing_pb2.ListKeysResponse:
        keys = [key_info_pb(k) for _, k in sorted(self.core.keys.items())]
        return signing_pb2.ListKeysResponse(keys=keys)

    @_rpc
    def GetPolicyChain(
        self, request: signing_pb2.GetPolicyChainRequest, context: grpc.ServicerContext
    ) -> signing_pb2.GetPolicyChainResponse:
        versions = [
            signing_pb2.PolicyVersionEntry(index=e.index, entry=e.to_bytes())
            for e in self.core.policy_chain()
        ]
        return signing_pb2.GetPolicyChainResponse(versions=versions)


def _page(token: str, size: int, default: int, maximum: int) -> tuple[int, int]:
    if size < 0:
        raise InvalidArgumentError("page_size must not be negative")
    try:
        after = int(token) if token else -1
    except ValueError:
        after = -2
    if not -1 <= after < 2**62:
        raise InvalidArgumentError("page_token is not one this server issued")
    return after, min(size or default, maximum)


class ApprovalService(_Base, approval_pb2_grpc.ApprovalServiceServicer):
    watch_limit = dt.timedelta(minutes=10)
    max_watches_per_identity = 4  # WatchRequests streams one officer may hold at once

    def __init__(
        self, core: Core, max_wait: dt.timedelta, log_limit: RateLimit | None = None
    ) -> None:
        super().__init__(core, max_wait, log_limit)
        self.watches = Slots(
            self.max_watches_per_identity, "watch streams open", "TOO_MANY_WATCHES"
        )

    @_rpc
    def ListRequests(
        self, request: approval_pb2.ListRequestsRequest, context: grpc.ServicerContext
    ) -> approval_pb2.ListRequestsResponse:
        after, size = _page(request.page_token, request.page_size, 20, 50)
        state = STATE_FROM_PB.get(request.state, State.PENDING)
        rows = self.core.list_for_approver(current_identity.get(), frozenset({state}), after, size)
        found, token = self._summary_page(rows)
        return approval_pb2.ListRequestsResponse(requests=found, next_page_token=token)

    @_rpc
    def GetRequest(
        self, request: approval_pb2.GetRequestRequest, context: grpc.ServicerContext
    ) -> approval_pb2.GetRequestResponse:
        r = self.core.get_for_approver(current_identity.get(), request.id)
        return approval_pb2.GetRequestResponse(request=self._pb(r, digests=INLINE_DIGESTS))

    @_rpc
    def ListRequestDigests(
        self, request: approval_pb2.ListRequestDigestsRequest, context: grpc.ServicerContext
    ) -> approval_pb2.ListRequestDigestsResponse:
        after, size = _page(request.page_token, request.page_size, 1000, 10_000)
        r = self.core.get_for_approver(current_identity.get(), request.id)
        start = after + 1
        if start > len(r.digests):
            raise InvalidArgumentError("page_token is not one this server issued")
        page = [digest_pb(d) for d in r.digests[start : start + size]]
        end = start + _page_of(page)
        return approval_pb2.ListRequestDigestsResponse(
            digests=page[: end - start],
            next_page_token=str(end - 1) if end < len(r.digests) else "",
            digest_count=len(r.digests),
        )

    @_rpc
    def Approve(
        self, request: approval_pb2.ApproveRequest, context: grpc.ServicerContext
    ) -> approval_pb2.ApproveResponse:
        r = self.core.decide(current_identity.get(), request.id, request.envelope, "approve")
        return approval_pb2.ApproveResponse(request=self._pb(r))

    @_rpc
    def Deny(
        self, request: approval_pb2.DenyRequest, context: grpc.ServicerContext
    ) -> approval_pb2.DenyResponse:
        r = self.core.decide(current_identity.get(), request.id, request.envelope, "deny")
        return approval_pb2.DenyResponse(request=self._pb(r))

    @_rpc
    def FreezeKey(
        self, request: approval_pb2.FreezeKeyRequest, context: grpc.ServicerContext
    ) -> approval_pb2.FreezeKeyResponse:
        held = self.core.freeze(current_identity.get(), request.key_name, request.envelope)
        frozen_at = timestamp_pb2.Timestamp()
        frozen_at.FromDatetime(held.frozen_at)
        return approval_pb2.FreezeKeyResponse(
            key_name=held.key_name,
            since_index=held.since_index,
            officer=held.officer,
            reason=held.reason,
            frozen_at=frozen_at,
        )

    @_rpc
    def ListPolicyProposals(
        self, request: approval_pb2.ListPolicyProposalsRequest, context: grpc.ServicerContext
    ) -> approval_pb2.ListPolicyProposalsResponse:
        me = current_identity.get()
        mine = [
            policy_proposal_pb(p)
            for p in reversed(self.core.policy_proposals())
            if _officer_of(p, me) and request.index in (0, p.index)
        ][:MAX_PROPOSALS]
        n = _page_of(mine, PROPOSAL_BYTES)
        return approval_pb2.ListPolicyProposalsResponse(proposals=mine[:n])

    @_rpc
    def ApprovePolicy(
        self, request: approval_pb2.ApprovePolicyRequest, context: grpc.ServicerContext
    ) -> approval_pb2.ApprovePolicyResponse:
        p = self.core.approve_policy(current_identity.get(), request.index, request.envelope)
        return approval_pb2.ApprovePolicyResponse(proposal=policy_proposal_pb(p))

    @_rpc
    def DenyPolicy(
        self, request: approval_pb2.DenyPolicyRequest, context: grpc.ServicerContext
    ) -> approval_pb2.DenyPolicyResponse:
        p = self.core.deny_policy(current_identity.get(), request.index, request.envelope)
        return approval_pb2.DenyPolicyResponse(proposal=policy_proposal_pb(p))

    @_stream
    def WatchRequests(
        self, request: approval_pb2.WatchRequestsRequest, context: grpc.ServicerContext
    ) -> Iterator[approval_pb2.WatchRequestsResponse]:
        identity = current_identity.get()
        with self.watches.hold(identity):
            yield from self._watch(identity, context)

    def _watch(
        self, identity: str, context: grpc.ServicerContext
    ) -> Iterator[approval_pb2.WatchRequestsResponse]:
        version = self.core.notifier.version
        after = -1
        while rows := self.core.list_for_approver(identity, frozenset({State.PENDING}), after, 50):
            for seq, r in rows:
                yield approval_pb2.WatchRequestsResponse(request=self._summary(r))
                after = seq
        end = time.monotonic() + self._wait_budget(self.watch_limit, context).total_seconds()
        while context.is_active() and time.monotonic() < end:
            version, changed = self.core.notifier.wait(version, min(1.0, end - time.monotonic()))
            for rid in changed:
                try:
                    r = self.core.get_for_approver(identity, rid)
                except PermissionDeniedError:
                    continue  # a request for a key this officer does not approve
                yield approval_pb2.WatchRequestsResponse(request=self._summary(r))


class AuditService(_Base, audit_pb2_grpc.AuditServiceServicer):
    @_rpc
    def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ListAuditEventsResponse:
        after, size = _page(request.page_token, request.page_size, 100, 1000)
        f = AuditFilter(
            event=request.event,
            actor=request.actor,
            request_id=request.request_id,
            key_name=request.key_name,
            requester=request.requester,
            start=time_of(request.start_time) if request.HasField("start_time") else None,
            end=time_of(request.end_time) if request.HasField("end_time") else None,
        )
        events = [audit_event_pb(e) for e in self.core.list_audit(f, after, size)]
        n = _page_of(events)
        # The store stops early at large entries too: the listing ends with an empty page.
        token = str(events[n - 1].index) if n else ""
        return audit_pb2.ListAuditEventsResponse(events=events[:n], next_page_token=token)

    @_rpc
    def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetCheckpointResponse:
        size, note = self.core.latest_checkpoint()
        return audit_pb2.GetCheckpointResponse(tree_size=size, checkpoint=note)

    @_rpc
    def GetEntries(
        self, request: audit_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetEntriesResponse:
        raw = self.core.entries(request.start, request.end)
        events = [audit_event_pb(AuditEntry.from_bytes(e)) for e in raw]
        return audit_pb2.GetEntriesResponse(events=events[: _page_of(events)])

    @_rpc
    def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetInclusionProofResponse:
        hashes = self.core.inclusion_proof(request.index, request.tree_size)
        return audit_pb2.GetInclusionProofResponse(hashes=hashes)

    @_rpc
    def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetConsistencyProofResponse:
        hashes = self.core.consistency_proof(request.first, request.second)
        return audit_pb2.GetConsistencyProofResponse(hashes=hashes)


MAX_PROPOSALS = 16  # listed at once: each holds two whole policy documents
PROPOSAL_BYTES = 16 * 1024 * 1024  # a page of them (a document is at most 1 MiB)


def _officer_of(p: Proposed, identity: str) -> bool:
    """Whether `identity` is a policy officer `p` needs a decision from."""
    try:
        return any(identity in o.names for _, o in p.sets)
    except PolicyChainError:
        return False
