"""`--format ssh`: SSHSIG signatures that `ssh-keygen -Y verify` accepts, for P-256,
P-384 and RSA PKCS#1 keys; a typed request whose signed digests the server derives
from the namespace and the files' own SHA-512, shown so to officers and bound by
their approvals; bad namespaces, unsuitable keys and digests that are not derived
from the payload are refused with a clear error."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from signer.cli.main import main
from signer.convert import digest_pb
from signer.dsse import Statement
from signer.errors import InvalidArgumentError, VerificationError
from signer.formats.base import Evidence, PayloadKey
from signer.formats.ssh import (
    PAYLOAD_TYPE,
    SshFormat,
    SshRequest,
    armor,
    public_key_line,
    signed_data,
)
from signer.model import Digest
from signer.v1 import approval_pb2, types_pb2
from testbed.approving import dropin_env
from testbed.commands import APPROVER, SIGNER, run, wait_until
from testbed.process import Running

KEYS = ("k-ecdsa-p256", "k-ecdsa-p384", "k-rsa-pkcs1-3072")


def _ci(shared: Running) -> list[str]:
    return ["--profile", str(shared.env.profile_path("ci"))]


def _sign(shared: Running, tmp_path: Path, key: str, namespace: str = "file") -> Path:
    """A file signed with --format ssh through the real server, approved by two officers."""
    cli = CliRunner()
    artifact = tmp_path / f"{key}.tar"
    artifact.write_bytes(b"a release signed for ssh-keygen users " * 50)
    sign = ["sign", "--key-name", key, "--file", str(artifact), "--hash", "sha512", "--no-wait"]
    made = cli.invoke(main, [*sign, "--format", "ssh", "--namespace", namespace, *_ci(shared)])
    assert made.exit_code == 0, made.output
    request = shared.clients.get(made.stdout.strip())
    assert request.payload_type == PAYLOAD_TYPE
    shared.clients.approve("alice", request)
    shared.clients.approve("bob", request)
    status = ["status", request.id, "--format", "ssh", "--file", str(artifact)]
    fetched = cli.invoke(main, [*status, *_ci(shared)])
    assert fetched.exit_code == 0, fetched.output
    assert "SSH signature (" + namespace + ")" in fetched.stderr
    return artifact


def _allowed_signers(shared: Running, tmp_path: Path, key: str) -> Path:
    pem = tmp_path / f"{key}.pem"
    got = CliRunner().invoke(
        main, ["public-key", "--key-name", key, "--out", str(pem), *_ci(shared)]
    )
    assert got.exit_code == 0, got.output
    allowed = tmp_path / f"{key}.allowed"
    allowed.write_text(f"release@example.org {public_key_line(pem.read_text())}\n")
    return allowed


@pytest.mark.parametrize("key", KEYS)
def test_ssh_signatures_verify_with_ssh_keygen(shared: Running, tmp_path: Path, key: str) -> None:
    """ssh-keygen -Y verify accepts the signature under its namespace; a changed file, or
    another namespace, fails."""
    artifact = _sign(shared, tmp_path, key)
    allowed = _allowed_signers(shared, tmp_path, key)
    sig = artifact.with_name(artifact.name + ".sig")
    assert sig.read_text().startswith("-----BEGIN SSH SIGNATURE-----\n")
    verify = ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "release@example.org"]
    good = run([*verify, "-n", "file", "-s", str(sig)], input=artifact.read_text())
    assert 'Good "file" signature for release@example.org' in good.stdout
    tampered = run(
        [*verify, "-n", "file", "-s", str(sig)], input=artifact.read_text() + "!", check=False
    )
    assert tampered.returncode != 0
    wrong_ns = run([*verify, "-n", "git", "-s", str(sig)], input=artifact.read_text(), check=False)
    assert wrong_ns.returncode != 0
    pem = tmp_path / f"{key}.pem"
    check = [*SIGNER, "verify", "--format", "ssh", "--public-key", str(pem), "--signature"]
    ok = run([*check, str(sig), "--file", str(artifact), "--namespace", "file"])
    assert "SSH signature OK" in ok.stdout
    changed_file = tmp_path / "changed-file"
    changed_file.write_bytes(artifact.read_bytes() + b"!")
    refused = run(
        [*check, str(sig), "--file", str(changed_file), "--namespace", "file"], check=False
    )
    assert refused.returncode == 1 and "SSH signature INVALID" in refused.stderr
    other_ns = run([*check, str(sig), "--file", str(artifact), "--namespace", "git"], check=False)
    assert other_ns.returncode == 1 and "not 'git': INVALID" in other_ns.stderr
    fmt = SshFormat()
    assert "OK" in fmt.verify(Evidence(sig, file=artifact, public_key=pem)).text
    changed = tmp_path / "changed"
    changed.write_text(artifact.read_text() + "!")
    with pytest.raises(VerificationError, match="INVALID"):
        fmt.verify(Evidence(sig, file=changed, public_key=pem))


def test_officers_see_the_files_digest_and_approvals_bind_the_payload(
    shared: Running, tmp_path: Path
) -> None:
    """`approver show --json` lists the namespace and the file's own SHA-512, with the check
    that the digest to sign is derived from them; the approval statement names the payload;
    an approval naming another payload is refused."""
    cli = CliRunner()
    artifact = tmp_path / "app.tar"
    artifact.write_bytes(b"shown to officers")
    sign = ["sign", "--key-name", "release", "--file", str(artifact), "--hash", "sha512"]
    made = cli.invoke(
        main, [*sign, "--format", "ssh", "--namespace", "git", "--no-wait", *_ci(shared)]
    )
    assert made.exit_code == 0, made.output
    request = shared.clients.get(made.stdout.strip())
    described = SshFormat().describe(
        request.payload_type,
        request.payload,
        [Digest("sha256", d.value, d.artifact_name) for d in request.digests],
        request.algorithm,
    )
    assert described["ssh"]["namespace"] == "git"
    assert described["ssh"]["artifacts"] == [
        {"name": "app.tar", "digest": hashlib.sha512(b"shown to officers").hexdigest()}
    ]
    assert described["payload_matches_digest"] is True
    assert SshFormat().problems(described) == []
    env = shared.clients.envelope("alice", request)
    statement = json.loads(base64.b64decode(json.loads(env)["payload"]))
    assert statement["payload"] == {
        "type": PAYLOAD_TYPE,
        "sha256": hashlib.sha256(request.payload).hexdigest(),
    }
    other = Statement.binding((), PAYLOAD_TYPE, b"another payload")["payload"]
    with pytest.raises(grpc.RpcError) as e:
        shared.clients.approve("alice", request, payload=other)
    assert "payload" in (e.value.details() or "")
    shared.clients.approve("alice", request)


def test_server_refuses_digests_not_derived_from_the_payload(shared: Running) -> None:
    """A requester that sends an SSH payload with digests of its own choosing (say, of
    another file) is refused: the server derives the signed data itself."""
    request = SshRequest("git", "sha512", [Digest("sha512", hashlib.sha512(b"a").digest(), "a")])
    honest = request.signed_digests("ecdsa-p256")
    forged = Digest("sha256", hashlib.sha256(b"something else").digest(), "a")
    for digests, reason in (
        ([forged], "not the SSHSIG signed data"),
        ([*honest, forged], "not the SSHSIG signed data"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            shared.clients.create(
                digests=[digest_pb(d) for d in digests],
                payload_type=PAYLOAD_TYPE,
                payload=request.to_bytes(),
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in (e.value.details() or "")
    made = shared.clients.create(
        digests=[digest_pb(d) for d in honest],
        payload_type=PAYLOAD_TYPE,
        payload=request.to_bytes(),
    )
    assert made.payload == request.to_bytes()


def test_server_refuses_a_key_that_cannot_make_ssh_signatures(shared: Running) -> None:
    """An RSA-PSS key cannot make SSH signatures: the error names the key types to use."""
    request = SshRequest("git", "sha512", [Digest("sha512", hashlib.sha512(b"a").digest(), "a")])
    with pytest.raises(grpc.RpcError) as e:
        shared.clients.create(
            key="k-rsa-pss-3072",
            digests=[digest_pb(d) for d in request.signed_digests("ecdsa-p256")],
            payload_type=PAYLOAD_TYPE,
            payload=request.to_bytes(),
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "need an ecdsa-p256, ecdsa-p384, rsa-pkcs1-3072 or rsa-pkcs1-4096 key" in (
        e.value.details() or ""
    )


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not json", "not an SSH signature request"),
        (b'{"artifacts":[],"hash_algorithm":"sha512","namespace":"git"}', "non-empty list"),
        (
            b'{"artifacts":[{"digest":"00","name":"a"}],"hash_algorithm":"md5","namespace":"git"}',
            "hash_algorithm must be sha512 or sha256",
        ),
        (
            SshRequest("git", "sha512", [Digest("sha512", bytes(64), "a")]).to_bytes() + b" ",
            "canonical",
        ),
        (
            SshRequest("bad ns", "sha512", [Digest("sha512", bytes(64), "a")]).to_bytes(),
            "namespace",
        ),
    ],
)
def test_malformed_ssh_payloads_are_refused(payload: bytes, message: str) -> None:
    """The server's check refuses a payload that is not a strict canonical SSH request."""
    with pytest.raises(InvalidArgumentError, match=message):
        SshFormat().check_payload(payload, [], 100, PayloadKey("ecdsa-p256"))


@pytest.mark.parametrize("namespace", ["has space", "-lead", "x" * 65, "ns\n", "é"])
def test_a_bad_namespace_is_refused_before_anything_is_sent(
    shared: Running, tmp_path: Path, namespace: str
) -> None:
    """A namespace OpenSSH would not take is refused in one line; no request is made."""
    artifact = tmp_path / "a"
    artifact.write_bytes(b"x")
    sign = ["sign", "--key-name", "release", "--file", str(artifact), "--hash", "sha512"]
    r = CliRunner().invoke(
        main, [*sign, "--format", "ssh", "--namespace", namespace, "--no-wait", *_ci(shared)]
    )
    assert r.exit_code != 0
    assert "SSH signature namespace" in r.stderr
    assert r.stdout == ""


def test_an_unsuitable_key_is_refused_before_a_request_is_made(
    shared: Running, tmp_path: Path
) -> None:
    """An RSA-PSS key is refused by the client, naming the key types to use."""
    artifact = tmp_path / "a"
    artifact.write_bytes(b"x")
    sign = ["sign", "--key-name", "k-rsa-pss-3072", "--file", str(artifact), "--hash", "sha512"]
    r = CliRunner().invoke(
        main, [*sign, "--format", "ssh", "--namespace", "git", "--no-wait", *_ci(shared)]
    )
    assert r.exit_code != 0
    assert "is rsa-pss-3072: SSH signatures need" in r.stderr
    assert r.stdout == ""


# -- the drop-in git runs as gpg.ssh.program ----------------------------------------------

DROPIN = str(Path(sys.executable).with_name("signer-ssh-keygen"))


def _pending_dropin_requests(shared: Running) -> list[types_pb2.SigningRequest]:
    """Pending requests the drop-in made, across every page."""
    found, token = [], ""
    while True:
        page = shared.clients.approval("alice").ListRequests(
            approval_pb2.ListRequestsRequest(page_size=50, page_token=token), timeout=10
        )
        found += [r for r in page.requests if r.context.get("tool") == "ssh-keygen -Y sign"]
        token = page.next_page_token
        if not token:
            return found


def _approve_next(shared: Running, seen: set[str]) -> types_pb2.SigningRequest:
    """Wait for the drop-in's new request, then have two officers approve it."""
    new: list[types_pb2.SigningRequest] = []

    def arrived() -> bool:
        new[:] = [r for r in _pending_dropin_requests(shared) if r.id not in seen]
        return bool(new)

    wait_until(arrived, timeout=60)
    (request,) = new
    seen.add(request.id)
    shared.clients.approve("alice", request)
    shared.clients.approve("bob", request)
    return request


def _git(repo: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["git", "-C", str(repo), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_git_signs_commits_and_tags_through_the_ssh_keygen_dropin(
    shared: Running, tmp_path: Path
) -> None:
    """git commit -S and git tag -s with gpg.ssh.program = signer-ssh-keygen wait for the
    officers and produce signatures git verify-commit and verify-tag accept (verification
    passes through to the real ssh-keygen); a tampered commit does not verify."""
    allowed = _allowed_signers(shared, tmp_path, "release")
    pub = tmp_path / "release.pub"
    got = CliRunner().invoke(
        main,
        ["public-key", "--key-name", "release", "--format", "ssh", "--out", str(pub), *_ci(shared)],
    )
    assert got.exit_code == 0, got.output
    assert pub.read_text().split()[:2] == allowed.read_text().split()[1:3]
    home = tmp_path / "home"
    home.mkdir()
    env = dropin_env(shared, home)
    repo = tmp_path / "repo"
    run(["git", "init", "-q", str(repo)], env=env)
    for k, v in {
        "gpg.format": "ssh",
        "gpg.ssh.program": DROPIN,
        "gpg.ssh.allowedSignersFile": str(allowed),
        "user.signingkey": str(pub),
    }.items():
        run(["git", "-C", str(repo), "config", k, v], env=env)
    (repo / "README").write_text("signed release\n")
    run(["git", "-C", str(repo), "add", "README"], env=env)
    seen = {r.id for r in _pending_dropin_requests(shared)}

    commit = _git(repo, env, "commit", "-q", "-S", "-m", "release 1.0")
    request = _approve_next(shared, seen)
    _, err = commit.communicate(timeout=120)
    assert commit.returncode == 0, err
    assert SshRequest.parse(request.payload).namespace == "git"
    verified = run(["git", "-C", str(repo), "verify-commit", "HEAD"], env=env)
    assert 'Good "git" signature for release@example.org' in verified.stderr

    tag = _git(repo, env, "tag", "-s", "v1.0", "-m", "release 1.0")
    _approve_next(shared, seen)
    _, err = tag.communicate(timeout=120)
    assert tag.returncode == 0, err
    verified = run(["git", "-C", str(repo), "verify-tag", "v1.0"], env=env)
    assert 'Good "git" signature for release@example.org' in verified.stderr

    # The same signature on a changed commit object does not verify.
    raw = run(["git", "-C", str(repo), "cat-file", "commit", "HEAD"], env=env).stdout
    forged = raw.replace("release 1.0", "release 6.6")
    made = subprocess.run(
        ["git", "-C", str(repo), "hash-object", "-t", "commit", "-w", "--stdin"],
        input=forged,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    bad = run(["git", "-C", str(repo), "verify-commit", made], env=env, check=False)
    assert bad.returncode != 0


def test_the_dropin_refuses_a_key_the_service_does_not_hold(
    shared: Running, tmp_path: Path
) -> None:
    """A user.signingkey that is no key of the service: a one-line error, nothing asked."""
    stranger = tmp_path / "stranger.pub"
    stranger.write_text(
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBAk5"
        "Lv6C3t+7mw2dKb8JLqC0Ge+ZyD6jY2vjn5mMFcZ6nB1Xn5s0GpmdyZ6Gk0bCNSw1hT5+z7g6hU4a0bC1t1s= x\n"
    )
    buffer = tmp_path / "buffer"
    buffer.write_text("tree 0\n")
    env = {**os.environ, "SIGNER_PROFILE": str(shared.env.profile_path("ci"))}
    r = run(
        [DROPIN, "-Y", "sign", "-n", "git", "-f", str(stranger), str(buffer)], env=env, check=False
    )
    assert r.returncode != 0
    assert f"no signing key on the server has the public key in {stranger}" in r.stderr
    assert not buffer.with_name("buffer.sig").exists()


def test_keys_ssh_prints_the_public_key_and_an_allowed_signers_line(
    shared: Running,
) -> None:
    """`signer keys ssh` names the key as OpenSSH does; an RSA-PSS key is refused, naming
    the key types SSH signatures need."""
    config = str(shared.env.config)
    keys = [*SIGNER, "keys", "ssh", "--config", config, "--name"]
    r = run([*keys, "release", "--principal", "release@example.org"])
    key_line, allowed = r.stdout.splitlines()
    assert key_line.startswith("ecdsa-sha2-nistp256 ") and key_line.endswith(" release")
    assert allowed.startswith('release@example.org namespaces="git,file" ecdsa-sha2-nistp256 ')
    bad = run([*keys, "k-rsa-pss-3072"], check=False)
    assert bad.returncode != 0
    assert "SSH signatures need an ecdsa-p256" in bad.stderr


def _approver(shared: Running, who: str, *args: str) -> str:
    return run([*APPROVER, *args, "--profile", str(shared.env.profile_path(who))]).stdout


def test_approver_shows_the_namespace_and_file_digest_and_signs_the_payload(
    shared: Running, tmp_path: Path
) -> None:
    """`approver show` prints the namespace and the file's own SHA-512 with the check that
    the digest to sign is derived from them; `approver approve` signs a statement naming
    the payload, and two such approvals get the request signed."""
    artifact = tmp_path / "shown.tar"
    artifact.write_bytes(b"what the officer sees")
    sign = ["sign", "--key-name", "release", "--file", str(artifact), "--format", "ssh"]
    made = CliRunner().invoke(main, [*sign, "--namespace", "file", "--no-wait", *_ci(shared)])
    assert made.exit_code == 0, made.output
    request_id = made.stdout.strip()
    shown = json.loads(_approver(shared, "alice", "show", request_id, "--json"))
    assert shown["ssh"]["namespace"] == "file"
    own = hashlib.sha512(b"what the officer sees").hexdigest()
    assert shown["ssh"]["artifacts"] == [{"name": "shown.tar", "digest": own}]
    assert shown["payload_matches_digest"] is True
    table = _approver(shared, "alice", "show", request_id)
    assert "ssh namespace" in table and own[:40] in table.replace("\n", "")
    assert "the digests to sign are the SSH signatures of these files" in table
    _approver(shared, "alice", "approve", request_id, "--yes")
    _approver(shared, "bob", "approve", request_id, "--yes")
    request = shared.clients.get(request_id)
    assert request.state == types_pb2.REQUEST_STATE_SIGNED
    statement = json.loads(base64.b64decode(json.loads(request.approvals[0].envelope)["payload"]))
    assert statement["payload"]["sha256"] == hashlib.sha256(request.payload).hexdigest()


def test_officers_are_warned_when_the_digest_is_not_derived_from_the_files() -> None:
    """A server that shows one file but asks to sign another's digest: the approver's view
    says MISMATCH and lists a problem, so the approval is refused."""
    request = SshRequest("git", "sha512", [Digest("sha512", hashlib.sha512(b"a").digest(), "a")])
    other = SshRequest("git", "sha512", [Digest("sha512", hashlib.sha512(b"b").digest(), "a")])
    fmt = SshFormat()
    described = fmt.describe(
        PAYLOAD_TYPE, request.to_bytes(), other.signed_digests("ecdsa-p256"), "ecdsa-p256"
    )
    assert described["payload_matches_digest"] is False
    assert fmt.problems(described) == ["the digests to sign are not those of the files shown"]
    assert any("MISMATCH" in str(cell) for _, cell in fmt.rows(described))
    broken = fmt.describe(PAYLOAD_TYPE, b"{}", [], "ecdsa-p256")
    assert fmt.problems(broken)[0].startswith("the SSH signature request cannot be shown")


def test_a_missing_namespace_is_refused_before_connecting(tmp_path: Path) -> None:
    """--format ssh without --namespace is a usage error, said before any profile or server
    is needed."""
    artifact = tmp_path / "a"
    artifact.write_bytes(b"x")
    r = CliRunner().invoke(
        main, ["sign", "--key-name", "release", "--file", str(artifact), "--format", "ssh"]
    )
    assert r.exit_code == 2 and "--format ssh needs --namespace" in r.stderr


def test_verify_refuses_a_signature_labelled_with_another_algorithm(tmp_path: Path) -> None:
    """A P-384 key's signature labelled ecdsa-sha2-nistp256 (over SHA-256) is refused, as
    ssh-keygen refuses it; the correctly labelled one verifies."""
    key = ec.generate_private_key(ec.SECP384R1())
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    pem_path = tmp_path / "k.pem"
    pem_path.write_text(pem)
    artifact = tmp_path / "f"
    artifact.write_bytes(b"labelled")
    data = signed_data("file", "sha512", hashlib.sha512(b"labelled").digest())
    sig = tmp_path / "f.sig"
    for label, hash_name, good in (("ecdsa-p384", "sha384", True), ("ecdsa-p256", "sha256", False)):
        h = hashes.SHA384() if hash_name == "sha384" else hashes.SHA256()
        der = key.sign(hashlib.new(hash_name, data).digest(), ec.ECDSA(utils.Prehashed(h)))
        sig.write_text(armor(pem, label, "file", "sha512", der))
        evidence = Evidence(sig, file=artifact, public_key=pem_path, namespace="file")
        if good:
            assert "OK" in SshFormat().verify(evidence).text
        else:
            with pytest.raises(VerificationError, match="this key signs ecdsa-sha2-nistp384"):
                SshFormat().verify(evidence)


def test_the_dropin_runs_only_an_absolute_real_ssh_keygen_and_never_itself(
    tmp_path: Path,
) -> None:
    """A relative $SIGNER_REAL_SSH_KEYGEN (a repository's own ./ssh-keygen) is refused, and a
    pass-through that reaches a drop-in again stops with a message instead of looping."""
    env = {**os.environ, "SIGNER_REAL_SSH_KEYGEN": "ssh-keygen"}
    r = run([DROPIN, "-Y", "check-novalidate"], env=env, check=False)
    assert r.returncode == 2 and "must be an absolute path" in r.stderr
    env = {**os.environ, "SIGNER_REAL_SSH_KEYGEN": DROPIN}
    r = run([DROPIN, "-Y", "check-novalidate"], env=env, check=False, timeout=60)
    assert r.returncode == 2 and "is a drop-in again" in r.stderr
    passed = run([DROPIN, "-l", "-f", "/nonexistent"], check=False)
    assert "nonexistent" in passed.stderr  # the real ssh-keygen's own complaint
