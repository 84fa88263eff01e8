"""`--format raw`: one bare signature per artifact, its audit proof beside it.

The signature is what the key's scheme produces over the artifact's digest
(ECDSA DER, RSA-PSS or PKCS#1 v1.5), so `openssl dgst -verify` checks it with
the key's public key and nothing else; `ARTIFACT.sig.audit.json` holds the
proof that it is on the audit log, and `ARTIFACT.sig.bundle.json` (beside the
first artifact's) the request's evidence bundle for `signer verify --bundle`.
`signer verify --signature` checks it with the pinned public key only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from signer.audit.proofs import SignedProof
from signer.errors import ConfigError, VerificationError
from signer.formats.base import Evidence, OutputFormat, SignedRequest, Verdict, write_json
from signer.formats.bundle import write_beside
from signer.verify import verify_digest

__all__ = ["RawFormat"]


class RawFormat(OutputFormat):
    name: ClassVar[str] = "raw"
    summary: ClassVar[str] = "raw signatures"
    suffix: ClassVar[str] = ".sig"
    per_artifact: ClassVar[bool] = True

    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        said = [
            _write_signature(path, sig, signed.proof)
            for path, sig in zip(targets, signed.signatures, strict=True)
        ]
        return [*said, write_beside(signed, targets[0])]

    def verify(self, evidence: Evidence) -> Verdict:
        if evidence.public_key is None or evidence.digest is None:
            raise ConfigError("a raw signature is checked with a public key, over a digest")
        try:
            pub = serialization.load_pem_public_key(evidence.public_key.read_bytes())
        except ValueError:
            raise ConfigError(f"{evidence.public_key} is not a PEM public key") from None
        d = evidence.digest
        try:
            used = verify_digest(
                pub, d.algorithm, d.value, evidence.path.read_bytes(), evidence.scheme
            )
        except InvalidSignature:
            raise VerificationError("signature INVALID") from None
        return Verdict(f"signature OK ({used}, {d.algorithm})")


def _write_signature(path: Path, signature: bytes, proof: SignedProof) -> str:
    """The signature, and beside it the proof that it is on the audit log."""
    path.write_bytes(signature)
    proof_path = path.with_name(path.name + ".audit.json")
    write_json(proof_path, proof.to_json())
    return f"signature written to {path} (audit proof: {proof_path})"
