"""A database owner without the token cannot make the audit key sign a fork or rollback.

Real servers, both backends. The owner edits the database while the server
runs (append-only triggers dropped or disabled, as in tests/tamper.py): truncates
the log, or rewrites its history with the tree rebuilt to match. Every call
that would append then fails UNAVAILABLE with AUDIT_ROLLBACK or
AUDIT_HEAD_MISMATCH, writes nothing, is logged and counted in
`signer_audit_head_refusals_total`, and `signer audit head` says why. An older
copy of the database put back makes the server refuse to start until the
operator resets the head with the token's PIN, which the log records and which
auditors holding a later checkpoint see. A kill -9 in the middle of a commit,
or of its checkpoint's release, never leaves a server that will not start.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from signer.audit.head import MISMATCH, ROLLBACK
from signer.client.profile import RemoteError
from testbed.commands import SIGNER, free_port, run, wait_until
from testbed.env import Db, Env, make_env
from testbed.pg import PgServer
from testbed.process import running
from tests.harness import audit_events, ok, refused, rpc_error
from tests.tamper import (
    audit_fetch,
    audit_verify,
    edit_actor,
    fetched_size,
    restore_db,
    rewrite_log,
    save_db,
)
from tests.test_metrics import _scrape, _with_metrics

serving = contextlib.contextmanager(running)


def _counts(env: Env) -> tuple[int, ...]:
    return tuple(
        int(env.store.rows(f"SELECT count(*) FROM {t}")[0][0])  # noqa: S608
        for t in ("requests", "approvals", "audit_log", "checkpoints")
    )


def _head(env: Env, *extra: str) -> subprocess.CompletedProcess[str]:
    return run([*SIGNER, "audit", "head", "--config", str(env.config), *extra], check=False)


def _head_json(env: Env) -> dict[str, Any]:
    p = _head(env, "--json")
    assert p.returncode in (0, 1), p.stderr
    out: dict[str, Any] = json.loads(p.stdout)
    assert out["consistent"] is (p.returncode == 0)
    return out


def _on_checkpoints(env: Env, name: str, body: str) -> None:
    """A trigger of the test's own, run before each checkpoint is stored."""
    if env.store.backend == "sqlite":
        env.store.rows(f"CREATE TRIGGER {name} BEFORE INSERT ON checkpoints BEGIN {body}; END")
        return
    env.store.rows(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN {body}; RETURN NEW; END $$"
    )
    env.store.rows(
        f"CREATE TRIGGER {name} BEFORE INSERT ON checkpoints FOR EACH ROW EXECUTE FUNCTION {name}()"
    )


def _drop(env: Env, name: str, table: str) -> None:
    on = "" if env.store.backend == "sqlite" else f" ON {table}"
    env.store.rows(f"DROP TRIGGER {name}{on}")


# -- tampering while the server runs ---------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "rebuild", "reason", "phrase"),
    [
        (lambda rows: rows[:-3], False, ROLLBACK, "the database was rolled back or truncated"),
        (edit_actor(1), True, MISMATCH, "were changed, removed or reordered"),
    ],
    ids=["truncated", "rewritten"],
)
def test_a_tampered_log_stops_the_audit_key_with_a_named_reason(
    fresh_env: Env, edit: Callable[[Any], Any], rebuild: bool, reason: str, phrase: str
) -> None:
    """Creates and approvals fail UNAVAILABLE naming the cause; nothing is written; the
    refusals are counted and logged; `signer audit head` reports the same."""
    port = free_port()
    _with_metrics(fresh_env, f"127.0.0.1:{port}")
    with serving(fresh_env) as r:
        c = r.clients
        pending = c.create()
        c.create()
        assert _head(fresh_env).returncode == 0
        rewrite_log(fresh_env, edit, rebuild=rebuild)
        before = _counts(fresh_env)

        for call in (lambda: c.create(), lambda: c.approve("alice", pending)):
            err = rpc_error(call)
            assert err.code == grpc.StatusCode.UNAVAILABLE, err
            assert err.reason == reason and phrase in err.message, err
        assert _counts(fresh_env) == before
        assert c.get(pending.id).approvals == []  # reads are still served
        _, metrics = _scrape(port)
        assert metrics["signer_audit_head_refusals_total", ()] == 2
        assert "the audit key refused to sign a checkpoint" in r.server.output()
        status = _head_json(fresh_env)
        assert not status["consistent"] and status["reason"] == reason
        assert status["head"]["size"] == before[2] + (3 if reason == ROLLBACK else 0)
    assert _counts(fresh_env) == before


# -- an older copy of the database put back ----------------------------------------------


def test_a_restored_backup_is_refused_until_a_recorded_reset(
    fresh_env: Env, tmp_path: Path
) -> None:
    """The server will not start on an older copy; `audit head --reset` (token PIN,
    a reason) records audit.head_reset; auditors holding a later checkpoint see a fork."""
    env, auditor = fresh_env, tmp_path / "auditor"
    with serving(env) as r:
        r.clients.create()
    old = save_db(env, tmp_path / "old")
    with serving(env) as r:
        r.clients.create()
        n = fetched_size(ok(audit_fetch(env, auditor)))
    restore_db(env, old)
    before = _counts(env)

    p = run([*SIGNER, "serve", "--config", str(env.config)], check=False, timeout=60)
    assert p.returncode != 0
    assert "the database was rolled back or truncated" in " ".join(p.stderr.split())
    assert _counts(env) == before  # not even server.started

    p = _head(env)
    assert p.returncode == 1 and f"{ROLLBACK}:" in p.stderr, p.stdout + p.stderr
    assert f"token head: size {n}," in p.stdout
    assert _head(env, "--reset").returncode == 2  # a reset needs a reason
    why = "restored the nightly backup after disk loss; officers informed"
    p = _head(env, "--reset", "--reason", why)
    assert p.returncode == 0, p.stderr
    reset = audit_events(env)[-1]
    assert reset["event"] == "audit.head_reset" and reset["details"]["reason"] == why
    assert reset["details"]["previous_head"]["size"] == n
    assert reset["details"]["problem"] == ROLLBACK
    assert _head(env).returncode == 0
    assert _head(env, "--reset", "--reason", "again").returncode == 1  # nothing to reset

    with serving(env):  # the reset and server.started: n entries again, other ones
        refused(audit_fetch(env, auditor), f"fork: the server signed two different logs of {n}")
        fresh = tmp_path / "fresh"
        assert fetched_size(ok(audit_fetch(env, fresh))) == n
    verifier = str(env.profile("auditor").audit_verifier)
    assert "OK: " in ok(audit_verify(fresh, verifier))


# -- crashes in the middle of a commit ----------------------------------------------------


def test_a_kill_after_a_failed_release_leaves_a_server_that_starts(fresh_env: Env) -> None:
    """The checkpoint cannot be stored after its commit, then kill -9: on restart the
    stored log extends the head and the next checkpoint covers it."""
    env = fresh_env
    disk_full = (
        "SELECT RAISE(ABORT, 'disk full')"
        if env.store.backend == "sqlite"
        else "RAISE EXCEPTION 'disk full'"
    )
    with serving(env) as r:
        r.clients.create()
        _on_checkpoints(env, "no_cp", disk_full)
        err = rpc_error(lambda: r.clients.create())
        assert err.code == grpc.StatusCode.UNAVAILABLE and "disk full" in err.message, err
        r.server.kill()
    _drop(env, "no_cp", "checkpoints")
    entries = _counts(env)[2]
    [(latest,)] = env.store.rows("SELECT max(size) FROM checkpoints")
    assert latest < entries  # the last commit is durable but not yet covered
    assert _head_json(env)["consistent"]
    with serving(env) as r:
        r.clients.create()
        assert _counts(env)[2] == entries + 2
        assert env.store.rows("SELECT max(size) FROM checkpoints") == [(entries + 2,)]


_WAIT = 424242  # the advisory lock a test trigger waits on


@pytest.fixture
def pg_env(pg: PgServer, tmp_path: Path) -> Env:
    return make_env(tmp_path / "env", Db(pg.database(), pg.password_file))


@pytest.mark.parametrize(
    ("table", "trigger"),
    [
        (
            "audit_log",
            "CONSTRAINT TRIGGER hold AFTER INSERT ON audit_log DEFERRABLE INITIALLY DEFERRED",
        ),
        ("checkpoints", "TRIGGER hold BEFORE INSERT ON checkpoints"),
    ],
    ids=["during-commit", "during-release"],
)
def test_a_kill_in_the_middle_of_a_commit_does_not_brick_the_server(
    pg_env: Env, table: str, trigger: str
) -> None:
    """PostgreSQL holds the server inside its COMMIT (a deferred trigger), or inside the
    checkpoint's release after the token's head moved; kill -9 there; it starts again."""
    env = pg_env
    assert env.store.password_file is not None
    password = env.store.password_file.read_text().strip()
    with psycopg.connect(env.store.url, password=password, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (_WAIT,))
        env.store.rows(
            "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_advisory_lock({_WAIT}); PERFORM pg_advisory_unlock({_WAIT}); "
            "RETURN NEW; END $$"
        )
        failed: list[BaseException] = []
        with serving(env) as r:
            before = _counts(env)
            env.store.rows(f"CREATE {trigger} FOR EACH ROW EXECUTE FUNCTION hold()")

            def create() -> None:
                try:
                    r.clients.create()
                except (grpc.RpcError, RemoteError) as e:
                    failed.append(e)

            caller = threading.Thread(target=create)
            caller.start()
            wait_until(
                lambda: (
                    env.store.rows(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                        "AND objid = ? AND NOT granted",
                        _WAIT,
                    )
                    == [(1,)]
                )
            )
            r.server.kill()
            caller.join(timeout=30)
            assert not caller.is_alive() and failed
        holder.execute("SELECT pg_advisory_unlock(%s)", (_WAIT,))
    _drop(env, "hold", table)
    assert _head_json(env)["consistent"]
    with serving(env) as r:
        r.clients.create()
        entries = _counts(env)[2]
        assert entries > before[2]
        assert env.store.rows("SELECT max(size) FROM checkpoints") == [(entries,)]
