"""`--format cosign`: what `cosign sign-blob --key` writes, for `cosign verify-blob --key`.

Per artifact, `ARTIFACT.sig` holds the base64 of the DER ECDSA (or RSA)
signature over the SHA-256 of the file, the signature file cosign reads, and
`ARTIFACT.sigstore.json` a Sigstore bundle v0.3 with the same message signature,
its digest and a public-key hint (the key id), which Sigstore verifiers check
given the public key as trust material; no transparency-log entry or timestamp
is claimed. The proof that the signature is on our audit log is written beside
it (`ARTIFACT.sig.audit.json`), the request's evidence bundle beside the first
(`ARTIFACT.sig.bundle.json`, for `signer verify --bundle`). cosign signs SHA-256
digests only: a request for another hash is refused before anything is sent.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from signer.errors import ConfigError, InvalidArgumentError, VerificationError
from signer.formats.base import Carried, Evidence, OutputFormat, SignedRequest, Verdict, write_json
from signer.formats.bundle import write_beside
from signer.model import Digest
from signer.verify import verify_digest

__all__ = ["MEDIA_TYPE", "CosignFormat", "sigstore_bundle"]

MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def sigstore_bundle(key_id: str, digest: bytes, signature: bytes) -> dict[str, Any]:
    """A Sigstore bundle v0.3 of one message signature over a SHA-256 digest."""
    return {
        "mediaType": MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_id},
            "tlogEntries": [],
            "timestampVerificationData": {"rfc3161Timestamps": []},
        },
        "messageSignature": {
            "messageDigest": {
                "algorithm": "SHA2_256",
                "digest": base64.b64encode(digest).decode(),
            },
            "signature": base64.b64encode(signature).decode(),
        },
    }


class CosignFormat(OutputFormat):
    name: ClassVar[str] = "cosign"
    summary: ClassVar[str] = "cosign signatures and Sigstore bundles"
    suffix: ClassVar[str] = ".sig"
    per_artifact: ClassVar[bool] = True
    default_hash: ClassVar[str] = "sha256"

    def carry(
        self,
        digests: Sequence[Digest],
        context: Mapping[str, str],
        hash_name: str,
        params: Mapping[str, str],
        algorithm: str = "",
    ) -> Carried:
        if any(d.algorithm != "sha256" for d in digests) or hash_name != "sha256":
            raise InvalidArgumentError(
                "cosign signatures are over SHA-256 digests; use --hash sha256",
                reason="BAD_HASH_FOR_FORMAT",
            )
        return Carried(tuple(digests))

    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        said = []
        for path, sig, d in zip(targets, signed.signatures, signed.digests, strict=True):
            if d.algorithm != "sha256":
                raise VerificationError(
                    f"request {signed.request_id}: a cosign signature needs a SHA-256 digest"
                )
            path.write_text(base64.b64encode(sig).decode() + "\n")
            bundle = path.with_name(path.name.removesuffix(self.suffix) + ".sigstore.json")
            write_json(bundle, sigstore_bundle(signed.key_id, d.value, sig))
            proof = path.with_name(path.name + ".audit.json")
            write_json(proof, signed.proof.to_json())
            said.append(
                f"cosign signature written to {path} (Sigstore bundle: {bundle}; "
                f"audit proof: {proof})"
            )
        return [*said, write_beside(signed, targets[0])]

    def verify(self, evidence: Evidence) -> Verdict:
        """The base64 signature (or a bundle's message signature) over the file's SHA-256."""
        if evidence.public_key is None or evidence.digest is None:
            raise ConfigError("a cosign signature is checked with a public key, over a digest")
        if evidence.digest.algorithm != "sha256":
            raise ConfigError("a cosign signature is over a SHA-256 digest")
        try:
            pub = serialization.load_pem_public_key(evidence.public_key.read_bytes())
        except ValueError:
            raise ConfigError(f"{evidence.public_key} is not a PEM public key") from None
        signature = _signature_of(evidence.path.read_bytes(), evidence.digest.value)
        try:
            used = verify_digest(pub, "sha256", evidence.digest.value, signature, evidence.scheme)
        except InvalidSignature:
            raise VerificationError("signature INVALID") from None
        return Verdict(f"cosign signature OK ({used}, sha256)")


def _signature_of(raw: bytes, digest: bytes) -> bytes:
    """The DER signature in a `.sig` file (base64) or a Sigstore bundle over `digest`."""
    try:
        text = raw.decode("ascii").strip()
        if text.startswith("{"):
            message = json.loads(text)["messageSignature"]
            if base64.b64decode(message["messageDigest"]["digest"], validate=True) != digest:
                raise VerificationError("the bundle's digest is not the artifact's: INVALID")
            text = message["signature"]
        return base64.b64decode(text, validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error):
        raise VerificationError("not a cosign signature or Sigstore bundle") from None
