"""The client installs alone: the wheel, in a clean virtualenv with only the client's
dependencies, signs against a running server and verifies offline.

`testbed.client_install` builds the wheel and a virtualenv holding nothing the
server's extra adds (python-pkcs11, psycopg, prometheus-client, PyJWT, health and
reflection). In it, `signer sign --format bundle` waits for two officers and writes
the bundle, `signer verify` checks it against the trust file, `approver` starts,
`signer audit list` fetches events, and a server command says what to install
instead of failing with a traceback.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testbed.client_install import client_venv
from testbed.clients import Clients
from testbed.commands import run
from testbed.env import Env

pytestmark = [
    pytest.mark.sqlite_only("what is checked is the client's install"),
    pytest.mark.usefixtures("shared"),
]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return client_venv(tmp_path_factory.mktemp("client-install"))


def test_the_client_alone_lacks_the_servers_dependencies(venv: Path) -> None:
    """None of what `signer[server]` adds can be imported in the client's virtualenv."""
    for module in ("pkcs11", "psycopg", "prometheus_client", "jwt", "grpc_health"):
        p = run([str(venv / "bin" / "python"), "-c", f"import {module}"], check=False)
        assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr, module


def test_the_client_alone_signs_and_verifies(
    venv: Path, shared_env: Env, clients: Clients, tmp_path: Path
) -> None:
    """`signer sign` from the wheel gets a bundle after two approvals; `signer verify`
    from the wheel checks it against trust/release.toml."""
    signer = str(venv / "bin" / "signer")
    artifact = tmp_path / "app.tar.gz"
    artifact.write_bytes(os.urandom(256))
    profile = str(shared_env.profile_path("ci"))
    sign = [signer, "sign", "--profile", profile, "--key-name", "release", "--file"]
    with subprocess.Popen(
        [*sign, str(artifact), "--format", "bundle", "--timeout", "60s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        request = clients.get(proc.stdout.readline().strip())
        clients.approve("alice", request)
        clients.approve("bob", request)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    bundle = artifact.with_name(artifact.name + ".bundle.json")
    trust = shared_env.root / "trust" / "release.toml"
    ok = run(
        [signer, "verify", "--bundle", str(bundle), "--file", str(artifact), "--trust", str(trust)]
    )
    assert "bundle OK" in ok.stdout


def test_the_client_alone_runs_approver_and_says_what_a_server_command_needs(
    venv: Path, shared_env: Env
) -> None:
    """`approver list` and `signer audit list` work; `signer serve` and `signer policy`
    exit 2 naming `signer[server]`, without a traceback."""
    approver, signer = str(venv / "bin" / "approver"), str(venv / "bin" / "signer")
    run([approver, "list", "--profile", str(shared_env.profile_path("alice"))])
    run([signer, "audit", "list", "--profile", str(shared_env.profile_path("auditor"))])
    config = str(shared_env.config)
    for args in (
        ["serve", "--config", config, "--check"],
        ["policy", "history", "--config", config],
    ):
        refused = run([signer, *args], check=False)
        assert refused.returncode == 2, refused.stderr
        assert "pip install 'signer[server]'" in refused.stderr
        assert "Traceback" not in refused.stderr
