"""`signer sign`, `signer status` and `signer public-key` against a hostile server.

A proxy (tests/hostile.py) with the real server's certificate sits between the
requester and the real server and alters its answers: the commands refuse every
answer that is not for what they asked, verify signatures over their own
digests before writing anything, and retry only gRPC's own "no room" refusal.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from signer.v1 import signing_pb2, types_pb2
from testbed.clients import Clients, sha256_digest
from testbed.commands import SIGNER, run
from testbed.env import Env
from tests.harness import sign_args
from tests.hostile import (
    CLIENT_SIDE,
    Abort,
    HostileServer,
    hostile,
    on_answer,
    on_signed,
    other_digest,
    pending_with,
    unchanged,
)

pytestmark = CLIENT_SIDE


def _sign_via(
    proxy: HostileServer, clients: Clients, tmp_path: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`signer sign --file F` through the proxy while alice and bob approve directly."""
    artifact = tmp_path / f"app-{uuid.uuid4().hex[:8]}.tar.gz"
    artifact.write_bytes(os.urandom(64))
    cmd = [*SIGNER, *sign_args(proxy.profile("ci"), artifact, "--timeout", "60s", *extra)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        request = pending_with(clients, artifact.name)
        clients.approve("alice", request)
        clients.approve("bob", request)
        out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), artifact


def _flip_signature(r: types_pb2.SigningRequest) -> None:
    sig = bytearray(r.signatures[0])
    sig[-1] ^= 1
    r.signatures[0] = bytes(sig)


def _extra_digest(r: types_pb2.SigningRequest) -> None:
    r.digests.append(sha256_digest(b"x", "smuggled.bin"))
    r.signatures.append(r.signatures[0])


ALTERED_SIGNED = [
    ("request id", lambda r: setattr(r, "id", str(uuid.uuid4())), "request id"),
    ("key name", lambda r: setattr(r, "key_name", "k-ecdsa-p384"), "key"),
    ("digest", other_digest, "digests"),
    ("artifact name", lambda r: setattr(r.digests[0], "artifact_name", "other.tgz"), "digests"),
    ("extra digest", _extra_digest, "digests"),
    ("signature", _flip_signature, "does not verify"),
    ("audit proof", lambda r: r.ClearField("audit_proof"), "no audit proof"),
    ("key id", lambda r: setattr(r, "key_id", "ab" * 32), "key id"),
]


@pytest.mark.parametrize(
    ("change", "phrase"),
    [(c, p) for _, c, p in ALTERED_SIGNED],
    ids=[name for name, _, _ in ALTERED_SIGNED],
)
def test_sign_refuses_an_altered_signed_answer_and_writes_nothing(
    shared_env: Env,
    clients: Clients,
    tmp_path: Path,
    change: Callable[[types_pb2.SigningRequest], None],
    phrase: str,
) -> None:
    """`signer sign --file` refuses a SIGNED answer altered in any bound field; no file."""
    with hostile(shared_env, "ci", on_signed(change)) as proxy:
        p, artifact = _sign_via(proxy, clients, tmp_path)
    assert p.returncode == 1, p.stderr
    assert phrase in p.stderr
    assert not artifact.with_name(artifact.name + ".sig").exists()
    assert not artifact.with_name(artifact.name + ".sig.audit.json").exists()


def test_sign_refuses_a_created_request_for_other_digests(shared_env: Env, tmp_path: Path) -> None:
    """The server's answer to Create must be for the digests asked: else nothing waits."""

    artifact = tmp_path / "app.tar.gz"
    artifact.write_bytes(b"release")
    with hostile(shared_env, "ci", on_answer("CreateSigningRequest", other_digest)) as proxy:
        p = run([*SIGNER, *sign_args(proxy.profile("ci"), artifact)], check=False)
        assert proxy.calls["WaitSigningRequest"] == 0
    assert p.returncode == 1
    assert "not what was asked: digests differ" in p.stderr


def test_sign_retries_an_overloaded_server_and_makes_one_request(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """gRPC's own "no room" refusal of a create (answer lost after the request was made)
    is retried with the same idempotency key: the signature comes, from one request."""
    refused: list[str] = []

    def tamper(method: str, answer: Any) -> Any:
        if method == "CreateSigningRequest" and not refused:
            refused.append(answer.request.id)
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
        return answer

    with hostile(shared_env, "ci", tamper) as proxy:
        p, artifact = _sign_via(proxy, clients, tmp_path)
        creates = proxy.calls["CreateSigningRequest"]
    assert p.returncode == 0, p.stderr
    assert creates == 2 and refused
    assert artifact.with_name(artifact.name + ".sig").exists()
    assert clients.get(refused[0]).state == types_pb2.REQUEST_STATE_SIGNED


def test_other_resource_exhausted_errors_are_not_retried(shared_env: Env, tmp_path: Path) -> None:
    """A cap of the caller's own (a reason is given) is said at once, not retried."""

    def tamper(method: str, answer: Any) -> Any:
        raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many pending requests")

    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"a")
    with hostile(shared_env, "ci3", tamper) as proxy:
        p = run(
            [*SIGNER, *sign_args(proxy.profile("ci3"), artifact, "--hash", "sha256")], check=False
        )
        creates = proxy.calls["CreateSigningRequest"]
    assert p.returncode == 1 and "too many pending requests" in p.stderr
    assert creates == 1


def test_a_public_key_that_is_not_the_key_id_is_refused(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """A server that hands out another PEM under the key's id is caught; nothing written."""
    other = clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name="k-ecdsa-p384"), timeout=20
    )

    def tamper(method: str, answer: Any) -> Any:
        if method == "GetPublicKey":
            answer.key.public_key_pem = other.key.public_key_pem
        return answer

    with hostile(shared_env, "ci", tamper) as proxy:
        early = tmp_path / "early.bin"
        early.write_bytes(b"early")
        # Without --hash the key is asked for first (its own hash): refused, nothing asked.
        first = run([*SIGNER, *sign_args(proxy.profile("ci"), early)], check=False)
        assert first.returncode == 1 and "not that of its public key" in first.stderr
        assert proxy.calls["CreateSigningRequest"] == 0
        p, artifact = _sign_via(proxy, clients, tmp_path, "--hash", "sha256")
        out = tmp_path / "release.pem"
        pk = run(
            [
                *SIGNER,
                "public-key",
                "--profile",
                str(proxy.profile("ci")),
                "--key-name",
                "release",
                "--out",
                str(out),
            ],
            check=False,
        )
    assert p.returncode == 1 and "key id" in p.stderr
    assert not artifact.with_name(artifact.name + ".sig").exists()
    assert pk.returncode == 1 and "key id is not that of its public key" in pk.stderr
    assert not out.exists()


def test_status_checks_the_files_and_the_request_id(
    shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """`signer status ID --file F` refuses another request or digests that are not F's."""
    artifact = tmp_path / "lib.jar"
    artifact.write_bytes(b"jar")
    request = clients.create(digests=[sha256_digest(b"jar", "lib.jar")])
    clients.approve("alice", request)
    clients.approve("bob", request)

    def status(proxy: HostileServer, *extra: str) -> subprocess.CompletedProcess[str]:
        return run(
            [*SIGNER, "status", request.id, "--profile", str(proxy.profile("ci")), *extra],
            check=False,
        )

    with hostile(shared_env, "ci", unchanged) as proxy:
        ok = status(proxy, "--file", str(artifact))
    assert ok.returncode == 0, ok.stderr
    assert artifact.with_name("lib.jar.sig").exists()
    artifact.with_name("lib.jar.sig").unlink()

    with hostile(shared_env, "ci", on_signed(other_digest)) as proxy:
        wrong = status(proxy, "--file", str(artifact))
        bare = status(proxy, "--out", str(tmp_path / "x.sig"))
    assert wrong.returncode == 1 and "is not the request's digest" in wrong.stderr
    assert bare.returncode == 1 and "does not verify" in bare.stderr
    assert not artifact.with_name("lib.jar.sig").exists() and not (tmp_path / "x.sig").exists()

    with hostile(
        shared_env, "ci", on_signed(lambda r: setattr(r, "id", str(uuid.uuid4())))
    ) as proxy:
        other = status(proxy, "--out", str(tmp_path / "x.sig"))
    assert other.returncode == 1 and "request id" in other.stderr
    assert not (tmp_path / "x.sig").exists()


def _reverse(answer: signing_pb2.GetPolicyChainResponse) -> None:
    versions = list(answer.versions)
    del answer.versions[:]
    answer.versions.extend(reversed(versions))


ALTERED_CHAINS = [
    ("none", lambda a: a.ClearField("versions"), "is not"),
    ("the last dropped", lambda a: a.versions.pop(), "is not"),
    ("reordered", _reverse, "policy chain is not valid"),
    ("an entry not JSON", lambda a: setattr(a.versions[0], "entry", b"{"), "not valid"),
    ("another index", lambda a: setattr(a.versions[0], "index", 10**6), "not valid"),
]


@pytest.mark.parametrize(
    ("change", "phrase"),
    [(c, p) for _, c, p in ALTERED_CHAINS],
    ids=[name for name, _, _ in ALTERED_CHAINS],
)
def test_sign_refuses_a_policy_chain_that_does_not_reach_the_signed_version(
    shared_env: Env,
    clients: Clients,
    tmp_path: Path,
    change: Callable[[signing_pb2.GetPolicyChainResponse], None],
    phrase: str,
) -> None:
    """The policy chain a bundle will carry must be a valid chain whose last version
    before the signature is the one its log entry names: else nothing is written."""

    def tamper(method: str, answer: Any) -> Any:
        if method == "GetPolicyChain":
            change(answer)
        return answer

    assert len(shared_env.policy_chain()) >= 2  # so that dropping the last leaves one
    with hostile(shared_env, "ci", tamper) as proxy:
        p, artifact = _sign_via(proxy, clients, tmp_path)
    assert p.returncode == 1, p.stderr
    assert phrase in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not artifact.with_name(artifact.name + ".sig").exists()
    assert not artifact.with_name(artifact.name + ".sig.bundle.json").exists()
