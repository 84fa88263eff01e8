"""Fixtures: a shared dev environment and server, plus fresh ones for destructive tests.

SoftHSM is required: a missing softhsm2-util or module fails the session
(never a silent skip), in CI and locally alike.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from signer.softhsm import DEFAULT_MODULE
from signer.tls import DevCA
from tests.harness import (
    DIGEST_ALGORITHMS,
    Clients,
    Env,
    Running,
    ServerProcess,
    make_env,
    running,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [
        what
        for what, ok in (
            ("softhsm2-util", shutil.which("softhsm2-util")),
            (DEFAULT_MODULE, Path(DEFAULT_MODULE).exists()),
            ("openssl", shutil.which("openssl")),
        )
        if not ok
    ]
    if missing:
        raise pytest.UsageError(
            f"SoftHSM2/openssl missing ({', '.join(missing)}); run scripts/test, which "
            "installs them (apt-get install softhsm2 openssl)"
        )


@pytest.fixture(scope="session")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """One environment for the whole session, with a key per digest algorithm and extras.

    Extra identities: `ci2` (second requester), `dave` (approver not in any key's
    policy), `carol` may also request (to test self-approval), `nobody` (valid
    certificate, no role), `outsider` (certificate from another CA).
    """
    env = make_env(tmp_path_factory.mktemp("shared") / "env")
    for alg in DIGEST_ALGORITHMS:
        env.add_key(f"k-{alg}", alg)
    env.add_client("ci2", ["requester"])
    env.add_client("dave", ["approver"], approval_key=True)
    env.add_client("nobody", [])
    env.add_client("outsider", ["requester"], ca=DevCA("another CA"))
    cfg = env.read_config()
    cfg["identities"]["carol"] = ["approver", "requester"]
    for k in cfg["keys"].values():
        k["requesters"] = ["ci", "ci2", "carol"]
    env.write_config(cfg)
    return env


@pytest.fixture(scope="session")
def shared(shared_env: Env) -> Iterator[Running]:
    """The shared server, running for the whole session."""
    yield from running(shared_env)


@pytest.fixture
def clients(shared: Running) -> Clients:
    return shared.clients


@pytest.fixture
def fresh_env(tmp_path: Path) -> Env:
    """A new environment of its own (for crash, start-up and config tests)."""
    return make_env(tmp_path / "env")


@pytest.fixture
def fresh(fresh_env: Env) -> Iterator[Running]:
    yield from running(fresh_env)


__all__ = ["ServerProcess"]


# An OIDC-enabled environment and server (tests/oidc_env.py), for tests/test_oidc.py.
from tests.oidc_env import oidc, oidc_env  # noqa: E402, F401
