"""signer.sslib: python-tuf signs metadata through the service, and verifies it.

The signing thread blocks in `Metadata.sign` while the test plays the officers:
it finds the pending request by its digest (ApprovalService.ListRequests as
alice) and approves or denies it with real approval envelopes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.exceptions import UnsupportedAlgorithmError
from securesystemslib.signer import (  # type: ignore[attr-defined]  # no __all__
    SIGNER_FOR_URI_SCHEME,
    Signer,
    SSlibKey,
)
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets  # type: ignore[attr-defined]

from signer.client.profile import RemoteError
from signer.convert import HASH_TO_PB
from signer.errors import ConfigError
from signer.sslib import (
    SCHEME,
    KeyURI,
    ServiceSigner,
    ServiceSignerError,
    SignatureCheckError,
    SigningRefusedError,
    SigningTimeoutError,
    import_key,
    parse_uri,
    register,
    sslib_schemes,
)
from signer.v1 import approval_pb2, signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients
from testbed.commands import wait_until
from testbed.env import Env

EXPIRES = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)


class Background:
    """Run `fn` in a thread; keep its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as e:
            self.error = e

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the signer is still waiting"


def _pending(clients: Clients, digest: bytes, officer: str = "alice") -> list[Any]:
    """Pending requests `officer` may decide whose one digest is `digest`."""
    found, token = [], ""
    while True:
        resp = clients.approval(officer).ListRequests(
            approval_pb2.ListRequestsRequest(
                state=types_pb2.REQUEST_STATE_PENDING, page_size=50, page_token=token
            ),
            timeout=RPC_TIMEOUT,
        )
        found += [r for r in resp.requests if [d.value for d in r.digests] == [digest]]
        if not resp.next_page_token:
            return found
        token = resp.next_page_token


def _request_for(clients: Clients, digest: bytes) -> Any:
    """Wait for the signer to create its request; return it as the officers see it."""
    wait_until(lambda: bool(_pending(clients, digest)), timeout=60)
    (request,) = _pending(clients, digest)
    return request


def _approve(clients: Clients, request: Any) -> None:
    clients.approve("alice", request)
    clients.approve("bob", request)


def _key(clients: Clients, key_name: str, scheme: str | None = None) -> SSlibKey:
    """A service key's SSlibKey fetched independently of signer.sslib, named by the key id
    DSSE envelopes and bundles use: the hex SHA-256 of its SubjectPublicKeyInfo."""
    pem = (
        clients.signing()
        .GetPublicKey(signing_pb2.GetPublicKeyRequest(key_name=key_name), timeout=RPC_TIMEOUT)
        .key.public_key_pem
    )
    public = serialization.load_pem_public_key(pem.encode())
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return SSlibKey.from_crypto(public, keyid=hashlib.sha256(spki).hexdigest(), scheme=scheme)


@pytest.mark.usefixtures("shared")
def test_import_key_takes_a_profile_as_a_string_or_from_the_environment(
    shared_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A str profile works as a Path does, and without one $SIGNER_PROFILE is used and
    named in the URI, so signing later does not depend on the environment."""
    profile = shared_env.profile_path("ci")
    uri, key = import_key("release", str(profile))
    assert parse_uri(uri).profile == profile
    monkeypatch.setenv("SIGNER_PROFILE", str(profile))
    from_env, same = import_key("release")
    assert parse_uri(from_env).profile == profile and same == key
    monkeypatch.delenv("SIGNER_PROFILE")
    with pytest.raises(ConfigError, match="no profile"):
        import_key("release")


# -- signing TUF metadata ----------------------------------------------------------------


def test_root_signed_through_service_verifies_with_python_tuf(
    shared_env: Env, clients: Clients, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root with the service key as its only key (threshold 1) verifies after 2-of-3."""
    profile = shared_env.profile_path("ci")
    uri, key = import_key("release", profile)
    assert parse_uri(uri) == KeyURI("release", profile)
    assert (key.keytype, key.scheme) == ("ecdsa", "ecdsa-sha2-nistp256")
    assert key == _key(clients, "release", "ecdsa-sha2-nistp256")

    root = Root(expires=EXPIRES)
    root.add_key(key, Root.type)
    assert root.roles[Root.type].threshold == 1
    md = Metadata(root)
    signer = Signer.from_priv_key_uri(uri, key)
    assert isinstance(signer, ServiceSigner)
    assert signer.public_key is key

    job = Background(lambda: md.sign(signer))
    request = _request_for(clients, hashlib.sha256(md.signed_bytes).digest())
    assert request.key_name == "release"
    assert request.requester == "ci"
    assert dict(request.context) == {"signer": "securesystemslib"}
    assert [(d.algorithm, d.artifact_name) for d in request.digests] == [
        (types_pb2.HASH_ALGORITHM_SHA256, "tuf metadata")
    ]
    assert not md.signatures  # still waiting
    _approve(clients, request)
    job.join()
    assert job.error is None, job.error

    assert list(md.signatures) == [key.keyid]
    root.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    again = Metadata[Root].from_bytes(md.to_bytes())
    again.signed.verify_delegate(Root.type, again.signed_bytes, again.signatures)
    result = again.signed.get_verification_result(Root.type, again.signed_bytes, again.signatures)
    assert result.verified and set(result.signed) == {key.keyid}
    assert again.signatures[key.keyid].signature == clients.get(request.id).signatures[0].hex()

    err = capsys.readouterr().err
    assert f"waiting for 2 approvals on request {request.id}" in err
    assert f"request {request.id} is SIGNED, 2 of 2 approvals (alice, bob)" in err


@pytest.mark.parametrize(
    ("key_name", "scheme", "hash_name"),
    [
        ("k-rsa-pss-3072", "rsassa-pss-sha256", "sha256"),
        ("k-rsa-pss-3072", "rsassa-pss-sha512", "sha512"),
        ("k-rsa-pkcs1-3072", "rsa-pkcs1v15-sha256", "sha256"),
        ("k-ecdsa-p384", "ecdsa-sha2-nistp384", "sha384"),
    ],
)
def test_targets_signed_with_other_algorithms(
    shared_env: Env, clients: Clients, key_name: str, scheme: str, hash_name: str
) -> None:
    """Targets signed by an RSA-PSS (salt = hash length), PKCS#1 or P-384 service key."""
    _, imported = import_key(key_name, shared_env.profile_path("ci"))
    keytype, schemes = sslib_schemes(key_name.removeprefix("k-"))
    assert (imported.keytype, imported.scheme) == (keytype, schemes[0])
    assert scheme in schemes
    key = _key(clients, key_name, scheme)
    uri = KeyURI(key_name, shared_env.profile_path("ci"), dt.timedelta(minutes=1), "targets.json")
    root = Root(expires=EXPIRES)
    root.add_key(key, Targets.type)
    md = Metadata(Targets(expires=EXPIRES))
    signer = Signer.from_priv_key_uri(str(uri), key)

    job = Background(lambda: md.sign(signer))
    request = _request_for(clients, hashlib.new(hash_name, md.signed_bytes).digest())
    assert [(d.algorithm, d.artifact_name) for d in request.digests] == [
        (HASH_TO_PB[hash_name], "targets.json")
    ]
    _approve(clients, request)
    job.join()
    assert job.error is None, job.error

    root.verify_delegate(Targets.type, md.signed_bytes, md.signatures)
    again = Metadata[Targets].from_bytes(md.to_bytes())
    root.verify_delegate(Targets.type, again.signed_bytes, again.signatures)


# -- refusals --------------------------------------------------------------------------


def test_denied_request_raises_and_leaves_no_signature(
    shared_env: Env, clients: Clients, capsys: pytest.CaptureFixture[str]
) -> None:
    """A denial fails Metadata.sign with SigningRefusedError (DENIED, the reason); the
    metadata gains no signature."""
    uri, key = import_key("release", shared_env.profile_path("ci"))
    md = Metadata(Root(expires=EXPIRES))
    md.signed.add_key(key, Root.type)
    job = Background(lambda: md.sign(Signer.from_priv_key_uri(uri, key)))
    request = _request_for(clients, hashlib.sha256(md.signed_bytes).digest())
    clients.deny("alice", request, reason="not this root")
    job.join()

    assert isinstance(job.error, UnsignedMetadataError)
    cause = job.error.__cause__
    assert isinstance(cause, SigningRefusedError)
    assert isinstance(cause, RuntimeError)
    assert (cause.request_id, cause.state) == (request.id, "DENIED")
    assert "not this root" in str(cause)
    assert not md.signatures
    assert f"request {request.id} is DENIED" in capsys.readouterr().err


def test_undecided_request_times_out_and_is_cancelled(shared_env: Env, clients: Clients) -> None:
    """Undecided by the URI's timeout, the request is cancelled: SigningTimeoutError."""
    _, key = import_key("release", shared_env.profile_path("ci"))
    uri = KeyURI("release", shared_env.profile_path("ci"), dt.timedelta(seconds=1))
    signer = Signer.from_priv_key_uri(str(uri), key)
    with pytest.raises(SigningTimeoutError, match="not decided within 1s") as info:
        signer.sign(b"nobody approves this")
    assert clients.get(info.value.request_id).state == types_pb2.REQUEST_STATE_CANCELLED


def test_public_key_of_another_service_key_is_refused_before_asking(
    shared_env: Env, clients: Clients
) -> None:
    """A wrong public key fails sign() without bothering the officers."""
    other = _key(clients, "k-ecdsa-p256", "ecdsa-sha2-nistp256")  # same scheme, other key
    signer = ServiceSigner.from_priv_key_uri(
        f"signer:release?profile={shared_env.profile_path('ci')}", other
    )
    payload = b"signed by the wrong key?"
    with pytest.raises(SignatureCheckError, match="is not the public key of service key release"):
        signer.sign(payload)
    assert not _pending(clients, hashlib.sha256(payload).digest())

    pkcs1 = _key(clients, "k-rsa-pss-3072", "rsa-pkcs1v15-sha256")  # right key, wrong scheme
    signer = ServiceSigner.from_priv_key_uri(
        f"signer:k-rsa-pss-3072?profile={shared_env.profile_path('ci')}", pkcs1
    )
    with pytest.raises(SignatureCheckError, match="but service key k-rsa-pss-3072 is rsa-pss"):
        signer.sign(payload)


def test_service_failures_raise_service_signer_error(shared_env: Env) -> None:
    """An unknown service key: ServiceSignerError from sign(), RemoteError on import."""
    signer = ServiceSigner.from_priv_key_uri(
        f"signer:no-such-key?profile={shared_env.profile_path('ci')}", _local_key()
    )
    with pytest.raises(ServiceSignerError, match="UNKNOWN_KEY") as info:
        signer.sign(b"payload")
    assert isinstance(info.value.__cause__, RemoteError)
    with pytest.raises(RemoteError, match="UNKNOWN_KEY"):
        import_key("no-such-key", shared_env.profile_path("ci"))


def test_signature_that_does_not_verify_is_not_returned(
    shared_env: Env, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even past the up-front check, a signature is verified before it is returned."""
    monkeypatch.setattr(ServiceSigner, "_check_key", lambda self, info: None)
    other = _key(clients, "k-ecdsa-p256", "ecdsa-sha2-nistp256")
    signer = ServiceSigner.from_priv_key_uri(
        f"signer:release?profile={shared_env.profile_path('ci')}", other
    )
    payload = b"verified before it is returned"
    job = Background(lambda: signer.sign(payload))
    _approve(clients, _request_for(clients, hashlib.sha256(payload).digest()))
    job.join()
    assert job.result is None
    assert isinstance(job.error, SignatureCheckError)
    assert "does not verify with public key" in str(job.error)


# -- URIs, keys and profiles (no server) -------------------------------------------------


def _local_key() -> SSlibKey:
    return SSlibKey.from_crypto(ec.generate_private_key(ec.SECP256R1()).public_key())


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("gcpkms:projects/p/keys/k", "is not a signer: key URI"),
        ("signer", "is not a signer: key URI"),
        ("signer:", "names no key"),
        ("signer:?profile=ci.toml", "names no key"),
        ("signer://release", "without //"),
        ("signer:release?colour=blue", "unknown parameter 'colour'"),
        ("signer:release?profile=a.toml&profile=b.toml", "given twice"),
        ("signer:release?profile", "needs a value"),
        ("signer:release?profile=", "is empty"),
        ("signer:release?", "empty query parameter"),
        ("signer:release?timeout=soon", "timeout"),
        ("signer:release?timeout=0s", "timeout must be positive"),
        ("signer:release?artifact=a%0Ab", "artifact must be"),
        ("signer:rel%zzease", "bad percent-escape"),
        ("signer:rel%FFease", "not UTF-8"),
        ("signer:re/lease", "key name"),
        ("signer:release#frag", "no #fragment"),
    ],
)
def test_bad_uris_raise_value_error(uri: str, message: str) -> None:
    """Each malformed signer: key URI is a ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        ServiceSigner.from_priv_key_uri(uri, _local_key())


def test_dispatch_and_uri_round_trip(shared_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """register() (twice) maps signer: URIs to ServiceSigner; a URI parses and prints
    back; one naming no profile uses SIGNER_PROFILE."""
    register()
    register()
    assert SIGNER_FOR_URI_SCHEME[SCHEME] is ServiceSigner
    with pytest.raises(ValueError, match="Unsupported private key scheme"):
        Signer.from_priv_key_uri("signr:release", _local_key())

    uri = parse_uri("signer:rel.ease-1?artifact=root%20v2%26more&timeout=1h30m&profile=%2Fa%20b")
    assert uri == KeyURI("rel.ease-1", Path("/a b"), dt.timedelta(minutes=90), "root v2&more")
    assert parse_uri(str(uri)) == uri
    assert str(KeyURI("release")) == "signer:release"

    monkeypatch.setenv("SIGNER_PROFILE", str(shared_env.profile_path("ci")))
    signer = Signer.from_priv_key_uri("signer:release", _local_key())
    assert isinstance(signer, ServiceSigner)
    assert signer.profile.path == shared_env.profile_path("ci").resolve()
    assert signer.uri == KeyURI("release")


def test_unsupported_keys_and_profiles_are_refused(shared_env: Env, tmp_path: Path) -> None:
    """An Ed25519 key, a profile with no audit_verifier, a missing profile: refused."""
    ed = SSlibKey.from_crypto(
        serialization.load_pem_public_key(
            b"-----BEGIN PUBLIC KEY-----\n"
            b"MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
            b"-----END PUBLIC KEY-----\n"
        )
    )
    with pytest.raises(ValueError, match="ed25519/ed25519"):
        ServiceSigner.from_priv_key_uri("signer:release", ed)
    with pytest.raises(UnsupportedAlgorithmError, match="ed25519"):
        sslib_schemes("ed25519")

    raw = tomllib.loads(shared_env.profile_path("ci").read_text())
    del raw["audit_verifier"]
    for k in ("ca", "cert", "key"):
        raw[k] = str((shared_env.profile_path("ci").parent / raw[k]).resolve())
    blind = tmp_path / "no-verifier.toml"
    blind.write_text(tomli_w.dumps(raw))
    with pytest.raises(ConfigError, match="no audit_verifier"):
        ServiceSigner.from_priv_key_uri(f"signer:release?profile={blind}", _local_key())
    with pytest.raises(ConfigError, match="not found"):
        ServiceSigner.from_priv_key_uri(
            f"signer:release?profile={tmp_path / 'missing.toml'}", _local_key()
        )
