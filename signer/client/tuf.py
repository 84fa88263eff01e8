"""A securesystemslib `Signer` that signs through the service, for python-tuf tooling.

Importing this module registers the `signer:` private-key URI scheme in
`securesystemslib.signer.SIGNER_FOR_URI_SCHEME` (`register()` does it again,
idempotently); the URI and the key types and schemes a service key maps to are
in `signer.client.keyuri`. `sign(payload)` hashes the payload with the key scheme's
hash, asks for a signature over that one digest, prints progress on stderr and
blocks until the request is decided. A signature is returned only after it
verifies with the caller's public key and its audit proof verifies against the
profile's pinned `audit_verifier` (a profile without one is refused); anything
else raises a `ServiceSignerError` (a RuntimeError), which python-tuf's
`Metadata.sign` wraps in its UnsignedMetadataError:

    from pathlib import Path

    from securesystemslib.signer import Signer
    from tuf.api.metadata import Metadata

    import signer.sslib

    uri, key = signer.sslib.import_key("release", Path("ci.toml"))  # once; store both
    md = Metadata.from_file("root.json")
    md.sign(Signer.from_priv_key_uri(uri, key), append=True)  # waits for m of n officers
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from securesystemslib.exceptions import UnsupportedAlgorithmError, UnverifiedSignatureError
from securesystemslib.signer import (  # type: ignore[attr-defined]  # no __all__
    SIGNER_FOR_URI_SCHEME,
    Key,
    SecretsHandler,
    Signature,
    Signer,
    SSlibKey,
)

from signer.algorithms import HASH_SIZES
from signer.client import workflow
from signer.client.keyuri import SCHEME, KeyURI, check_supported, parse_uri, sslib_schemes
from signer.client.profile import Profile, RemoteError, load_profile, stubs
from signer.client.workflow import Asked, call
from signer.convert import HASH_TO_PB
from signer.errors import ConfigError, SignerError, VerificationError
from signer.text import shown
from signer.v1 import signing_pb2, signing_pb2_grpc, types_pb2

__all__ = [
    "ServiceSigner",
    "ServiceSignerError",
    "SignatureCheckError",
    "SigningRefusedError",
    "SigningTimeoutError",
    "import_key",
    "register",
]

CONTEXT = {"signer": "securesystemslib"}
_STATE_NAMES = {v: k.removeprefix("REQUEST_STATE_") for k, v in types_pb2.RequestState.items()}


class ServiceSignerError(SignerError, RuntimeError):
    """No signature: the service could not be used, or refused, or returned a bad one."""


class SigningRefusedError(ServiceSignerError):
    """The request ended DENIED, EXPIRED, CANCELLED or FAILED."""

    def __init__(self, request_id: str, state: str, status_message: str) -> None:
        why = f": {shown(status_message)}" if status_message else ""  # the server's text
        super().__init__(f"signing request {shown(request_id)} ended {state}{why}")
        self.request_id, self.state, self.status_message = request_id, state, status_message


class SigningTimeoutError(ServiceSignerError):
    """The officers did not decide within the URI's timeout (the request was cancelled)."""

    def __init__(self, request_id: str, timeout: dt.timedelta, cancelled: bool = True) -> None:
        fate = "it was cancelled" if cancelled else "it could not be cancelled"
        super().__init__(
            f"signing request {request_id} was not decided within {_fmt(timeout)}; "
            f"{fate} (raise timeout= in the key URI to wait longer)"
        )
        self.request_id, self.cancelled = request_id, cancelled


class SignatureCheckError(ServiceSignerError):
    """The public key does not match the service key, or what came back does not verify."""


def import_key(
    key_name: str, profile: str | os.PathLike[str] | None = None
) -> tuple[str, SSlibKey]:
    """Fetch a service key's public key; return its private-key URI and SSlibKey.

    Like securesystemslib's own `import_` helpers, call it once and store both:
    the key goes into TUF metadata, the URI into the repository tool's
    configuration. `profile` is a path (a str or a Path), by default the one
    $SIGNER_PROFILE names; the URI names the profile used, as given, so signing
    later does not depend on the environment. Raises ConfigError for a bad or
    missing profile, RemoteError when the service fails, UnsupportedAlgorithmError
    for a key that cannot sign digests.
    """
    if profile is None and os.environ.get("SIGNER_PROFILE"):
        profile = os.environ["SIGNER_PROFILE"]
    path = Path(profile) if profile is not None else None
    uri = KeyURI(key_name, path)
    parse_uri(str(uri))  # the same rules as for any URI
    prof = load_profile(path)
    with stubs(prof, signing_pb2_grpc.SigningServiceStub) as (stub,):
        info = _public_key(prof, stub, key_name)
    return str(uri), _sslib_key(info)


def _public_key(profile: Profile, stub: Any, key_name: str) -> types_pb2.KeyInfo:
    """The key's answer, once its name is the one asked and its key id is its own."""
    return workflow.public_key(profile, stub, key_name)


def _sslib_key(info: types_pb2.KeyInfo) -> SSlibKey:
    keytype, schemes = sslib_schemes(info.algorithm)
    public = serialization.load_pem_public_key(info.public_key_pem.encode())
    # The service's key id (hex SHA-256 of the SubjectPublicKeyInfo), as DSSE envelopes
    # and bundles name the key: one key, one key id everywhere.
    key = SSlibKey.from_crypto(public, keyid=info.key_id, scheme=schemes[0])
    if key.keytype != keytype:
        raise UnsupportedAlgorithmError(
            f"service key {info.name} is {info.algorithm} but its public key is {key.keytype}"
        )
    return key


def _spki(pem: str) -> bytes:
    return serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class ServiceSigner(Signer):
    """Signs with a key held by the signing service, after m-of-n officer approval.

    Create it with `Signer.from_priv_key_uri("signer:KEY_NAME?profile=...", key)`.
    `sign()` blocks until the officers decide (up to the URI's timeout) and
    raises a `ServiceSignerError` unless it returns a verified signature.
    """

    SCHEME = SCHEME
    poll_seconds = 10.0  # each long poll; progress is reported between polls

    def __init__(self, uri: KeyURI, public_key: SSlibKey, profile: Profile) -> None:
        check_supported(public_key)
        if profile.audit_verifier is None:
            raise ConfigError(
                f"profile {profile.path} has no audit_verifier: signatures from the service "
                "cannot be checked against the audit log; add the string printed by "
                "`signer audit verifier`"
            )
        self.uri = uri
        self.profile = profile
        self._public_key = public_key

    @property
    def public_key(self) -> SSlibKey:
        return self._public_key

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> ServiceSigner:
        """Parse the URI and load the profile; no network call is made here.

        `secrets_handler` is not used: the profile names the client credentials.
        Raises ValueError for a bad URI or public key, ConfigError for a bad
        profile or one without `audit_verifier`.
        """
        uri = parse_uri(priv_key_uri)
        if not isinstance(public_key, SSlibKey):
            raise ValueError(f"{SCHEME}: keys need an SSlibKey, not {type(public_key).__name__}")
        check_supported(public_key)
        return cls(uri, public_key, load_profile(uri.profile))

    def sign(self, payload: bytes) -> Signature:
        hash_name = self.public_key.get_hash_algorithm_name()
        if hash_name not in HASH_SIZES:
            raise SignatureCheckError(f"the service cannot sign {hash_name} digests")
        digest = hashlib.new(hash_name, payload).digest()
        name = self.uri.key_name
        create = signing_pb2.CreateSigningRequestRequest(
            key_name=name,
            digests=[
                types_pb2.Digest(
                    algorithm=HASH_TO_PB[hash_name], value=digest, artifact_name=self.uri.artifact
                )
            ],
            context=CONTEXT,
            idempotency_key=str(uuid.uuid4()),
        )
        try:
            with stubs(self.profile, signing_pb2_grpc.SigningServiceStub) as (stub,):
                info = _public_key(self.profile, stub, name)
                self._check_key(info)
                request = workflow.create(self.profile, stub, create)
                asked = Asked.of(create).for_request(request.id)
                _progress(
                    f"waiting for {request.threshold} approvals on request {request.id} "
                    f"(key {name}, artifact {self.uri.artifact!r}, "
                    f"timeout {_fmt(self.uri.timeout)})"
                )
                try:
                    request = self._wait(stub, asked, request)
                except KeyboardInterrupt:
                    self._cancel(stub, request.id, "interrupted")
                    raise
                return self._check(stub, request, asked, info, payload)
        except ServiceSignerError:  # already says what went wrong
            raise
        except SignerError as e:  # RPC failures (RemoteError); a profile's missing OIDC token
            if isinstance(e, VerificationError):
                raise SignatureCheckError(str(e)) from e
            raise ServiceSignerError(f"signing with service key {name} failed: {e}") from e

    # -- steps ------------------------------------------------------------------------

    def _check_key(self, info: types_pb2.KeyInfo) -> None:
        """Refuse before asking the officers if our public key is not the service key."""
        key = self.public_key
        workflow.checked_key(info, self.uri.key_name)
        try:
            keytype, schemes = sslib_schemes(info.algorithm)
        except UnsupportedAlgorithmError as e:
            raise SignatureCheckError(str(e)) from None
        if key.keytype != keytype or key.scheme not in schemes:
            raise SignatureCheckError(
                f"public key {key.keyid} is {key.keytype}/{key.scheme}, but service key "
                f"{info.name} is {info.algorithm} ({keytype}/{' or '.join(schemes)})"
            )
        try:
            same = _spki(str(key.keyval["public"])) == _spki(info.public_key_pem)
        except (KeyError, ValueError, TypeError):
            same = False
        if not same:
            raise SignatureCheckError(
                f"public key {key.keyid} is not the public key of service key {info.name} "
                f"(key id {info.key_id}); no request was made"
            )

    def _wait(
        self, stub: Any, asked: Asked, request: types_pb2.SigningRequest
    ) -> types_pb2.SigningRequest:
        """Long-poll until terminal; past the timeout, cancel and raise SigningTimeoutError."""
        seen = (request.state, _approvers(request))

        def changed(r: types_pb2.SigningRequest) -> None:
            nonlocal seen
            if (r.state, _approvers(r)) != seen:
                seen = (r.state, _approvers(r))
                _progress(_describe(r))

        last, done = workflow.wait(
            self.profile, stub, asked, self.uri.timeout, changed, self.poll_seconds
        )
        if done and last is not None:
            return last
        return self._give_up(stub, asked)

    def _give_up(self, stub: Any, asked: Asked) -> types_pb2.SigningRequest:
        """Cancel an undecided request; if it was signed meanwhile, take the signature."""
        request_id = asked.request_id
        if self._cancel(stub, request_id, f"not decided within {_fmt(self.uri.timeout)}"):
            raise SigningTimeoutError(request_id, self.uri.timeout)
        latest: types_pb2.SigningRequest = call(
            self.profile,
            stub.GetSigningRequest,
            signing_pb2.GetSigningRequestRequest(id=request_id),
        ).request
        workflow.check_response(latest, asked)
        if latest.state in (types_pb2.REQUEST_STATE_PENDING, types_pb2.REQUEST_STATE_APPROVED):
            raise SigningTimeoutError(request_id, self.uri.timeout, cancelled=False)
        return latest

    def _cancel(self, stub: Any, request_id: str, why: str) -> bool:
        try:
            call(
                self.profile,
                stub.CancelSigningRequest,
                signing_pb2.CancelSigningRequestRequest(
                    id=request_id, reason=f"securesystemslib signer gave up: {why}"
                ),
            )
        except RemoteError as e:
            _progress(f"could not cancel request {request_id}: {e}")
            return False
        _progress(f"request {request_id} cancelled ({why})")
        return True

    def _check(
        self,
        stub: Any,
        request: types_pb2.SigningRequest,
        asked: Asked,
        info: types_pb2.KeyInfo,
        payload: bytes,
    ) -> Signature:
        """Return the signature only if it, and its audit proof, verify."""
        workflow.check_response(request, asked)
        if request.state != types_pb2.REQUEST_STATE_SIGNED:
            state = _STATE_NAMES.get(request.state, "UNKNOWN")
            raise SigningRefusedError(request.id, state, request.status_message)
        if request.key_id != info.key_id:
            raise SignatureCheckError(
                f"request {request.id} was signed by key id {request.key_id}, "
                f"not {info.name}'s {info.key_id}"
            )
        workflow.verify_signed(self.profile, stub, request, asked)
        signature = Signature(keyid=self.public_key.keyid, sig=request.signatures[0].hex())
        try:
            self.public_key.verify_signature(signature, payload)
        except UnverifiedSignatureError as e:
            raise SignatureCheckError(
                f"the signature from request {request.id} does not verify with public key "
                f"{self.public_key.keyid} ({self.public_key.scheme}); not returned"
            ) from e
        _progress(f"request {request.id} signed; signature and audit proof verified")
        return signature


def _approvers(request: types_pb2.SigningRequest) -> tuple[str, ...]:
    return tuple(a.approver for a in request.approvals if a.decision == types_pb2.DECISION_APPROVE)


def _describe(request: types_pb2.SigningRequest) -> str:
    state = _STATE_NAMES.get(request.state, "UNKNOWN")
    who = _approvers(request)
    approvals = f"{len(who)} of {request.threshold} approvals"
    if who:
        approvals += f" ({', '.join(who)})"
    why = f": {request.status_message}" if request.status_message else ""
    return f"request {request.id} is {state}, {approvals}{why}"


def _fmt(d: dt.timedelta) -> str:
    s = int(d.total_seconds())
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _progress(message: str) -> None:
    print(f"signer: {shown(message)}", file=sys.stderr, flush=True)


def register() -> None:
    """Make `Signer.from_priv_key_uri` dispatch `signer:` URIs here (idempotent)."""
    SIGNER_FOR_URI_SCHEME[SCHEME] = ServiceSigner


register()
