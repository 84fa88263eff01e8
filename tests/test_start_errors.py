"""Starting and stopping `signer serve`: configuration errors exit 2, naming the cause;
systemd is told when the server is ready and when it stops; the stop is logged.

A token label that names no token, and a database that cannot be opened (the
driver's own cause, once, without its per-attempt warnings), exit 2 like every
other configuration error. With $NOTIFY_SOCKET set (a `Type=notify` unit), the
server sends READY=1 once it serves and STOPPING=1 on SIGTERM, then logs a
clean stop and exits 0. A `signer init` that fails half-way leaves nothing behind.
`signer serve --check` says what it found, or the error a start would give, and
writes nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from testbed.commands import SIGNER, free_port, run
from testbed.env import Env


def _serve(env: Env) -> subprocess.CompletedProcess[str]:
    return run([*SIGNER, "serve", "--config", str(env.config)], check=False, timeout=60)


@pytest.mark.sqlite_only("the token is what is wrong")
def test_a_token_label_that_names_no_token_exits_2(fresh_env: Env) -> None:
    """token.label of no token: exit 2, saying which label and what to check."""
    text = fresh_env.config.read_text()
    fresh_env.config.write_text(
        re.sub(r'(?m)^label = ".*"$', 'label = "no-such-token"', text, count=1)
    )
    p = _serve(fresh_env)
    assert p.returncode == 2, p.stderr
    assert "no token labelled 'no-such-token'" in p.stderr and "check token.label" in p.stderr


def test_a_database_that_refuses_the_server_exits_2_naming_why(
    fresh_env: Env, backend: str
) -> None:
    """PostgreSQL without the password: exit 2 with the server's reason, said once,
    without the connection pool's warnings; a SQLite path that is a directory: exit 2."""
    text = fresh_env.config.read_text()
    if backend == "postgresql":
        fresh_env.config.write_text(re.sub(r"(?m)^password_file = .*$", "", text))
        said = "no password supplied"
    else:
        fresh_env.config.write_text(
            re.sub(r'(?m)^url = ".*"$', 'url = "sqlite:///tls"', text, count=1)
        )
        said = "cannot open database"
    p = _serve(fresh_env)
    assert p.returncode == 2, p.stderr
    assert said in p.stderr
    assert "error connecting in" not in p.stderr  # the pool's per-attempt noise


@pytest.mark.sqlite_only("what is checked is the service manager's protocol")
def test_systemd_is_told_ready_and_stopping_and_the_stop_is_logged(
    fresh_env: Env, tmp_path: Path
) -> None:
    """READY=1 once serving, STOPPING=1 on SIGTERM, then a clean stop logged and exit 0."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.settimeout(60)
        with subprocess.Popen(
            [*SIGNER, "serve", "--config", str(fresh_env.config)],
            env={**os.environ, "NOTIFY_SOCKET": str(path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            ready = manager.recv(4096).decode()
            assert ready.splitlines()[0] == "READY=1"
            assert "STATUS=listening on" in ready
            proc.send_signal(signal.SIGTERM)
            assert manager.recv(4096).decode() == "STOPPING=1"
            _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert logged[-1]["event"] == "stopped" and logged[-1]["clean"] is True


@pytest.mark.sqlite_only("the database named is one that cannot be reached")
def test_a_failed_init_leaves_nothing_behind(tmp_path: Path) -> None:
    """`signer init` that fails half-way (its database cannot be opened) exits 2 and
    removes what it made, in a new directory or an empty one; the next run succeeds."""
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/signer"
    new, empty = tmp_path / "new" / "env", tmp_path / "empty"
    empty.mkdir()
    for target in (new, empty):
        p = run([*SIGNER, "init", str(target), "--store-url", unreachable], check=False)
        assert p.returncode == 2, p.stderr
        assert "cannot open database" in p.stderr
    assert not new.exists() and not any(empty.iterdir())
    run([*SIGNER, "init", str(empty), "--listen", f"127.0.0.1:{free_port()}"])
    assert (empty / "signer.toml").is_file()


def test_serve_check_says_what_it_found_and_writes_nothing(fresh_env: Env) -> None:
    """`signer serve --check` on a good config: exit 0, a line for the TLS files, the
    token and its keys, the store and the policy, and not one audit entry written; on a
    config whose policy the officers did not approve: exit 2 saying so, as a start would."""
    run([*SIGNER, "serve", "--config", str(fresh_env.config), "--check"])  # the store made
    before = fresh_env.store.rows("SELECT count(*) FROM audit_log")
    p = run([*SIGNER, "serve", "--config", str(fresh_env.config), "--check"])
    lines = p.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["config", "TLS:", "token", "store", "policy:"]
    assert "release (ecdsa-p256)" in lines[2] and "version 1" in lines[4]
    assert fresh_env.store.rows("SELECT count(*) FROM audit_log") == before
    as_json = run([*SIGNER, "serve", "--config", str(fresh_env.config), "--check", "--json"])
    assert json.loads(as_json.stdout) == {"ok": True, "checked": [line[4:] for line in lines]}
    generate = ["keys", "generate", "--name", "extra", "--algorithm", "ecdsa-p384", "--json"]
    made = run([*SIGNER, *generate, "--config", str(fresh_env.config)])
    generated = json.loads(made.stdout)
    assert generated["name"] == "extra" and generated["algorithm"] == "ecdsa-p384"
    assert len(generated["key_id"]) == 64
    text = fresh_env.config.read_text()
    fresh_env.config.write_text(
        re.sub(r'key_id = "[0-9a-f]{64}"', 'key_id = "' + "ab" * 32 + '"', text, count=1)
    )
    p = _serve_check(fresh_env)
    assert p.returncode == 2 and "is not version 1 in force" in p.stderr, p.stderr


def _serve_check(env: Env) -> subprocess.CompletedProcess[str]:
    return run([*SIGNER, "serve", "--config", str(env.config), "--check"], check=False)


@pytest.mark.sqlite_only("the SQLite file itself is what is checked")
def test_serve_check_neither_creates_nor_migrates_the_database(fresh_env: Env) -> None:
    """A database a start would create, or migrate, is reported by --check and left as
    it is: no file made, no migration applied."""
    text = fresh_env.config.read_text()
    missing = fresh_env.root / "missing.db"
    other = fresh_env.root / "other.toml"
    other.write_text(re.sub(r'(?m)^url = ".*"$', 'url = "sqlite:///missing.db"', text, count=1))
    p = run([*SIGNER, "serve", "--config", str(other), "--check"], check=False)
    assert p.returncode == 2 and "does not exist (a start creates it" in p.stderr, p.stderr
    assert not missing.exists()
    latest = fresh_env.store.rows("SELECT max(version) FROM schema_version")[0][0]
    fresh_env.store.rows("DELETE FROM schema_version WHERE version = ?", latest)
    p = _serve_check(fresh_env)
    assert p.returncode == 2 and f"older than this server's {latest}" in p.stderr, p.stderr
    assert fresh_env.store.rows("SELECT max(version) FROM schema_version") == [(latest - 1,)]


def test_init_cleanup_leaves_a_directory_put_in_its_place(tmp_path: Path) -> None:
    """The cleanup of a failed init removes nothing if the directory it made is no
    longer the one at its path (another directory, or a link, put there meanwhile)."""
    from signer.server.devenv import _clean

    made = tmp_path / "made"
    made.mkdir()
    made_stat = os.stat(made, follow_symlinks=False)
    made.rename(tmp_path / "moved")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    made.symlink_to(victim)
    _clean(made, True, made_stat)
    _clean(made, False, made_stat)
    assert (victim / "keep").read_text() == "keep"
