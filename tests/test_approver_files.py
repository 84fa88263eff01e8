"""`approver show --file F` and `approver approve --file F`: an officer checks the request
against their own copy of each artifact, whatever the format (plain digests, an SSH or
in-toto payload; OpenPGP in tests/test_openpgp.py); a file the request does not sign is
shown as matching nothing, and no approval is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from signer.cli.main import main
from testbed.commands import APPROVER, run
from testbed.process import Running

FORMATS = {"raw": ["--hash", "sha256"], "ssh": ["--namespace", "file"], "dsse": []}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_an_officer_checks_the_request_against_their_own_files(
    shared: Running, tmp_path: Path, fmt: str
) -> None:
    """The file signed is shown as the artifact it is; another file matches nothing, and
    approving with it is refused before anything is sent."""
    mine, other = tmp_path / "app.tar", tmp_path / "other.tar"
    mine.write_bytes(f"the {fmt} release".encode())
    other.write_bytes(b"not the release")
    made = CliRunner().invoke(
        main,
        [
            *("sign", "--key-name", "release", "--format", fmt, *FORMATS[fmt]),
            *("--file", str(mine), "--no-wait"),
            *("--profile", str(shared.env.profile_path("ci"))),
        ],
    )
    assert made.exit_code == 0, made.output
    request_id = made.stdout.strip()
    alice = ["--profile", str(shared.env.profile_path("alice"))]
    good = run([*APPROVER, "show", request_id, "--file", str(mine), *alice])
    assert "is app.tar, as the request says" in good.stdout
    bad = run([*APPROVER, "show", request_id, "--file", str(other), *alice], check=False)
    assert bad.returncode == 1 and "MATCHES NOTHING" in bad.stdout
    refused = run(
        [*APPROVER, "approve", request_id, "--file", str(other), "--yes", *alice], check=False
    )
    assert refused.returncode == 1 and "not a file this request signs" in refused.stderr
    assert not shared.clients.get(request_id).approvals
