"""What `signer sign` and `signer status` write once a request is decided.

Nothing is written unless the request is SIGNED and `workflow.verify_signed`
has checked every signature against the key's public key and the audit proof
against the pinned audit verifier. Then the chosen format
(`signer.formats.registry`) assembles and writes its files from the verified
answer; each format's own checks (a DSSE envelope is written only if the
signed digest is that of its payload) are in its module.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from signer.audit.proofs import SignedProof
from signer.cli.kit import EXIT_UNDECIDED, fail, request_dict, say
from signer.client import workflow
from signer.client.profile import Profile
from signer.client.workflow import Asked
from signer.convert import HASH_FROM_PB, digest_pb
from signer.formats import registry
from signer.formats.base import Carried, SignedRequest
from signer.model import Digest
from signer.v1 import signing_pb2, types_pb2

__all__ = ["finish", "obtain", "progress", "verified"]


def progress(request: types_pb2.SigningRequest) -> None:
    """Say on stderr what changed while waiting: approvals so far, a denial, the end."""
    line = workflow.progress_line(request)
    if line is not None:
        say(line)


def _seconds(span: dt.timedelta) -> str:
    return f"{span.total_seconds():g}s"


def finish(
    profile: Profile,
    stub: Any,
    request: types_pb2.SigningRequest,
    asked: Asked,
    fmt: str,
    files: tuple[Path, ...],
    out: Path | None,
    own_digests: list[tuple[str, bytes]] | None = None,
) -> None:
    """Verify a decided request's signatures and proof, then write the chosen output."""
    state = request_dict(request)["state"]
    if state != "SIGNED":
        if state in ("PENDING", "APPROVED"):
            # The files' own digests are checked again only when they are named.
            again = " ".join(f"--file {shlex.quote(str(f))}" for f in files) or "--out FILE"
            fail(
                f"request {request.id} is still {state} ({_count(request)}) after the "
                "timeout; "
                f"fetch it later with `signer status {request.id} {again}`",
                EXIT_UNDECIDED,
            )
        fail(f"request {request.id} ended {state}: {request.status_message}")
    output = registry.FORMATS[fmt]
    signed = replace(verified(profile, stub, request, asked, own_digests), files=files)
    for line in output.write(signed, output.targets(out, files, request.payload)):
        say(line)


def _count(r: types_pb2.SigningRequest) -> str:
    approved = sum(a.decision == types_pb2.DECISION_APPROVE for a in r.approvals)
    return f"{approved} of {r.threshold} approvals"


def obtain(
    profile: Profile,
    stub: Any,
    key_name: str,
    carried: Carried,
    context: dict[str, str],
    wait_for: dt.timedelta,
) -> SignedRequest:
    """Ask for `carried` to be signed, wait at most `wait_for` for the officers, and return
    the answer once its signatures and proof verify; fail unless it was signed."""
    create = signing_pb2.CreateSigningRequestRequest(
        key_name=key_name,
        digests=[digest_pb(d) for d in carried.digests],
        context=context,
        idempotency_key=str(uuid.uuid4()),
        payload_type=carried.payload_type,
        payload=carried.payload,
    )
    asked = Asked.of(create)
    request = workflow.create(profile, stub, create)
    say(f"waiting for {request.threshold} approvals on {key_name} (request {request.id})...")
    asked = asked.for_request(request.id)
    last, _ = workflow.wait(profile, stub, asked, wait_for, progress)
    request = last or request
    # Undecided is what the state says, not the server's `done`.
    if request.state in (types_pb2.REQUEST_STATE_PENDING, types_pb2.REQUEST_STATE_APPROVED):
        fail(
            f"request {request.id} is still undecided after {_seconds(wait_for)}; it goes on",
            EXIT_UNDECIDED,
        )
    if request.state != types_pb2.REQUEST_STATE_SIGNED:
        fail(f"request {request.id} was not signed: {request.status_message or 'no reason'}")
    return verified(profile, stub, request, asked)


def verified(
    profile: Profile,
    stub: Any,
    request: types_pb2.SigningRequest,
    asked: Asked,
    own_digests: list[tuple[str, bytes]] | None = None,
) -> SignedRequest:
    """A SIGNED answer as the formats take it, once its signatures and proof verify."""
    checked = workflow.verify_signed(profile, stub, request, asked, own_digests)
    return dataclasses.replace(
        _signed(request, checked.key, checked.proof), policy_chain=checked.policy_chain
    )


def _signed(
    request: types_pb2.SigningRequest, key: types_pb2.KeyInfo, proof: SignedProof
) -> SignedRequest:
    """The verified answer as the formats take it: domain types, approvals only."""
    approvals = [a.envelope for a in request.approvals if a.decision == types_pb2.DECISION_APPROVE]
    return SignedRequest(
        request_id=request.id,
        key_name=request.key_name,
        key_id=request.key_id,
        algorithm=request.algorithm,
        public_key_pem=key.public_key_pem,
        digests=tuple(
            Digest(HASH_FROM_PB[d.algorithm], d.value, d.artifact_name) for d in request.digests
        ),
        signatures=tuple(request.signatures),
        threshold=request.threshold,
        approvals=tuple(approvals),
        proof=proof,
        payload_type=request.payload_type,
        payload=request.payload,
    )
