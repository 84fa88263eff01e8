"""What `signer sign` and `signer status` write once a request is decided.

Nothing is written unless the request is SIGNED and `workflow.verify_signed`
has checked every signature against the key's public key and the audit proof
against the pinned audit verifier; a DSSE envelope is written only if the
signed digest is that of its payload. Raw signatures get their audit proof
beside them; bundles carry it inside.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from signer.audit.proofs import SignedProof
from signer.cli.kit import fail, request_dict, say
from signer.client import workflow
from signer.client.profile import Profile
from signer.client.workflow import Asked
from signer.convert import HASH_FROM_PB
from signer.formats.bundle import Bundle, dsse_envelope
from signer.formats.intoto import pae_digest
from signer.model import Digest
from signer.v1 import types_pb2

__all__ = ["finish"]


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
                f"request {request.id} is still {state} after the timeout; "
                f"fetch it later with `signer status {request.id} {again}`"
            )
        fail(f"request {request.id} ended {state}: {request.status_message}")
    verified = workflow.verify_signed(profile, stub, request, asked, own_digests)
    proof, key = verified.proof, verified.key
    if fmt == "raw":
        targets = [out] if out is not None else [f.with_name(f.name + ".sig") for f in files]
        for path, sig in zip(targets, request.signatures, strict=True):
            _write_signature(path, sig, proof)
        return
    first = files[0] if files else None

    def target(suffix: str) -> Path:
        if out is not None:
            return out
        assert first is not None
        return first.with_name(first.name + suffix)

    if fmt == "bundle":
        path = target(".bundle.json")
        _write_json(path, _bundle(request, key, proof, None).to_json())
        say(f"bundle written to {path}")
        return
    if not request.payload or len(request.signatures) != 1:
        fail(f"request {request.id} has no DSSE payload; use --format raw or bundle")
    d = request.digests[0]
    if pae_digest(request.payload_type, request.payload, HASH_FROM_PB[d.algorithm]) != d.value:
        fail(f"request {request.id}: the signed digest is not that of its payload; not written")
    envelope = dsse_envelope(
        request.payload_type, request.payload, request.key_id, request.signatures[0]
    )
    path = target(".intoto.json")
    _write_json(path, envelope)
    bundle_path = path.with_name(path.name + ".bundle.json")
    _write_json(bundle_path, _bundle(request, key, proof, envelope).to_json())
    say(f"DSSE envelope written to {path} (bundle: {bundle_path})")


def _bundle(
    request: types_pb2.SigningRequest,
    key: types_pb2.KeyInfo,
    proof: SignedProof,
    envelope: dict[str, Any] | None,
) -> Bundle:
    approvals = [a.envelope for a in request.approvals if a.decision == types_pb2.DECISION_APPROVE]
    return Bundle(
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
        audit=proof,
        dsse=envelope,
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _write_signature(path: Path, signature: bytes, proof: SignedProof) -> None:
    """The signature, and beside it the proof that it is on the audit log."""
    path.write_bytes(signature)
    proof_path = path.with_name(path.name + ".audit.json")
    _write_json(proof_path, proof.to_json())
    say(f"signature written to {path} (audit proof: {proof_path})")
