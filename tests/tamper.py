"""A tampered audit log: a saved baseline, the auditor's commands, edits of the stored log.

`baselines` (a session fixture, re-exported by tests/conftest.py) builds one dev
environment per store backend: flows (signed, denied, pending requests), an
auditor's copy fetched half-way (`mid`) and the same copy fetched again at the end
(`end`, so it holds two checkpoints), then the server is stopped and the database
is saved (SQLite: copies of the signer.db* files; PostgreSQL: a template
database), with the token's files. `restore_db` puts a saved copy back. `editing`
opens one transaction on the stopped server's database with the append-only
triggers dropped (SQLite) or disabled (PostgreSQL); `rewrite_log` replaces the
stored log by an edited one, keeping or rebuilding the tree; `reset_head` is the
operator's recorded `signer audit head --reset`, the one way to make the audit
key sign such a log. `audit_fetch` and `audit_verify` run the auditor's commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from signer.audit import merkle
from signer.encoding import canonical_json
from signer.v1 import types_pb2
from testbed.clients import Clients
from testbed.commands import SIGNER, run
from testbed.env import _PG_CONNECTIONS, Db, Env, make_env
from testbed.pg import PgServer
from testbed.process import Running, serving
from tests.harness import audit_events, ok

__all__ = [
    "DENIED",
    "SIGNED",
    "Baseline",
    "Case",
    "Execute",
    "Rows",
    "Saved",
    "audit_fetch",
    "audit_verify",
    "baselines",
    "copies",
    "delete_entry",
    "edit_actor",
    "editing",
    "fetched_size",
    "pg_connect",
    "renumbered",
    "reset_head",
    "restore_db",
    "rewrite_log",
    "save_db",
    "serving",
    "swap_entries",
    "with_fields",
]

SIGNED = types_pb2.REQUEST_STATE_SIGNED
DENIED = types_pb2.REQUEST_STATE_DENIED

# SQLite: the append-only triggers, dropped before an edit. PostgreSQL: the tables
# whose user triggers are disabled for the edit (and enabled again after it).
_TRIGGERS = (
    "audit_log_append_only",
    "audit_log_no_update",
    "audit_log_no_delete",
    "audit_nodes_no_update",
    "checkpoints_no_update",
)
_AUDIT_TABLES = ("audit_log", "audit_nodes", "checkpoints")


# -- running the auditor's commands -----------------------------------------------------


def audit_fetch(env: Env, out: Path) -> subprocess.CompletedProcess[str]:
    args = ["audit", "fetch", "--profile", str(env.profile_path("auditor")), "--out", str(out)]
    return run([*SIGNER, *args], check=False, timeout=60)


def audit_verify(directory: Path, verifier: str) -> subprocess.CompletedProcess[str]:
    args = ["audit", "verify", str(directory), "--verifier", verifier]
    return run([*SIGNER, *args], check=False, timeout=60)


def fetched_size(fetch_output: str) -> int:
    """The size an `audit fetch` reports its directory holds."""
    return int(fetch_output.split(" holds ")[1].split(",")[0])


# -- the baseline: one environment, saved after some flows ------------------------------


# A copy of the database taken with the server stopped. SQLite: a directory holding
# copies of the signer.db* files; PostgreSQL: the name of a template database.
Saved = Path | str


@dataclasses.dataclass(frozen=True)
class Baseline:
    env: Env
    saved: Saved
    mid: Path  # the auditor's copy, fetched half-way
    end: Path  # the same copy, fetched again at the end
    n_mid: int
    n: int
    entries: list[dict[str, Any]]
    verifier: str
    tokens: Path  # a copy of the SoftHSM token directory, saved with the database

    def index(self, event: str, actor: str, after: int = 0) -> int:
        """The first entry at or after `after` with this event and actor."""
        return next(
            e["index"] for e in self.entries[after:] if e["event"] == event and e["actor"] == actor
        )


def _db_files(env: Env) -> list[Path]:
    return sorted(env.root.glob("signer.db*"))


def _dbname(db: Db) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(db.url)["dbname"])


@contextlib.contextmanager
def pg_connect(db: Db, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the env's database (or `dbname` on its server)."""
    assert db.password_file is not None
    url = psycopg.conninfo.make_conninfo(db.url, **({"dbname": dbname} if dbname else {}))
    password = db.password_file.read_text().strip()
    with psycopg.connect(url, password=password, autocommit=True) as conn:
        yield conn


def _pg_copy(db: Db, source: str, target: str) -> None:
    """DROP DATABASE target; CREATE DATABASE target TEMPLATE source (no one on either).

    The server is stopped; `Db.rows`'s cached connection to the live database is
    closed first.
    """
    cached = _PG_CONNECTIONS.pop(db.url, None)
    if cached is not None:
        cached.close()
    with pg_connect(db, "postgres") as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target))
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(target), sql.Identifier(source)
            )
        )


def save_db(env: Env, to: Path) -> Saved:
    """Copy the database (server stopped): the signer.db* files, or a template database."""
    if env.store.backend == "postgresql":
        live = _dbname(env.store)
        snapshot = f"{live}_{to.name}"
        _pg_copy(env.store, live, snapshot)
        return snapshot
    to.mkdir()
    for f in _db_files(env):
        shutil.copy2(f, to / f.name)
    return to


def restore_db(env: Env, saved: Saved) -> None:
    """Put a saved copy back as the live database (server stopped)."""
    if isinstance(saved, str):
        _pg_copy(env.store, saved, _dbname(env.store))
        return
    for f in _db_files(env):
        f.unlink()
    for f in saved.iterdir():
        shutil.copy2(f, env.root / f.name)


def _sign(c: Clients, first: str = "alice", second: str = "bob") -> None:
    r = c.create()
    c.approve(first, r)
    assert c.approve(second, r).state == SIGNED


def _build_baseline(backend: str, request: pytest.FixtureRequest, root: Path) -> Baseline:
    db = None
    if backend == "postgresql":
        pg: PgServer = request.getfixturevalue("pg")
        db = Db(pg.database("tamper"), pg.password_file)
    env = make_env(root / "env", db)
    mid, end = root / "mid", root / "end"
    with serving(env) as r:
        c = r.clients
        _sign(c)
        assert c.deny("carol", c.create()).state == DENIED
        n_mid = fetched_size(ok(audit_fetch(env, mid)))
        shutil.copytree(mid, end)
        _sign(c, "bob", "carol")
        c.create()
        c.approve("alice", c.create())
        n = fetched_size(ok(audit_fetch(env, end)))
    saved = save_db(env, root / "saved")
    tokens = shutil.copytree(env.root / "tokens", root / "saved-tokens")
    entries = audit_events(env)
    assert len(entries) == n >= 15 and n - n_mid >= 8
    verifier = str(env.profile("auditor").audit_verifier)
    assert "OK: " in ok(audit_verify(end, verifier))
    return Baseline(env, saved, mid, end, n_mid, n, entries, verifier, tokens)


@pytest.fixture(scope="session")
def baselines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Baseline]:
    """The baseline on a backend, built on first use and kept for the session."""
    built: dict[str, Baseline] = {}

    def get(backend: str) -> Baseline:
        if backend not in built:
            root = tmp_path_factory.mktemp(f"tamper-{backend}")
            built[backend] = _build_baseline(backend, request, root)
        return built[backend]

    return get


@dataclasses.dataclass(frozen=True)
class Case:
    """The baseline database restored, with this test's own copies of the fetched logs."""

    base: Baseline
    mid: Path
    end: Path
    tmp: Path

    @property
    def env(self) -> Env:
        return self.base.env


def copies(base: Baseline, tmp_path: Path) -> Case:
    mid = shutil.copytree(base.mid, tmp_path / "mid")
    end = shutil.copytree(base.end, tmp_path / "end")
    return Case(base, mid, end, tmp_path)


# -- editing the database (server stopped) ----------------------------------------------

Rows = list[tuple[bytes, str]]  # (entry bytes, key_name column), in log order


def with_fields(raw: bytes, **changes: Any) -> bytes:
    """An entry with some fields changed, still canonical JSON."""
    return canonical_json({**json.loads(raw), **changes})


def renumbered(rows: Rows) -> Rows:
    """Each entry's "index" set to its new position, as a careful forger would."""
    return [(with_fields(raw, index=i), k) for i, (raw, k) in enumerate(rows)]


class _Nodes:
    """Perfect nodes in a dict: a `merkle.NodeSource` for rebuilding the stored tree."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}

    def perfect(self, level: int, index: int) -> bytes:
        return self.nodes[level, index]


Execute = Callable[..., list[tuple[Any, ...]]]  # (sql with ? placeholders, *args) -> rows


@contextlib.contextmanager
def editing(db: Db) -> Iterator[Execute]:
    """One transaction on the database (server stopped), the append-only triggers off.

    SQLite: the triggers are dropped (for good). PostgreSQL: the audit tables' user
    triggers are disabled for the transaction and enabled again before it commits.
    The same portable SQL runs on both.
    """
    if db.sqlite_path is not None:
        with contextlib.closing(sqlite3.connect(db.sqlite_path, isolation_level=None)) as lite:
            for trigger in _TRIGGERS:
                lite.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            lite.execute("BEGIN")
            yield lambda query, *args: lite.execute(query, args).fetchall()
            lite.execute("COMMIT")
        return

    with pg_connect(db) as conn, conn.transaction():

        def execute(query: str, *args: Any) -> list[tuple[Any, ...]]:
            cur = conn.execute(query.replace("?", "%s").encode(), args or None)
            return cur.fetchall() if cur.description else []

        for table in _AUDIT_TABLES:
            execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield execute
        for table in _AUDIT_TABLES:
            execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def rewrite_log(env: Env, edit: Callable[[Rows], Rows], *, rebuild: bool = False) -> bytes:
    """Replace the stored log by `edit(rows)`, stored verbatim; returns the tree's new root.

    Without `rebuild` the stored tree nodes are kept (trimmed to the new size): the
    tree still commits to the original entries. With `rebuild` they are recomputed
    from the edited entries, rewriting history consistently. Checkpoints past the
    new size are deleted either way, so the server signs one at its next append.
    """
    with editing(env.store) as execute:
        rows = [
            (bytes(e), str(k))
            for e, k in execute("SELECT entry, key_name FROM audit_log ORDER BY idx")
        ]
        new = edit(rows)
        execute("DELETE FROM audit_log")
        for i, (raw, key_name) in enumerate(new):
            e = json.loads(raw)
            execute(
                "INSERT INTO audit_log VALUES (?,?,?,?,?,?,?)",
                *(i, raw, e["time"], e["event"], e["actor"], e["request_id"], key_name),
            )
        size = len(new)
        if rebuild:
            tree = _Nodes()
            for i, (raw, _) in enumerate(new):
                for level, index, h in merkle.new_nodes(tree, i, merkle.leaf_hash(raw)):
                    tree.nodes[level, index] = h
            execute("DELETE FROM audit_nodes")
            for (level, index), h in tree.nodes.items():
                execute("INSERT INTO audit_nodes VALUES (?,?,?)", level, index, h)
        else:
            # A node at (level, idx) covers leaves up to (idx + 1) * 2**level - 1.
            execute("DELETE FROM audit_nodes WHERE ((idx + 1) << level) > ?", size)
        execute("DELETE FROM checkpoints WHERE size > ?", size)
    return merkle.root_from_leaves(merkle.leaf_hash(raw) for raw, _ in new)[1]


def reset_head(env: Env) -> None:
    """The operator makes the audit key accept the stored log as it is (recorded)."""
    why = "accepting the database as it is now"
    run([*SIGNER, "audit", "head", "--reset", "--config", str(env.config), "--reason", why])


def edit_actor(k: int) -> Callable[[Rows], Rows]:
    def edit(rows: Rows) -> Rows:
        raw, key_name = rows[k]
        rows[k] = (with_fields(raw, actor="mallory"), key_name)
        return rows

    return edit


def delete_entry(k: int) -> Callable[[Rows], Rows]:
    return lambda rows: renumbered(rows[:k] + rows[k + 1 :])


def swap_entries(k: int, renumber: bool = True) -> Callable[[Rows], Rows]:
    def edit(rows: Rows) -> Rows:
        rows[k], rows[k + 1] = rows[k + 1], rows[k]
        return renumbered(rows) if renumber else rows

    return edit


def alice_signs_and_the_log_verifies(
    r: Running, request: types_pb2.SigningRequest, officer: str
) -> None:
    """alice's approval completes `officer`'s: the request is signed by both, and the log,
    fetched while the server runs, verifies offline."""
    signed = r.clients.approve("alice", request)
    assert signed.state == types_pb2.REQUEST_STATE_SIGNED
    assert {a.approver for a in signed.approvals} == {"alice", officer}
    out = r.env.root / "audit"
    assert audit_fetch(r.env, out).returncode == 0
    verified = audit_verify(out, str(r.env.profile("auditor").audit_verifier))
    assert verified.returncode == 0 and "OK: " in verified.stdout, verified.stderr
