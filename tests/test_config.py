"""Server configuration: every mistake is a ConfigError naming the file and the dotted key.

A valid config is written into tmp_path (tests/config_files.py: TLS files from
DevCA, officers' keys from approval_keys.generate, a 0600 PIN file); each case
breaks one thing. The token is never opened by load_config. Secrets
(invariant 7) must never appear in an error message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signer.errors import ConfigError
from signer.server.config import Config, load_config
from tests.config_files import PIN, RELEASE, set_value, valid_config, write_config
from tests.config_files import root as root  # a fixture


def test_postgresql_store_config_loads(root: Path) -> None:
    """A postgresql:// URL with a password file and pool size; the password is read on demand."""
    cfg = valid_config()
    cfg["store"] = {
        "url": "postgresql://signer@db.internal:5432/signer?sslmode=verify-full",
        "password_file": "db-password",
        "pool_size": 4,
    }
    (root / "db-password").write_text("correct horse\n")
    (root / "db-password").chmod(0o600)
    loaded = load_config(write_config(root, cfg)).store
    assert (loaded.backend, loaded.pool_size, loaded.path) == ("postgresql", 4, None)
    assert loaded.password_file == (root / "db-password").resolve()
    assert loaded.read_password() == "correct horse"
    with pytest.raises(ConfigError, match="not a sqlite:/// URL"):
        _ = load_config(write_config(root, cfg)).store_path
    (root / "db-password").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        loaded.read_password()


def test_valid_config_loads(root: Path) -> None:
    """The baseline config loads into the expected policy; the PIN is read only on demand."""
    cfg = load_config(write_config(root, valid_config()))
    policy = cfg.keys["release"]
    assert (policy.threshold, policy.approvers, policy.requesters) == (
        2,
        ("alice", "bob", "carol"),
        ("ci", "carol"),
    )
    assert policy.max_ttl.total_seconds() == 3600
    assert cfg.store_path == (root / "signer.db").resolve()
    assert cfg.server.tls_cert == (root / "tls" / "server.pem").resolve()
    assert set(cfg.approver_keys) == {"alice", "bob", "carol"}
    assert cfg.roles_of("carol") == {"approver", "requester"} and cfg.roles_of("x") == set()
    assert cfg.token.read_pin() == PIN


def _drop(*keys: str) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        table = cfg
        for k in keys[:-1]:
            table = table[k]
        del table[keys[-1]]

    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        for c in changes:
            c(cfg)

    return change


_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("threshold-above-n", set_value(*RELEASE, "threshold", value=4), "keys.release.threshold"),
    ("threshold-zero", set_value(*RELEASE, "threshold", value=0), "keys.release.threshold"),
    ("threshold-negative", set_value(*RELEASE, "threshold", value=-1), "keys.release.threshold"),
    ("threshold-string", set_value(*RELEASE, "threshold", value="2"), "keys.release.threshold"),
    ("threshold-bool", set_value(*RELEASE, "threshold", value=True), "keys.release.threshold"),
    ("threshold-missing", _drop(*RELEASE, "threshold"), "keys.release.threshold"),
    ("unknown-role", set_value("identities", "ci", value=["requester", "root"]), "identities.ci"),
    ("role-not-list", set_value("identities", "ci", value="requester"), "identities.ci"),
    (
        "approver-without-key",
        set_value(*RELEASE, "approvers", value=["alice", "bob", "dave"]),
        "keys.release.approvers",
    ),
    (
        "approver-twice",
        set_value(*RELEASE, "approvers", value=["alice", "bob", "alice"]),
        "keys.release.approvers",
    ),
    (
        "approver-key-without-role",
        set_value("approvers", "ci", value="approvers/dave.key.pub"),
        "approvers.ci",
    ),
    (
        "approver-key-missing",
        set_value("approvers", "alice", value="approvers/x.pub"),
        "approvers.alice",
    ),
    (
        "approver-key-not-pem",
        set_value("approvers", "alice", value="tls/server.key"),
        "approvers.alice",
    ),
    (
        "approver-key-of-no-kind",
        set_value("approvers", "alice", value="approvers/ec.pub"),
        "approvers.alice",
    ),
    (
        "requester-without-role",
        set_value(*RELEASE, "requesters", value=["ci", "bob"]),
        "keys.release.requesters",
    ),
    (
        "requester-unknown",
        set_value(*RELEASE, "requesters", value=["ghost"]),
        "keys.release.requesters",
    ),
    (
        "unknown-algorithm",
        set_value(*RELEASE, "algorithm", value="dsa-1024"),
        "keys.release.algorithm",
    ),
    (
        "bad-key-name",
        set_value("keys", "bad name!", value=valid_config()["keys"]["release"]),
        "keys.bad name!",
    ),
    (
        "key-name-newline",
        set_value("keys", "release\n", value=valid_config()["keys"]["release"]),
        "keys.release\n",
    ),
    ("max-ttl-words", set_value(*RELEASE, "max_ttl", value="1 hour"), "keys.release.max_ttl"),
    ("max-ttl-zero", set_value(*RELEASE, "max_ttl", value="0s"), "keys.release.max_ttl"),
    ("max-ttl-negative", set_value(*RELEASE, "max_ttl", value="-5m"), "keys.release.max_ttl"),
    ("max-wait-bad", set_value("server", "max_wait", value="soon"), "server.max_wait"),
    ("pin-inline", set_value("token", "pin", value=PIN), "token.pin"),
    (
        "pin-inline-only",
        _both(_drop("token", "pin_file"), set_value("token", "pin", value=PIN)),
        "token.pin",
    ),
    ("pin-file-and-env", set_value("token", "pin_env", value="SIGNER_PIN"), "token.pin_file"),
    ("pin-neither", _drop("token", "pin_file"), "token.pin_file"),
    ("store-mysql", set_value("store", "url", value="mysql://db/signer"), "store.url"),
    (
        "store-password-in-url",
        set_value("store", "url", value="postgresql://signer:hunter2@db/signer"),
        "store.url",
    ),
    (
        "store-bad-postgres-url",
        set_value("store", "url", value="postgresql://db/x?nonsense=1"),
        "store.url",
    ),
    (
        "store-pool-size-zero",
        set_value("store", value={"url": "postgresql://signer@db/signer", "pool_size": 0}),
        "store.pool_size",
    ),
    ("store-pool-size-on-sqlite", set_value("store", "pool_size", value=4), "store.pool_size"),
    (
        "store-password-file-on-sqlite",
        set_value("store", "password_file", value="db-password"),
        "store.password_file",
    ),
    ("store-bare-path", set_value("store", "url", value="signer.db"), "store.url"),
    ("store-missing-url", _drop("store", "url"), "store.url"),
    ("tls-cert-missing", set_value("server", "tls_cert", value="tls/nope.pem"), "server.tls_cert"),
    (
        "tls-key-missing",
        set_value("server", "tls_key", value="/nonexistent/server.key"),
        "server.tls_key",
    ),
    ("client-ca-dir", set_value("server", "client_ca", value="tls"), "server.client_ca"),
    ("listen-no-port", set_value("server", "listen", value="localhost"), "server.listen"),
    ("listen-missing", _drop("server", "listen"), "server.listen"),
    (
        "message-size",
        set_value("server", "max_message_bytes", value=10),
        "server.max_message_bytes",
    ),
    ("audit-is-signing-key", set_value("audit", "key", value="release"), "audit.key"),
    ("audit-missing", _drop("audit"), "audit"),
    ("server-missing", _drop("server"), "server"),
    ("server-not-table", set_value("server", value="127.0.0.1:7443"), "server"),
    ("log-format", set_value("log", "format", value="xml"), "log.format"),
    ("key-formats-unknown", set_value(*RELEASE, "formats", value=["gpg"]), "keys.release.formats"),
    ("key-formats-empty", set_value(*RELEASE, "formats", value=[]), "keys.release.formats"),
    (
        "key-formats-twice",
        set_value(*RELEASE, "formats", value=["ssh", "ssh"]),
        "keys.release.formats",
    ),
    (
        "access-method",
        set_value("access", value={"SignerService": ["admin"]}),
        "access.SignerService",
    ),
    (
        "access-role",
        set_value("access", value={"/signer.v1.AuditService/ListAuditEvents": ["boss"]}),
        "access./signer.v1.AuditService/ListAuditEvents",
    ),
]


@pytest.mark.parametrize(("change", "key"), [c[1:] for c in _CASES], ids=[c[0] for c in _CASES])
def test_broken_config_names_file_and_key(
    root: Path, change: Callable[[dict[str, Any]], None], key: str
) -> None:
    """One mistake gives a ConfigError starting `FILE: dotted.key:`, without the PIN."""
    cfg = valid_config()
    change(cfg)
    path = write_config(root, cfg)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path.resolve()}: {key}: "), message
    assert len(message) > len(f"{path.resolve()}: {key}: ") + 10  # says what to fix
    assert PIN not in message and "4242" not in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "text",
    [
        "[server\nlisten = 1",
        f"[token]\npin = {PIN}\n",
        f'[token]\npin_file = "x"\npin_file = "{PIN}"\n',
        '[server]\nlisten = "a"\n[server]\n',
        "= 3",
        "\x00",
    ],
    ids=["unclosed-table", "bare-pin", "duplicate-key", "duplicate-table", "no-key", "nul"],
)
def test_invalid_toml_names_the_file(root: Path, text: str) -> None:
    """Unparsable TOML is a ConfigError naming the file, never echoing its content."""
    path = root / "signer.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path.resolve()}: not valid TOML")
    assert PIN not in str(e.value) and "4242" not in str(e.value)


def test_missing_config_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it and how to make one."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "signer init" in str(e.value)


def test_relative_paths_resolve_against_the_config_file(root: Path, monkeypatch: Any) -> None:
    """Relative paths are relative to the config file, not to the working directory."""
    path = write_config(root, valid_config())
    monkeypatch.chdir("/")
    assert load_config(path).token.pin_file == (root / "secrets" / "token.pin").resolve()


def test_key_formats_load_as_payload_types(root: Path) -> None:
    """`formats = ["ssh", "digests"]` keeps a key to SSH requests and plain digests."""
    cfg = valid_config()
    set_value(*RELEASE, "formats", value=["ssh", "digests"])(cfg)
    policy = load_config(write_config(root, cfg)).keys["release"]
    assert policy.payload_types == ("application/vnd.signer.sshsig.v1+json", "")
    assert load_config(write_config(root, valid_config())).keys["release"].payload_types == ()


def test_config_is_frozen(root: Path) -> None:
    """The loaded config cannot be changed after validation."""
    cfg: Config = load_config(write_config(root, valid_config()))
    with pytest.raises(AttributeError):
        cfg.audit_key = "release"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("table", "key", "suggestion"),
    [
        (("keys", "release"), "requester", "requesters"),
        (("server",), "listn", "listen"),
        (("token",), "pinfile", "pin_file"),
        ((), "acess", "access"),
    ],
)
def test_unknown_settings_are_refused(
    root: Path, table: tuple[str, ...], key: str, suggestion: str
) -> None:
    """A misspelt setting is an error naming it and the likely intended key, not ignored."""
    cfg = valid_config()
    target = cfg
    for part in table:
        target = target[part]
    target[key] = ["x"] if key == "requester" else ("x" if table else {})
    with pytest.raises(ConfigError) as e:
        load_config(write_config(root, cfg))
    dotted = ".".join((*table, key))
    assert f": {dotted}: unknown setting" in str(e.value)
    assert repr(suggestion) in str(e.value)
