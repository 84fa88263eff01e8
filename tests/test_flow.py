"""The whole story over real mTLS gRPC: create, m-of-n approve, sign, verify with openssl."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from signer.v1 import signing_pb2, types_pb2
from testbed.clients import RPC_TIMEOUT, Clients
from testbed.commands import wait_until
from testbed.process import Running
from tests.harness import DIGEST_ALGORITHMS, audit_events, rpc_error

SIGNED = types_pb2.REQUEST_STATE_SIGNED
PENDING = types_pb2.REQUEST_STATE_PENDING
_HASH = {
    "sha256": (types_pb2.HASH_ALGORITHM_SHA256, hashes.SHA256),
    "sha384": (types_pb2.HASH_ALGORITHM_SHA384, hashes.SHA384),
    "sha512": (types_pb2.HASH_ALGORITHM_SHA512, hashes.SHA512),
}


def _public_pem(clients: Clients, key: str) -> bytes:
    resp = clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name=key), timeout=RPC_TIMEOUT
    )
    return resp.key.public_key_pem.encode()


@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize("alg", DIGEST_ALGORITHMS)
def test_every_algorithm_verifies_with_openssl_and_cryptography(
    clients: Clients, tmp_path: Path, alg: str, hash_name: str
) -> None:
    """A quorum-approved signature over an artifact verifies with openssl and cryptography."""
    artifact = tmp_path / "app.tar"
    artifact.write_bytes(b"release " + alg.encode() + hash_name.encode())
    pb_hash, hash_cls = _HASH[hash_name]
    digest = hashlib.new(hash_name, artifact.read_bytes()).digest()
    r = clients.create(
        key=f"k-{alg}",
        digests=[types_pb2.Digest(algorithm=pb_hash, value=digest, artifact_name="app.tar")],
    )
    assert r.state == PENDING and r.threshold == 2
    assert clients.approve("alice", r).state == PENDING
    signed = clients.approve("bob", r)
    assert signed.state == SIGNED
    sig = signed.signatures[0]
    pem = _public_pem(clients, f"k-{alg}")
    (tmp_path / "pub.pem").write_bytes(pem)
    (tmp_path / "app.sig").write_bytes(sig)
    cmd = [
        "openssl",
        "dgst",
        f"-{hash_name}",
        "-verify",
        str(tmp_path / "pub.pem"),
        "-signature",
        str(tmp_path / "app.sig"),
    ]
    if "pss" in alg:
        cmd += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
    out = subprocess.run([*cmd, str(artifact)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "Verified OK" in out.stdout, out.stdout + out.stderr

    pub = serialization.load_pem_public_key(pem)
    pre = utils.Prehashed(hash_cls())
    if alg.startswith("ecdsa"):
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        pub.verify(sig, digest, ec.ECDSA(pre))
    elif "pss" in alg:
        pub.verify(sig, digest, padding.PSS(padding.MGF1(hash_cls()), hash_cls.digest_size), pre)  # type: ignore[union-attr, call-arg, arg-type]
    else:
        pub.verify(sig, digest, padding.PKCS1v15(), pre)  # type: ignore[union-attr, call-arg, arg-type]
    # Tampering with the artifact makes openssl refuse it.
    artifact.write_bytes(b"tampered")
    bad = subprocess.run([*cmd, str(artifact)], capture_output=True, check=False)
    assert bad.returncode != 0


def test_several_digests_signed_in_order(clients: Clients) -> None:
    """One request with several digests gets one signature per digest, same order."""
    digests = [
        types_pb2.Digest(
            algorithm=types_pb2.HASH_ALGORITHM_SHA256,
            value=hashlib.sha256(bytes([i])).digest(),
            artifact_name=f"file{i}",
        )
        for i in range(5)
    ]
    r = clients.create(digests=digests)
    clients.approve("alice", r)
    signed = clients.approve("carol", r)
    assert signed.state == SIGNED and len(signed.signatures) == 5
    pub = serialization.load_pem_public_key(_public_pem(clients, "release"))
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    for d, s in zip(digests, signed.signatures, strict=True):
        pub.verify(s, d.value, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_wait_returns_when_signed(shared: Running) -> None:
    """WaitSigningRequest returns done once the quorum is reached by other calls."""
    import threading

    clients = shared.clients
    r = clients.create()
    result: list[signing_pb2.WaitSigningRequestResponse] = []
    # The server's whole max_wait (60 s), past the join below: only a wait that heard
    # the decision returns in time.
    t = threading.Thread(
        target=lambda: result.append(
            clients.signing().WaitSigningRequest(
                signing_pb2.WaitSigningRequestRequest(id=r.id), timeout=120
            )
        ),
        daemon=True,
    )
    t.start()
    wait_until(lambda: shared.server.logged("waiting for a decision", request_id=r.id))
    clients.approve("alice", r)
    clients.approve("bob", r)
    t.join(timeout=30)
    assert result and result[0].done and result[0].request.state == SIGNED


def test_wait_is_bounded(clients: Clients) -> None:
    """A wait on a pending request returns, not done, by its timeout."""
    from google.protobuf import duration_pb2

    r = clients.create()
    resp = clients.signing().WaitSigningRequest(
        signing_pb2.WaitSigningRequestRequest(id=r.id, timeout=duration_pb2.Duration(seconds=1)),
        timeout=RPC_TIMEOUT,
    )
    assert not resp.done and resp.request.state == PENDING


def test_audit_records_the_story(shared: Running) -> None:
    """Created, approved, quorum and signed are each in the audit log for the request."""
    c = shared.clients
    r = c.create()
    c.approve("alice", r)
    c.approve("bob", r)
    events = [e for e in audit_events(shared.env) if e["request_id"] == r.id]
    assert [e["event"] for e in events] == [
        "request.created",
        "request.approved",
        "request.approved",
        "request.quorum",
        "request.signed",
    ]
    approved = [e for e in events if e["event"] == "request.approved"]
    assert {e["actor"] for e in approved} == {"alice", "bob"}
    assert all(e["details"]["envelope"] for e in approved)  # stored verbatim
    signed = events[-1]["details"]
    assert signed["approvers"] == ["alice", "bob"]
    assert len(signed["signature_sha256"]) == 1


def test_health_and_reflection(clients: Clients) -> None:
    """Health checking reports SERVING to any role; reflection lists the signer services
    to an admin, and to no one else."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ch = clients.channel("ci")
    h = health_pb2_grpc.HealthStub(ch).Check(
        health_pb2.HealthCheckRequest(service="signer.v1.SigningService"), timeout=RPC_TIMEOUT
    )
    assert h.status == health_pb2.HealthCheckResponse.SERVING
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    refused = rpc_error(
        lambda: list(
            reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([ask]), timeout=RPC_TIMEOUT
            )
        )
    )
    assert refused.reason == "ROLE_NOT_ALLOWED"
    stub = reflection_pb2_grpc.ServerReflectionStub(clients.channel("admin"))
    responses = stub.ServerReflectionInfo(iter([ask]), timeout=RPC_TIMEOUT)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "signer.v1.SigningService",
        "signer.v1.ApprovalService",
        "signer.v1.AuditService",
    } <= names


def test_cancel_by_requester(clients: Clients) -> None:
    """The requester cancels a pending request; it is CANCELLED and cannot be approved."""
    r = clients.create()
    resp = clients.signing().CancelSigningRequest(
        signing_pb2.CancelSigningRequestRequest(id=r.id, reason="wrong build"), timeout=RPC_TIMEOUT
    )
    assert resp.request.state == types_pb2.REQUEST_STATE_CANCELLED
    with pytest.raises(grpc.RpcError) as e:
        clients.approve("alice", r)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_watch_streams_new_and_changed_requests(clients: Clients) -> None:
    """An officer's WatchRequests stream sees pending requests, then a new one and its changes."""
    import queue
    import threading

    from signer.v1 import approval_pb2

    seen: queue.Queue[types_pb2.SigningRequest] = queue.Queue()
    stream = clients.approval("alice").WatchRequests(
        approval_pb2.WatchRequestsRequest(), timeout=60
    )

    def consume() -> None:
        try:
            for item in stream:
                seen.put(item.request)
        except grpc.RpcError:
            pass  # cancelled at the end of the test or deadline reached

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    r = clients.create()

    def next_state(request_id: str, state: int) -> None:
        while True:
            item = seen.get(timeout=RPC_TIMEOUT)
            if item.id == request_id and item.state == state:
                return

    next_state(r.id, PENDING)
    clients.approve("bob", r)
    clients.approve("carol", r)
    next_state(r.id, SIGNED)
    stream.cancel()
    t.join(timeout=30)


def test_list_keys_shows_every_configured_key(clients: Clients) -> None:
    """ListKeys returns each signing key with algorithm, key id and PEM (not the audit key)."""
    keys = clients.signing().ListKeys(signing_pb2.ListKeysRequest(), timeout=RPC_TIMEOUT).keys
    by_name = {k.name: k for k in keys}
    assert by_name["release"].algorithm == "ecdsa-p256"
    assert "audit" not in by_name
    for alg in DIGEST_ALGORITHMS:
        k = by_name[f"k-{alg}"]
        assert k.algorithm == alg
        der = serialization.load_pem_public_key(k.public_key_pem.encode()).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert hashlib.sha256(der).hexdigest() == k.key_id
