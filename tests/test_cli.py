"""The command lines as a user runs them: the quickstart story, exit codes, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed.commands import APPROVER, SIGNER, run
from testbed.process import Running
from tests.harness import sign_in_background


def _signer(
    r: Running, *args: str, check: bool = True, input: str | None = None, who: str = "ci"
) -> subprocess.CompletedProcess[str]:
    return run(
        [*SIGNER, *args, "--profile", str(r.env.profile_path(who))], check=check, input=input
    )


def _approver(
    r: Running, who: str, *args: str, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run(
        [*APPROVER, *args, "--profile", str(r.env.profile_path(who))], check=check, input=input
    )


def test_sign_wait_approve_verify(shared: Running, tmp_path: Path) -> None:
    """sign --wait prints the id at once, returns after two approvals, and openssl verifies."""
    artifact = tmp_path / "app.tar"
    artifact.write_bytes(b"payload" * 1000)
    proc, request_id = sign_in_background(
        shared.env, artifact, "--context", "repository=org/app", "--wait"
    )
    assert len(request_id) == 36
    listed = json.loads(_approver(shared, "alice", "list", "--json").stdout)
    assert request_id in {x["id"] for x in listed}
    shown = json.loads(_approver(shared, "alice", "show", request_id, "--json").stdout)
    assert shown["context"] == {"repository": "org/app"}
    assert shown["digests"][0]["artifact"] == "app.tar"
    first = _approver(shared, "alice", "approve", request_id, "--yes")
    assert f"approved; request {request_id} has 1 of 2 approvals, waiting for more" in (
        first.stderr
    )
    second = _approver(shared, "carol", "approve", request_id, "--yes")
    assert f"request {request_id} has 2 of 2 approvals and is SIGNED" in second.stderr
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    sig = tmp_path / "app.tar.sig"
    assert sig.exists()
    pem = tmp_path / "release.pem"
    _signer(shared, "public-key", "--key-name", "release", "--out", str(pem))
    ok = run(
        ["openssl", "dgst", "-sha256", "-verify", str(pem), "-signature", str(sig), str(artifact)]
    )
    assert "Verified OK" in ok.stdout
    assert (
        run(
            [
                *SIGNER,
                "verify",
                "--public-key",
                str(pem),
                "--file",
                str(artifact),
                "--signature",
                str(sig),
            ]
        ).returncode
        == 0
    )
    artifact.write_bytes(b"tampered")
    bad = run(
        [
            *SIGNER,
            "verify",
            "--public-key",
            str(pem),
            "--file",
            str(artifact),
            "--signature",
            str(sig),
        ],
        check=False,
    )
    assert bad.returncode == 1 and "INVALID" in bad.stderr


def test_approve_asks_for_confirmation(shared: Running, tmp_path: Path) -> None:
    """Without --yes, approve shows the request and sends nothing unless confirmed."""
    artifact = tmp_path / "x.bin"
    artifact.write_bytes(b"x")
    request_id = _signer(
        shared, "sign", "--key-name", "release", "--file", str(artifact), "--no-wait"
    ).stdout.strip()
    refused = _approver(shared, "alice", "approve", request_id, check=False, input="n\n")
    assert refused.returncode == 1
    assert "ci" in refused.stdout and "x.bin" in refused.stdout  # requester and artifact shown
    status = json.loads(_signer(shared, "status", request_id, "--json").stdout)
    assert status["approvals"] == []
    accepted = _approver(shared, "alice", "approve", request_id, input="y\n")
    assert "approved" in accepted.stderr
    status = json.loads(_signer(shared, "status", request_id, "--json").stdout)
    assert [a["approver"] for a in status["approvals"]] == ["alice"]


def test_deny_ends_request_and_sign_exits_1(shared: Running, tmp_path: Path) -> None:
    """A denial ends the request; a waiting `signer sign` exits 1 naming the reason."""
    artifact = tmp_path / "y.bin"
    artifact.write_bytes(b"y")
    proc, request_id = sign_in_background(shared.env, artifact)
    _approver(shared, "bob", "deny", request_id, "--reason", "unexpected commit", "--yes")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "DENIED" in err and "unexpected commit" in err
    assert not (tmp_path / "y.bin.sig").exists()


def test_exit_codes_and_clear_errors(shared: Running, tmp_path: Path) -> None:
    """Usage and config errors exit 2; refused operations exit 1; one line, no traceback."""
    missing = run(
        [
            *SIGNER,
            "sign",
            "--profile",
            str(tmp_path / "none.toml"),
            "--key-name",
            "release",
            "--digest",
            "sha256:" + "00" * 32,
            "--no-wait",
        ],
        check=False,
    )
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = _signer(
        shared,
        "sign",
        "--key-name",
        "nope",
        "--digest",
        "sha256:" + "00" * 32,
        "--no-wait",
        check=False,
    )
    assert unknown.returncode == 1 and "UNKNOWN_KEY" in unknown.stderr
    short = _signer(
        shared, "sign", "--key-name", "release", "--digest", "sha256:00", "--no-wait", check=False
    )
    # Refused before anything is sent (the server's own BAD_DIGEST_LENGTH: test_bad_create).
    assert short.returncode == 2 and "a sha256 digest is 32 bytes" in short.stderr
    usage = run([*SIGNER, "sign", "--key-name", "release"], check=False)
    assert usage.returncode == 2
    role = _signer(shared, "audit", "list", check=False)  # ci is not an auditor
    assert role.returncode == 1 and "PERMISSION_DENIED" in role.stderr


def test_audit_list_filters_and_json(shared: Running, tmp_path: Path) -> None:
    """The auditor lists events over gRPC, filtered by request and event, as JSON."""
    artifact = tmp_path / "z.bin"
    artifact.write_bytes(b"z")
    request_id = _signer(
        shared, "sign", "--key-name", "release", "--file", str(artifact), "--no-wait"
    ).stdout.strip()
    out = _signer(shared, "audit", "list", "--request", request_id, "--json", who="auditor")
    events = json.loads(out.stdout)
    assert [e["event"] for e in events] == ["request.created"]
    assert events[0]["details"]["digests"][0]["artifact"] == "z.bin"
    out = _signer(shared, "audit", "list", "--event", "server.started", "--json", who="auditor")
    assert all(e["event"] == "server.started" for e in json.loads(out.stdout))
    table = _signer(shared, "audit", "list", "--request", request_id, who="auditor")
    assert "request.created" in table.stdout


def test_keygen_encrypted_key_never_takes_passphrase_from_argv(tmp_path: Path) -> None:
    """approver keygen encrypts with a passphrase from a file; it has no passphrase flag."""
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple")
    pw.chmod(0o600)
    run([*APPROVER, "keygen", "--out", str(tmp_path / "k.key"), "--passphrase-file", str(pw)])
    assert b"ENCRYPTED" in (tmp_path / "k.key").read_bytes()
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k.key.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    helptext = run([*APPROVER, "keygen", "--help"]).stdout
    assert "--passphrase " not in helptext
    again = run([*APPROVER, "keygen", "--out", str(tmp_path / "k.key")], check=False)
    assert again.returncode == 1 and "exists" in again.stderr


def test_init_secrets_are_private(shared: Running) -> None:
    """signer init writes PINs and private keys 0600 and never prints them."""
    root = shared.env.root
    for p in [*root.glob("secrets/*"), *root.glob("tls/*.key"), *root.glob("approvers/*.key")]:
        assert p.stat().st_mode & 0o077 == 0, p
    pin = (root / "secrets" / "token.pin").read_text().strip()
    assert pin not in (root / "server.log").read_text()
    assert pin not in (root / "signer.toml").read_text()


def test_python_m_entry_points() -> None:
    """Both commands answer --help with exit 0."""
    for cmd in (SIGNER, [sys.executable, "-m", "approver.cli"]):
        assert run([*cmd, "--help"]).returncode == 0
