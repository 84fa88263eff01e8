"""Fixtures: a shared dev environment and server, plus fresh ones for destructive tests.

Every test that touches a store runs on both backends, SQLite and PostgreSQL
(the session-scoped `backend` parameter; `pytest --backend sqlite` narrows it for
a quick local run). PostgreSQL is a throwaway server started once per session
(testbed/pg.py), with a new database per environment.

SoftHSM and PostgreSQL are required: a missing softhsm2-util, module or initdb
fails the session (never a silent skip), in CI and locally alike.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from signer.tls import DevCA
from signer.token.softhsm import DEFAULT_MODULE
from testbed.clients import Clients
from testbed.env import Db, Env, make_env
from testbed.pg import PgServer, find_bin_dir
from testbed.process import Running, ServerProcess, running
from tests.fakes import World, make_world
from tests.harness import DIGEST_ALGORITHMS

BACKENDS = ("sqlite", "postgresql")

# Property tests are never timed: no per-example deadline and no slow-generation check,
# which a loaded machine would trip without anything being wrong.
settings.register_profile("untimed", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("untimed")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=[*BACKENDS, "all"],
        default="all",
        help="store backend(s) to run store-backed tests on (default: all)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(why): the test is about the SQLite file itself, or the store plays no part",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("--backend")
    backends = list(BACKENDS) if chosen == "all" else [chosen]
    if metafunc.definition.get_closest_marker("sqlite_only"):
        backends = [b for b in backends if b == "sqlite"]
    metafunc.parametrize("backend", backends, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n` (scripts/test), each backend's tests run on one worker, so each
    worker builds the session's shared environments once, not at every switch of backend
    (a session fixture is torn down when its parameter changes); the other tests go by
    file, keeping each module's fixtures on one worker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        item.add_marker(pytest.mark.xdist_group(backend or item.path.name))


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
    if session.config.getoption("--backend") != "sqlite" and find_bin_dir() is None:
        missing.append("PostgreSQL (initdb)")
    if missing:
        raise pytest.UsageError(
            f"SoftHSM2/openssl missing ({', '.join(missing)}); run scripts/test, which "
            "installs them (apt-get install softhsm2 openssl postgresql)"
        )


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """The session's PostgreSQL server, started on first use."""
    bin_dir = find_bin_dir()
    assert bin_dir is not None, (
        "PostgreSQL is missing: run scripts/setup (apt-get install postgresql)"
    )
    server = PgServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def new_db(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Db]:
    """Make a new empty database on the test's backend (SQLite: a file in tmp_path)."""
    return _db_maker(backend, request, tmp_path)


def _db_maker(backend: str, request: pytest.FixtureRequest, where: Path) -> Callable[[], Db]:
    if backend == "sqlite":
        count = iter(range(1_000_000))
        return lambda: Db(f"sqlite:///{where / f'store-{next(count)}.db'}")
    server: PgServer = request.getfixturevalue("pg")
    return lambda: Db(server.database(), server.password_file)


@pytest.fixture(scope="session")
def shared_env(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Env:
    """One environment for the whole session, with a key per digest algorithm and extras.

    Extra identities: `ci2` (second requester), `ci3` (a requester whose refused
    calls do not use up the others' audited-rejection budget), `dave` (approver not in any key's
    policy), `carol` may also request (to test self-approval), `nobody` (valid
    certificate, no role), `outsider` (certificate from another CA).
    """
    root = tmp_path_factory.mktemp(f"shared-{backend}")
    env = make_env(
        root / "env", None if backend == "sqlite" else _db_maker(backend, request, root)()
    )
    for alg in DIGEST_ALGORITHMS:
        env.add_key(f"k-{alg}", alg)
    env.add_client("ci2", ["requester"])
    env.add_client("ci3", ["requester"])
    env.add_client("dave", ["approver"], approval_key=True)
    env.add_client("nobody", [])
    env.add_client("outsider", ["requester"], ca=DevCA("another CA"))
    cfg = env.read_config()
    cfg["identities"]["carol"] = ["approver", "requester"]
    for k in cfg["keys"].values():
        k["requesters"] = ["ci", "ci2", "ci3", "carol"]
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
def fresh_env(backend: str, new_db: Callable[[], Db], tmp_path: Path) -> Env:
    """A new environment of its own (for crash, start-up and config tests)."""
    return make_env(tmp_path / "env", None if backend == "sqlite" else new_db())


@pytest.fixture
def fresh(fresh_env: Env) -> Iterator[Running]:
    yield from running(fresh_env)


@pytest.fixture
def world(tmp_path: Path, new_db: Callable[[], Db]) -> Iterator[World]:
    """The core over a fresh store, a fake token and three officers (tests/fakes.py)."""
    w = make_world(tmp_path, db=new_db())
    yield w
    w.close()


__all__ = ["ServerProcess"]


# Session fixtures kept in modules of their own, each shared by several test files: an
# OIDC-enabled environment and server (tests/oidc_env.py, for tests/test_oidc*.py), two
# real signed bundles (tests/bundle_env.py, for tests/test_bundle*.py) and the tampering
# baseline (tests/tamper.py, for tests/test_tamper_*.py), built once a backend.
from tests.bundle_env import signed  # noqa: E402, F401
from tests.oidc_env import oidc, oidc_env  # noqa: E402, F401
from tests.openpgp_env import openpgp_certs  # noqa: E402, F401
from tests.tamper import baselines  # noqa: E402, F401
