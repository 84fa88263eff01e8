"""Every format carries its quorum proof: `--format raw`, `cosign` and `ssh` write the
request's evidence bundle beside their output, and `signer verify --bundle` checks it
(for ssh: the signed digests are those derived from the payload it keeps, the file one
the payload lists); a changed file, or a bundle whose payload was changed, fails."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from signer.cli.main import main
from signer.formats.ssh import SshRequest
from testbed.commands import SIGNER, run
from testbed.process import Running

FORMATS = {"raw": ["--hash", "sha256"], "cosign": [], "ssh": ["--namespace", "file"]}


def _signed(shared: Running, tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    """Two files signed in one request with the release key: (first file, second file)."""
    cli = CliRunner()
    profile = ["--profile", str(shared.env.profile_path("ci"))]
    files = [tmp_path / f"{fmt}-{i}.tar" for i in (1, 2)]
    for i, f in enumerate(files):
        f.write_bytes(f"{fmt} release part {i}".encode() * 20)
    sign = ["sign", "--key-name", "release", "--format", fmt, *FORMATS[fmt], "--no-wait"]
    made = cli.invoke(main, [*sign, *(a for f in files for a in ("--file", str(f))), *profile])
    assert made.exit_code == 0, made.output
    request = shared.clients.get(made.stdout.strip())
    shared.clients.approve("alice", request)
    shared.clients.approve("bob", request)
    status = [
        "status",
        request.id,
        "--format",
        fmt,
        *(a for f in files for a in ("--file", str(f))),
    ]
    fetched = cli.invoke(main, [*status, *profile])
    assert fetched.exit_code == 0, fetched.output
    assert "evidence bundle written to" in fetched.stderr
    return files[0], files[1]


def _verify(shared: Running, bundle: Path, file: Path) -> subprocess.CompletedProcess[str]:
    trust = shared.env.root / "trust" / "release.toml"
    args = ["verify", "--bundle", str(bundle), "--file", str(file), "--trust", str(trust)]
    return run([*SIGNER, *args], check=False)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_writes_a_bundle_signer_verify_accepts(
    shared: Running, tmp_path: Path, fmt: str
) -> None:
    """One bundle beside the first output covers both files; a changed file fails."""
    first, second = _signed(shared, tmp_path, fmt)
    bundle = first.with_name(first.name + ".sig.bundle.json")
    for f in (first, second):
        ok = _verify(shared, bundle, f)
        assert ok.returncode == 0, ok.stderr
        assert f"bundle OK: {f.name} signed by key release" in ok.stdout
    changed = tmp_path / "changed.tar"
    changed.write_bytes(first.read_bytes() + b"!")
    bad = _verify(shared, bundle, changed)
    assert bad.returncode == 1 and "bundle INVALID" in bad.stderr


def test_a_bundle_whose_ssh_payload_was_changed_fails(shared: Running, tmp_path: Path) -> None:
    """Another namespace in the kept payload: the signed digests are no longer derived from
    it, and the approvals no longer name it."""
    first, _ = _signed(shared, tmp_path, "ssh")
    bundle = first.with_name(first.name + ".sig.bundle.json")
    doc = json.loads(bundle.read_text())
    kept = SshRequest.parse(base64.b64decode(doc["payload"]["payload"]))
    forged = SshRequest("git", kept.hash_algorithm, kept.artifacts).to_bytes()
    doc["payload"]["payload"] = base64.b64encode(forged).decode()
    edited = tmp_path / "edited.bundle.json"
    edited.write_text(json.dumps(doc))
    bad = _verify(shared, edited, first)
    assert bad.returncode == 1
    assert "bundle INVALID" in bad.stderr and "not the SSHSIG signed data" in bad.stderr
