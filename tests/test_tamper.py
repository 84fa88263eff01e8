"""Tampering with the audit log is caught by `signer audit fetch` or `signer audit verify`.

One dev environment is built once: flows (signed, denied, pending requests), an
auditor's copy fetched half-way (`mid`) and the same copy fetched again at the end
(`end`, so it holds two checkpoints), then the server is stopped and the database
is saved, once per store backend (SQLite: copies of the signer.db* files;
PostgreSQL: a template database). Each server-side test restores that state,
edits the database directly while no server runs (with the append-only triggers
dropped on SQLite, disabled on PostgreSQL), restarts the server and checks that
the auditor's fetch fails naming the problem. The token keeps the tree head
the audit key last signed, so a server refuses a log that no longer extends
it (tests/test_audit_head.py); here the operator has reset that head (`signer
audit head --reset`: the token's PIN, recorded in the log), the one way to make
the audit key sign such a log, and it is the auditors who must catch it. The
token's files are saved with the database and put back with it. Offline, the fetched files
themselves are edited and `audit verify` names the first bad entry (once, on the
first backend chosen: those files do not depend on the store); and small
synthetic logs, signed with an in-memory key, check the semantics (every
`request.signed` backed by a valid quorum under the policy in force).

The token is only used from subprocesses (the server, and a script that signs a
forged checkpoint with the real audit key); this process never loads PKCS#11.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from psycopg import sql

from signer.approval.ed25519 import Ed25519Signer
from signer.approval.keys import ApprovalSigner
from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.audit.note import Checkpoint, Verifier, open_note, sign_note
from signer.dsse import Statement, sign_statement
from signer.encoding import canonical_json
from signer.model import Digest, Manifest
from signer.v1 import types_pb2
from testbed.clients import Clients
from testbed.commands import SIGNER, run
from testbed.env import _PG_CONNECTIONS, Db, Env, make_env
from testbed.pg import PgServer
from testbed.process import running
from tests.harness import audit_events

SIGNED = types_pb2.REQUEST_STATE_SIGNED
DENIED = types_pb2.REQUEST_STATE_DENIED
serving = contextlib.contextmanager(running)

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


def _fetch(env: Env, out: Path) -> subprocess.CompletedProcess[str]:
    args = ["audit", "fetch", "--profile", str(env.profile_path("auditor")), "--out", str(out)]
    return run([*SIGNER, *args], check=False, timeout=60)


def _verify(directory: Path, verifier: str) -> subprocess.CompletedProcess[str]:
    args = ["audit", "verify", str(directory), "--verifier", verifier]
    return run([*SIGNER, *args], check=False, timeout=60)


def _ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _refused(p: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The command exited 1 with one clear message holding every phrase."""
    message = " ".join(p.stderr.split())
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    for phrase in phrases:
        assert phrase in message, message
    return message


def _size(fetch_output: str) -> int:
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
def _pg_connect(db: Db, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
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
    with _pg_connect(db, "postgres") as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target))
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(target), sql.Identifier(source)
            )
        )


def _save(env: Env, to: Path) -> Saved:
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


def _restore(env: Env, saved: Saved) -> None:
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
        n_mid = _size(_ok(_fetch(env, mid)))
        shutil.copytree(mid, end)
        _sign(c, "bob", "carol")
        c.create()
        c.approve("alice", c.create())
        n = _size(_ok(_fetch(env, end)))
    saved = _save(env, root / "saved")
    tokens = shutil.copytree(env.root / "tokens", root / "saved-tokens")
    entries = audit_events(env)
    assert len(entries) == n >= 15 and n - n_mid >= 8
    verifier = str(env.profile("auditor").audit_verifier)
    assert "OK: " in _ok(_verify(end, verifier))
    return Baseline(env, saved, mid, end, n_mid, n, entries, verifier, tokens)


@pytest.fixture(scope="module")
def baselines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Baseline]:
    """The baseline on a backend, built on first use and kept for the module."""
    built: dict[str, Baseline] = {}

    def get(backend: str) -> Baseline:
        if backend not in built:
            root = tmp_path_factory.mktemp(f"tamper-{backend}")
            built[backend] = _build_baseline(backend, request, root)
        return built[backend]

    return get


@pytest.fixture(scope="module")
def baseline(backend: str, baselines: Callable[[str], Baseline]) -> Baseline:
    """The baseline on the test's backend (server-side tests run on each)."""
    return baselines(backend)


@pytest.fixture(scope="module")
def fetched(request: pytest.FixtureRequest, baselines: Callable[[str], Baseline]) -> Baseline:
    """A baseline for the offline tests, which only read its fetched files: they do not
    depend on the store, so they run once, on SQLite unless only PostgreSQL is chosen."""
    only_pg = request.config.getoption("--backend") == "postgresql"
    return baselines("postgresql" if only_pg else "sqlite")


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


def _copies(base: Baseline, tmp_path: Path) -> Case:
    mid = shutil.copytree(base.mid, tmp_path / "mid")
    end = shutil.copytree(base.end, tmp_path / "end")
    return Case(base, mid, end, tmp_path)


@pytest.fixture
def case(baseline: Baseline, tmp_path: Path) -> Case:
    _restore(baseline.env, baseline.saved)
    shutil.rmtree(baseline.env.root / "tokens")
    shutil.copytree(baseline.tokens, baseline.env.root / "tokens")
    return _copies(baseline, tmp_path)


@pytest.fixture
def offline(fetched: Baseline, tmp_path: Path) -> Case:
    """Copies of the fetched logs only; the database is not touched."""
    return _copies(fetched, tmp_path)


# -- editing the database (server stopped) ----------------------------------------------

Rows = list[tuple[bytes, str]]  # (entry bytes, key_name column), in log order


def _with(raw: bytes, **changes: Any) -> bytes:
    """An entry with some fields changed, still canonical JSON."""
    return canonical_json({**json.loads(raw), **changes})


def _renumbered(rows: Rows) -> Rows:
    """Each entry's "index" set to its new position, as a careful forger would."""
    return [(_with(raw, index=i), k) for i, (raw, k) in enumerate(rows)]


class _Nodes:
    """Perfect nodes in a dict: a `merkle.NodeSource` for rebuilding the stored tree."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}

    def perfect(self, level: int, index: int) -> bytes:
        return self.nodes[level, index]


Execute = Callable[..., list[tuple[Any, ...]]]  # (sql with ? placeholders, *args) -> rows


@contextlib.contextmanager
def _editing(db: Db) -> Iterator[Execute]:
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

    with _pg_connect(db) as conn, conn.transaction():

        def execute(query: str, *args: Any) -> list[tuple[Any, ...]]:
            cur = conn.execute(query.replace("?", "%s").encode(), args or None)
            return cur.fetchall() if cur.description else []

        for table in _AUDIT_TABLES:
            execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        yield execute
        for table in _AUDIT_TABLES:
            execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def _rewrite(env: Env, edit: Callable[[Rows], Rows], *, rebuild: bool = False) -> bytes:
    """Replace the stored log by `edit(rows)`, stored verbatim; returns the tree's new root.

    Without `rebuild` the stored tree nodes are kept (trimmed to the new size): the
    tree still commits to the original entries. With `rebuild` they are recomputed
    from the edited entries, rewriting history consistently. Checkpoints past the
    new size are deleted either way, so the server signs one at its next append.
    """
    with _editing(env.store) as execute:
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


def _reset_head(env: Env) -> None:
    """The operator makes the audit key accept the stored log as it is (recorded)."""
    why = "accepting the database as it is now"
    run([*SIGNER, "audit", "head", "--reset", "--config", str(env.config), "--reason", why])


def _edit_actor(k: int) -> Callable[[Rows], Rows]:
    def edit(rows: Rows) -> Rows:
        raw, key_name = rows[k]
        rows[k] = (_with(raw, actor="mallory"), key_name)
        return rows

    return edit


def _delete(k: int) -> Callable[[Rows], Rows]:
    return lambda rows: _renumbered(rows[:k] + rows[k + 1 :])


def _swap(k: int, renumber: bool = True) -> Callable[[Rows], Rows]:
    def edit(rows: Rows) -> Rows:
        rows[k], rows[k + 1] = rows[k + 1], rows[k]
        return _renumbered(rows) if renumber else rows

    return edit


# -- the database, tampered: fetch catches it ------------------------------------------


@pytest.mark.parametrize(
    ("kind", "phrase"),
    [
        ("edit", "do not hash to its signed checkpoint's root"),
        ("delete", "do not hash to its signed checkpoint's root"),
        ("swap", "do not hash to its signed checkpoint's root"),
        ("swap-raw", "asked for entry {k}, got {k1}"),
    ],
    ids=["edit", "delete", "swap", "swap-raw"],
)
def test_edited_entries_fail_fresh_and_incremental_fetch(
    case: Case, kind: str, phrase: str
) -> None:
    """Entries edited, deleted or swapped under an intact tree: any fetch reading them fails."""
    k = case.base.index("request.approved", "bob", after=case.base.n_mid)
    edit = {
        "edit": _edit_actor(k),
        "delete": _delete(k),
        "swap": _swap(k),
        "swap-raw": _swap(k, renumber=False),
    }[kind]
    _rewrite(case.env, edit)
    phrase = phrase.format(k=k, k1=k + 1)
    if kind == "delete":  # one entry fewer than the token's head: a reset before serving
        _reset_head(case.env)
    with serving(case.env) as r:
        _refused(_fetch(case.env, case.tmp / "fresh"), phrase)
        assert not (case.tmp / "fresh" / "checkpoint").exists()
        r.clients.create()  # more activity; the auditor's next fetch reads entry k
        before = (case.mid / "entries.jsonl").read_bytes()
        _refused(_fetch(case.env, case.mid), phrase)
    assert (case.mid / "entries.jsonl").read_bytes() == before  # nothing written


@pytest.mark.parametrize("kind", ["edit", "swap", "delete"])
def test_rewritten_history_fails_incremental_fetch(case: Case, kind: str) -> None:
    """History rewritten with the tree rebuilt: auditors holding an older checkpoint see it."""
    base = case.base
    k = base.index("request.approved", "alice")
    assert k < base.n_mid - 1
    edit = {"edit": _edit_actor(k), "delete": _delete(k), "swap": _swap(k)}[kind]
    _rewrite(case.env, edit, rebuild=True)
    _reset_head(case.env)
    with serving(case.env):
        _refused(
            _fetch(case.env, case.mid),
            f"does not extend the {base.n_mid} verified before (fork or rewritten history)",
        )
        _refused(
            _fetch(case.env, case.end),
            f"does not extend the {base.n} verified before (fork or rewritten history)",
        )


def test_truncated_tail_is_a_rollback(case: Case) -> None:
    """The last entries, their nodes and checkpoints deleted: the auditor's fetch says rollback."""
    n = case.base.n
    _rewrite(case.env, lambda rows: rows[:-4])
    _reset_head(case.env)  # audit.head_reset and server.started: n - 2
    with serving(case.env):
        _refused(
            _fetch(case.env, case.end),
            f"rollback: the server's log has {n - 2} entries; {n} were verified before",
        )
        assert _size(_ok(_fetch(case.env, case.mid))) == n - 2  # still extends the older copy


def test_restored_old_database_is_refused_then_a_fork_once_reset(case: Case) -> None:
    """An old copy of the database put back: the server refuses it; reset, auditors see a fork."""
    env, n = case.env, case.base.n
    old = _save(env, case.tmp / "old")
    with serving(env) as r:  # server.started + one request: n + 2
        r.clients.create()
        assert _size(_ok(_fetch(env, case.end))) == n + 2
    _restore(env, old)
    p = run([*SIGNER, "serve", "--config", str(env.config)], check=False, timeout=60)
    assert p.returncode != 0 and "rolled back or truncated" in " ".join(p.stderr.split())
    _reset_head(env)  # n + 1
    with serving(env):  # server.started: n + 2 again, other entries
        _refused(
            _fetch(env, case.end), f"fork: the server signed two different logs of {n + 2} entries"
        )


_FORGE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import pkcs11
    from pkcs11 import Mechanism, ObjectClass

    from signer.audit.note import Checkpoint, Verifier, sign_note

    module, token_label, pin_file, key_label, vkey, size, root = sys.argv[1:]
    verifier = Verifier.parse(vkey)
    token = pkcs11.lib(module).get_token(token_label=token_label)
    with token.open(user_pin=Path(pin_file).read_text().strip()) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=key_label)
        text = Checkpoint(verifier.name, int(size), bytes.fromhex(root)).text()
        note = sign_note(
            text,
            verifier.name,
            verifier.public_key,
            lambda message: bytes(key.sign(message, mechanism=Mechanism.EDDSA)),
        )
    sys.stdout.write(note)
    """
)


def _forge_checkpoint(env: Env, verifier: str, size: int, root: bytes) -> str:
    """A checkpoint signed with the env's real audit key, in a subprocess using PKCS#11."""
    cfg = env.read_config()
    p = run(
        [
            sys.executable,
            "-c",
            _FORGE_SCRIPT,
            cfg["token"]["module"],
            cfg["token"]["label"],
            str(env.root / "secrets" / "token.pin"),
            cfg["audit"]["key"],
            verifier,
            str(size),
            root.hex(),
        ],
        env={"SOFTHSM2_CONF": str(env.root / "softhsm2.conf")},
        timeout=60,
    )
    return p.stdout


def test_checkpoint_forged_with_the_real_key_is_a_fork(case: Case) -> None:
    """A rewritten log with a checkpoint the real audit key signed: fetch and verify see a fork."""
    base, env = case.base, case.env
    k = base.index("request.approved", "alice")
    root = _rewrite(env, _edit_actor(k), rebuild=True)
    forged = _forge_checkpoint(env, base.verifier, base.n, root)
    cp = Checkpoint.parse(open_note(forged, [Verifier.parse(base.verifier)]))  # a valid signature
    assert (cp.size, cp.root) == (base.n, root)
    with _editing(env.store) as execute:
        execute("UPDATE checkpoints SET note = ? WHERE size = ?", forged, base.n)
    assert env.store.rows("SELECT note FROM checkpoints WHERE size = ?", base.n) == [(forged,)]
    _reset_head(env)

    with serving(env):
        _refused(
            _fetch(env, case.end),
            f"does not extend the {base.n} verified before (fork or rewritten history)",
        )
    # Offline: the forged note beside the auditor's own checkpoint of the same size.
    (case.end / "checkpoint").write_text(forged)
    _refused(
        _verify(case.end, base.verifier),
        f"two checkpoints of size {base.n} have different roots: the log forked",
    )


# -- the fetched files, tampered: offline verify names the entry -----------------------


def _lines(d: Path) -> list[bytes]:
    return (d / "entries.jsonl").read_bytes().splitlines()


def _write_lines(d: Path, lines: list[bytes]) -> None:
    (d / "entries.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def _with_context(raw: bytes) -> bytes:
    """A request.created entry with other context: nothing the semantic checks read."""
    details = json.loads(raw)["details"]
    return _with(raw, details={**details, "context": {"repository": "org/evil"}})


def _without_key_name(raw: bytes) -> bytes:
    details = json.loads(raw)["details"]
    del details["key_name"]
    return _with(raw, details=details)


def test_offline_edits_name_the_first_bad_entry(offline: Case) -> None:
    """Each edit of the fetched entries fails `audit verify`, naming the entry or checkpoint."""
    base, d = offline.base, offline.end
    lines = _lines(d)
    late = base.index("request.approved", "bob", after=base.n_mid)
    early = base.index("request.created", "ci")
    created = base.index("request.created", "ci", after=base.n_mid)
    assert created + 1 == late  # bob's approval is the next entry of that request
    cases: list[tuple[list[bytes], list[str]]] = [
        # the actor of an approval changed: the approval no longer checks out
        (
            [*lines[:late], _with(lines[late], actor="mallory"), *lines[late + 1 :]],
            [f"entry {late} (request.approved)", "'mallory' has no approval key"],
        ),
        # a field no rule reads changed: the first checkpoint covering it disagrees
        (
            [*lines[:early], _with_context(lines[early]), *lines[early + 1 :]],
            [
                f"entry {base.n_mid - 1}: the log up to here does not match the signed "
                f"checkpoint of size {base.n_mid}: an entry at or before {base.n_mid - 1}",
            ],
        ),
        # not canonical any more
        (
            [*lines[:late], lines[late].replace(b'","', b'", "', 1), *lines[late + 1 :]],
            [f"entry {late}: not a canonical audit entry"],
        ),
        # fields the semantic checks need, missing or mistyped (once a traceback)
        (
            [*lines[:created], _without_key_name(lines[created]), *lines[created + 1 :]],
            [f"entry {created} (request.created): details.key_name is missing"],
        ),
        (
            [*lines[:late], _with(lines[late], time=5), *lines[late + 1 :]],
            [f"entry {late}: not a canonical audit entry"],
        ),
        # one line deleted
        (
            lines[:late] + lines[late + 1 :],
            [f"entry {late}: says it is entry {late + 1}", "removed, inserted or reordered"],
        ),
        # two lines swapped
        (
            [*lines[:late], lines[late + 1], lines[late], *lines[late + 2 :]],
            [f"entry {late}: says it is entry {late + 1}"],
        ),
        # the tail dropped
        (
            lines[:-3],
            [f"the log has {base.n - 3} entries but its latest checkpoint covers {base.n}"],
        ),
    ]
    for edited, phrases in cases:
        _write_lines(d, edited)
        _refused(_verify(d, base.verifier), "verification FAILED", *phrases)
    _write_lines(d, lines)
    assert "OK: " in _ok(_verify(d, base.verifier))


def _flip_signature_byte(note: str) -> str:
    text, _, sig_line = note.rpartition("\n\n")
    prefix, _, b64 = sig_line.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 0x01  # inside the signature, after the 4-byte key id
    return f"{text}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"


def test_offline_bad_checkpoint_signature_or_other_key_fails(offline: Case) -> None:
    """A flipped signature byte, bad bytes, a stray note or another key's verifier: refused."""
    base, d = offline.base, offline.end
    other = Verifier.for_key(
        Verifier.parse(base.verifier).name, ed25519.Ed25519PrivateKey.generate().public_key()
    )
    _refused(_verify(d, str(other)), "no signature by a known key")
    note = (d / "checkpoint").read_text()
    (d / "checkpoint").write_text(_flip_signature_byte(note))
    _refused(_verify(d, base.verifier), f"{d / 'checkpoint'}: invalid signature for key")
    (d / "checkpoint").write_text(note)
    (d / "checkpoint").write_bytes(note.encode().replace(b"\n\n", b"\n\xff\n", 1))
    _refused(_verify(d, base.verifier), "checkpoint: note has", "invalid UTF-8")  # no traceback
    (d / "checkpoint").write_text(note)
    stray = d / "checkpoints" / "latest.note"
    stray.write_text(note)
    _refused(_verify(d, base.verifier), f"{stray}: not a checkpoint file")
    stray.unlink()
    history = d / "checkpoints" / f"{base.n_mid}.note"
    history.write_text(_flip_signature_byte(history.read_text()))
    _refused(_verify(d, base.verifier), f"{history}: invalid signature for key")


# -- semantics: synthetic logs signed with an in-memory key -----------------------------

_ORIGIN = "example.test/synthetic"
_OFFICERS = ("alice", "bob", "carol", "dave")
_KEY_ID = "ab" * 32


@dataclasses.dataclass
class _Synth:
    """A small log: one policy, one request, its decisions and its signature."""

    keys: dict[str, ApprovalSigner]
    entries: list[AuditEntry] = dataclasses.field(default_factory=list)
    rid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    digests: tuple[Digest, ...] = (Digest("sha256", hashlib.sha256(b"app").digest(), "app.tar"),)
    t0: dt.datetime = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    def add(self, event: str, actor: str, details: dict[str, Any], rid: str | None = None) -> int:
        i = len(self.entries)
        when = self.t0 + dt.timedelta(seconds=i)
        self.entries.append(
            AuditEntry(i, when, event, actor, self.rid if rid is None else rid, details)
        )
        return i

    def policy(
        self, approvers: tuple[str, ...] = ("alice", "bob", "carol"), **key_as: str
    ) -> dict[str, Any]:
        """Like `Config.policy_document`; `key_as` registers an officer under another's key."""
        return {
            "keys": {
                "release": {
                    "name": "release",
                    "algorithm": "ecdsa-p256",
                    "approvers": sorted(approvers),
                    "threshold": 2,
                    "requesters": ["carol", "ci"],
                    "max_ttl_seconds": 3600,
                }
            },
            "identities": {"ci": ["requester"], **{o: ["approver"] for o in _OFFICERS}},
            "approver_keys": {
                o: self.keys[key_as.get(o, o)].public_key().policy_value() for o in _OFFICERS
            },
            "access": {},
            "audit_key": "audit",
        }

    def started(self, policy: dict[str, Any], policy_hash: str | None = None) -> int:
        digest = policy_hash or hashlib.sha256(canonical_json(policy)).hexdigest()
        return self.add(
            "server.started",
            "signer",
            {"policy": policy, "policy_hash": digest, "version": "0"},
            rid="",
        )

    def created(self, requester: str = "ci") -> int:
        return self.add(
            "request.created",
            requester,
            {
                "key_name": "release",
                "key_id": _KEY_ID,
                "algorithm": "ecdsa-p256",
                "requester": requester,
                "digests": [d.as_dict() for d in self.digests],
                "threshold": 2,
            },
        )

    def decided(
        self,
        officer: str,
        decision: str = "approve",
        signer: str | None = None,
        digests: tuple[Digest, ...] | None = None,
        manifest: Manifest | None = None,
    ) -> int:
        st = Statement(
            self.rid,
            "release",
            _KEY_ID,
            () if manifest else digests or self.digests,
            decision,
            officer,
            self.t0,
            "no" if decision == "deny" else "",
            manifest=manifest,
        )
        envelope = sign_statement(st, self.keys[signer or officer]).decode()
        details = {"approver": officer, "envelope": envelope}
        if decision == "deny":
            return self.add("request.denied", officer, {**details, "reason": "no"})
        return self.add("request.approved", officer, details)

    def signed(self, approvers: list[str]) -> int:
        return self.add(
            "request.signed",
            "signer",
            {"key_id": _KEY_ID, "approvers": approvers, "signature_sha256": ["00" * 32]},
        )

    def write(self, d: Path, audit_key: ed25519.Ed25519PrivateKey) -> str:
        """entries.jsonl, checkpoint and checkpoints/N.note as `audit fetch` writes them."""
        raw = [e.to_bytes() for e in self.entries]
        size, root = merkle.root_from_leaves(merkle.leaf_hash(r) for r in raw)
        note = sign_note(
            Checkpoint(_ORIGIN, size, root).text(), _ORIGIN, audit_key.public_key(), audit_key.sign
        )
        (d / "checkpoints").mkdir(parents=True)
        _write_lines(d, raw)
        (d / "checkpoint").write_text(note)
        (d / "checkpoints" / f"{size}.note").write_text(note)
        return str(Verifier.for_key(_ORIGIN, audit_key.public_key()))


def _valid(s: _Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.add("request.quorum", "bob", {"approvers": ["alice", "bob"], "threshold": 2})
    return s.signed(["alice", "bob"])


def _one_approval(s: _Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    return s.signed(["alice"])


def _requester_approves(s: _Synth) -> int:
    s.started(s.policy())
    s.created(requester="carol")
    s.decided("alice")
    bad = s.decided("carol")
    s.signed(["alice", "carol"])
    return bad


def _other_digests(s: _Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    bad = s.decided("bob", digests=(Digest("sha256", bytes(32), "app.tar"),))
    s.signed(["alice", "bob"])
    return bad


def _wrong_manifest(s: _Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice", manifest=Manifest.of(s.digests))
    other = (Digest("sha256", bytes(32), "app.tar"),)
    bad = s.decided("bob", manifest=Manifest.of(other))
    s.signed(["alice", "bob"])
    return bad


def _forged_envelope(s: _Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    bad = s.decided("bob", signer="carol")
    s.signed(["alice", "bob"])
    return bad


def _non_member(s: _Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.decided("dave")  # has a registered key, but is not an approver of the key
    return s.signed(["alice"])


def _one_key_two_names(s: _Synth) -> int:
    s.started(s.policy(bob="alice"))
    s.created()
    s.decided("alice")
    s.decided("bob", signer="alice")  # verifies: bob is registered with alice's key
    return s.signed(["alice", "bob"])


def _signed_after_denial(s: _Synth) -> int:
    s.started(s.policy())
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.decided("carol", "deny")
    return s.signed(["alice", "bob"])


def _policy_hash_mismatch(s: _Synth) -> int:
    loose = s.policy(approvers=("alice", "bob", "carol", "dave"))
    bad = s.started(s.policy(), policy_hash=hashlib.sha256(canonical_json(loose)).hexdigest())
    s.created()
    s.decided("alice")
    s.decided("bob")
    s.signed(["alice", "bob"])
    return bad


_NO_QUORUM: list[tuple[Callable[[_Synth], int], str, str]] = [
    (
        _one_approval,
        "request.signed",
        "signed with 1 valid distinct approvals; the policy needs 2",
    ),
    (
        _requester_approves,
        "request.approved",
        "carol decided on a request they made or whose pipeline they started",
    ),
    (_other_digests, "request.approved", "the approve by bob is not bound to this request"),
    (_wrong_manifest, "request.approved", "the approve by bob is not bound to this request"),
    (_forged_envelope, "request.approved", "approval envelope by bob does not verify"),
    (
        _non_member,
        "request.signed",
        "signed with 1 valid distinct approvals; the policy needs 2",
    ),
    (
        _one_key_two_names,
        "request.signed",
        "signed with 1 valid distinct approvals; the policy needs 2",
    ),
    (_signed_after_denial, "request.signed", "request signed after a denial"),
    (
        _policy_hash_mismatch,
        "server.started",
        "the recorded policy does not match its policy_hash",
    ),
]


@pytest.mark.parametrize(
    ("build", "event", "phrase"),
    [pytest.param(*case, id=case[0].__name__.strip("_")) for case in _NO_QUORUM],
)
def test_signature_without_valid_quorum_is_named(
    tmp_path: Path, build: Callable[[_Synth], int], event: str, phrase: str
) -> None:
    """A correctly signed log whose signature lacks a valid quorum fails, naming the entry."""
    s = _Synth({o: Ed25519Signer.generate() for o in _OFFICERS})
    bad = build(s)
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    _refused(
        _verify(tmp_path / "log", verifier), f"verification FAILED: entry {bad} ({event}): {phrase}"
    )


def test_synthetic_valid_log_passes(tmp_path: Path) -> None:
    """The same synthetic log with a valid 2-of-3 quorum verifies, counting what it checked."""
    s = _Synth({o: Ed25519Signer.generate() for o in _OFFICERS})
    _valid(s)
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    out = run([*SIGNER, "audit", "verify", str(tmp_path / "log"), "--verifier", verifier, "--json"])
    assert json.loads(out.stdout) == {
        "entries": 6,
        "checkpoints": 1,
        "tree_size": 6,
        "signed": 1,
        "approvals": 2,
        "policies": 1,
    }


def test_synthetic_manifest_approvals_pass(tmp_path: Path) -> None:
    """Approvals binding the manifest of a batch (instead of listing it) verify offline."""
    s = _Synth({o: Ed25519Signer.generate() for o in _OFFICERS})
    s.digests = tuple(
        Digest("sha256", hashlib.sha256(b"%d" % i).digest(), f"pkg-{i}.tar") for i in range(40)
    )
    s.started(s.policy())
    s.created()
    s.decided("alice", manifest=Manifest.of(s.digests))
    s.decided("bob", manifest=Manifest.of(s.digests))
    s.add("request.quorum", "bob", {"approvers": ["alice", "bob"], "threshold": 2})
    s.signed(["alice", "bob"])
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    out = run([*SIGNER, "audit", "verify", str(tmp_path / "log"), "--verifier", verifier, "--json"])
    assert json.loads(out.stdout)["approvals"] == 2
