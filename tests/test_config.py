"""Server configuration: every mistake is a ConfigError naming the file and the dotted key.

A valid config is written into tmp_path (TLS files from DevCA, officers' keys
from approval_keys.generate, a 0600 PIN file); each case breaks one thing.
The token is never opened by load_config. Secrets (invariant 7) must never
appear in an error message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from signer.approval import files as approval_keys
from signer.errors import ConfigError
from signer.parsing import read_secret
from signer.server.config import Config, load_config
from signer.tls import DevCA, write_private

PIN = "pin-4242-very-secret"
OFFICERS = ("alice", "bob", "carol", "dave")


def _valid() -> dict[str, Any]:
    return {
        "server": {
            "listen": "127.0.0.1:7443",
            "tls_cert": "tls/server.pem",
            "tls_key": "tls/server.key",
            "client_ca": "tls/ca.pem",
            "max_wait": "60s",
        },
        "token": {
            "module": "/usr/lib/softhsm/libsofthsm2.so",
            "label": "signer-test",
            "pin_file": "secrets/token.pin",
        },
        "store": {"url": "sqlite:///signer.db"},
        "audit": {"key": "audit"},
        "log": {"format": "auto"},
        "identities": {
            "ci": ["requester"],
            "alice": ["approver"],
            "bob": ["approver"],
            "carol": ["approver", "requester"],
            "dave": ["approver"],
            "auditor": ["auditor"],
        },
        "approvers": {o: f"approvers/{o}.key.pub" for o in ("alice", "bob", "carol")},
        "keys": {
            "release": {
                "algorithm": "ecdsa-p256",
                "approvers": ["alice", "bob", "carol"],
                "threshold": 2,
                "requesters": ["ci", "carol"],
                "max_ttl": "1h",
            }
        },
    }


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory with TLS files, officers' keys and a 0600 PIN file (no config yet)."""
    ca = DevCA("test CA")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_bytes(ca.pem)
    cert, key = ca.issue("signer server", server_hosts=["127.0.0.1"])
    (tmp_path / "tls" / "server.pem").write_bytes(cert)
    write_private(tmp_path / "tls" / "server.key", key)
    for o in OFFICERS:
        approval_keys.generate(tmp_path / "approvers" / f"{o}.key")
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "approvers" / "ec.pub").write_bytes(
        ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    write_private(tmp_path / "secrets" / "token.pin", PIN.encode() + b"\n")
    return tmp_path


def _write(root: Path, cfg: dict[str, Any], name: str = "signer.toml") -> Path:
    path = root / name
    path.write_text(tomli_w.dumps(cfg))
    return path


def test_postgresql_store_config_loads(root: Path) -> None:
    """A postgresql:// URL with a password file and pool size; the password is read on demand."""
    cfg = _valid()
    cfg["store"] = {
        "url": "postgresql://signer@db.internal:5432/signer?sslmode=verify-full",
        "password_file": "db-password",
        "pool_size": 4,
    }
    (root / "db-password").write_text("correct horse\n")
    (root / "db-password").chmod(0o600)
    loaded = load_config(_write(root, cfg)).store
    assert (loaded.backend, loaded.pool_size, loaded.path) == ("postgresql", 4, None)
    assert loaded.password_file == (root / "db-password").resolve()
    assert loaded.read_password() == "correct horse"
    with pytest.raises(ConfigError, match="not a sqlite:/// URL"):
        _ = load_config(_write(root, cfg)).store_path
    (root / "db-password").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        loaded.read_password()


def test_valid_config_loads(root: Path) -> None:
    """The baseline config loads into the expected policy; the PIN is read only on demand."""
    cfg = load_config(_write(root, _valid()))
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


def _set(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        table = cfg
        for k in keys[:-1]:
            table = table[k]
        table[keys[-1]] = value

    return change


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


_KEY = ("keys", "release")
_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("threshold-above-n", _set(*_KEY, "threshold", value=4), "keys.release.threshold"),
    ("threshold-zero", _set(*_KEY, "threshold", value=0), "keys.release.threshold"),
    ("threshold-negative", _set(*_KEY, "threshold", value=-1), "keys.release.threshold"),
    ("threshold-string", _set(*_KEY, "threshold", value="2"), "keys.release.threshold"),
    ("threshold-bool", _set(*_KEY, "threshold", value=True), "keys.release.threshold"),
    ("threshold-missing", _drop(*_KEY, "threshold"), "keys.release.threshold"),
    ("unknown-role", _set("identities", "ci", value=["requester", "root"]), "identities.ci"),
    ("role-not-list", _set("identities", "ci", value="requester"), "identities.ci"),
    (
        "approver-without-key",
        _set(*_KEY, "approvers", value=["alice", "bob", "dave"]),
        "keys.release.approvers",
    ),
    (
        "approver-twice",
        _set(*_KEY, "approvers", value=["alice", "bob", "alice"]),
        "keys.release.approvers",
    ),
    (
        "approver-key-without-role",
        _set("approvers", "ci", value="approvers/dave.key.pub"),
        "approvers.ci",
    ),
    (
        "approver-key-missing",
        _set("approvers", "alice", value="approvers/x.pub"),
        "approvers.alice",
    ),
    ("approver-key-not-pem", _set("approvers", "alice", value="tls/server.key"), "approvers.alice"),
    (
        "approver-key-not-ed25519",
        _set("approvers", "alice", value="approvers/ec.pub"),
        "approvers.alice",
    ),
    (
        "requester-without-role",
        _set(*_KEY, "requesters", value=["ci", "bob"]),
        "keys.release.requesters",
    ),
    ("requester-unknown", _set(*_KEY, "requesters", value=["ghost"]), "keys.release.requesters"),
    ("unknown-algorithm", _set(*_KEY, "algorithm", value="dsa-1024"), "keys.release.algorithm"),
    (
        "bad-key-name",
        _set("keys", "bad name!", value=_valid()["keys"]["release"]),
        "keys.bad name!",
    ),
    (
        "key-name-newline",
        _set("keys", "release\n", value=_valid()["keys"]["release"]),
        "keys.release\n",
    ),
    ("max-ttl-words", _set(*_KEY, "max_ttl", value="1 hour"), "keys.release.max_ttl"),
    ("max-ttl-zero", _set(*_KEY, "max_ttl", value="0s"), "keys.release.max_ttl"),
    ("max-ttl-negative", _set(*_KEY, "max_ttl", value="-5m"), "keys.release.max_ttl"),
    ("max-wait-bad", _set("server", "max_wait", value="soon"), "server.max_wait"),
    ("pin-inline", _set("token", "pin", value=PIN), "token.pin"),
    (
        "pin-inline-only",
        _both(_drop("token", "pin_file"), _set("token", "pin", value=PIN)),
        "token.pin",
    ),
    ("pin-file-and-env", _set("token", "pin_env", value="SIGNER_PIN"), "token.pin_file"),
    ("pin-neither", _drop("token", "pin_file"), "token.pin_file"),
    ("store-mysql", _set("store", "url", value="mysql://db/signer"), "store.url"),
    (
        "store-password-in-url",
        _set("store", "url", value="postgresql://signer:hunter2@db/signer"),
        "store.url",
    ),
    (
        "store-bad-postgres-url",
        _set("store", "url", value="postgresql://db/x?nonsense=1"),
        "store.url",
    ),
    (
        "store-pool-size-zero",
        _set("store", value={"url": "postgresql://signer@db/signer", "pool_size": 0}),
        "store.pool_size",
    ),
    ("store-pool-size-on-sqlite", _set("store", "pool_size", value=4), "store.pool_size"),
    (
        "store-password-file-on-sqlite",
        _set("store", "password_file", value="db-password"),
        "store.password_file",
    ),
    ("store-bare-path", _set("store", "url", value="signer.db"), "store.url"),
    ("store-missing-url", _drop("store", "url"), "store.url"),
    ("tls-cert-missing", _set("server", "tls_cert", value="tls/nope.pem"), "server.tls_cert"),
    (
        "tls-key-missing",
        _set("server", "tls_key", value="/nonexistent/server.key"),
        "server.tls_key",
    ),
    ("client-ca-dir", _set("server", "client_ca", value="tls"), "server.client_ca"),
    ("listen-no-port", _set("server", "listen", value="localhost"), "server.listen"),
    ("listen-missing", _drop("server", "listen"), "server.listen"),
    ("message-size", _set("server", "max_message_bytes", value=10), "server.max_message_bytes"),
    ("audit-is-signing-key", _set("audit", "key", value="release"), "audit.key"),
    ("audit-missing", _drop("audit"), "audit"),
    ("server-missing", _drop("server"), "server"),
    ("server-not-table", _set("server", value="127.0.0.1:7443"), "server"),
    ("log-format", _set("log", "format", value="xml"), "log.format"),
    ("access-method", _set("access", value={"SignerService": ["admin"]}), "access.SignerService"),
    (
        "access-role",
        _set("access", value={"/signer.v1.AuditService/ListAuditEvents": ["boss"]}),
        "access./signer.v1.AuditService/ListAuditEvents",
    ),
]


@pytest.mark.parametrize(("change", "key"), [c[1:] for c in _CASES], ids=[c[0] for c in _CASES])
def test_broken_config_names_file_and_key(
    root: Path, change: Callable[[dict[str, Any]], None], key: str
) -> None:
    """One mistake gives a ConfigError starting `FILE: dotted.key:`, without the PIN."""
    cfg = _valid()
    change(cfg)
    path = _write(root, cfg)
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
    path = _write(root, _valid())
    monkeypatch.chdir("/")
    assert load_config(path).token.pin_file == (root / "secrets" / "token.pin").resolve()


# -- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_read_secret_refuses_shared_file(tmp_path: Path, mode: int) -> None:
    """A PIN file readable by group or others is refused with a chmod hint, value unseen."""
    f = tmp_path / "token.pin"
    f.write_text(PIN)
    f.chmod(mode)
    with pytest.raises(ConfigError) as e:
        read_secret(f, None, "token PIN")
    assert f"chmod 600 {f}" in str(e.value)
    assert PIN not in str(e.value)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_read_secret_reads_private_file(tmp_path: Path, mode: int) -> None:
    """A 0600 or 0400 file is read and stripped of surrounding whitespace."""
    f = tmp_path / "token.pin"
    f.write_text(f"  {PIN}\n")
    f.chmod(mode)
    assert read_secret(f, None, "token PIN") == PIN


def test_read_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment variable supplies the secret."""
    monkeypatch.setenv("SIGNER_TEST_PIN", PIN)
    assert read_secret(None, "SIGNER_TEST_PIN", "token PIN") == PIN


def _secret_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.delenv("SIGNER_TEST_PIN", raising=False)
    monkeypatch.setenv("SIGNER_BLANK_PIN", "   ")
    empty = tmp_path / "empty.pin"
    write_private(empty, b"\n")
    shared = tmp_path / "shared.pin"
    shared.write_text(PIN)
    shared.chmod(0o644)
    calls: list[tuple[Path | None, str | None]] = [
        (None, "SIGNER_TEST_PIN"),
        (None, "SIGNER_BLANK_PIN"),
        (None, None),
        (tmp_path / "missing.pin", None),
        (tmp_path, None),
        (empty, None),
        (shared, None),
    ]
    out = []
    for file, env in calls:
        with pytest.raises(ConfigError) as e:
            read_secret(file, env, "token PIN")
        out.append(str(e.value))
    return out


def test_read_secret_errors_are_actionable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing env var, no source, unreadable or empty file: each error says which."""
    missing_env, blank_env, none, missing, directory, empty, shared = _secret_errors(
        tmp_path, monkeypatch
    )
    assert "SIGNER_TEST_PIN" in missing_env and "not set" in missing_env
    assert "SIGNER_BLANK_PIN" in blank_env
    assert "no token PIN configured" in none
    assert str(tmp_path / "missing.pin") in missing and "cannot read" in missing
    assert "cannot read" in directory
    assert "empty" in empty
    assert "chmod 600" in shared


def test_secret_never_in_error_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No read_secret error contains the secret's value."""
    for message in _secret_errors(tmp_path, monkeypatch):
        assert PIN not in message and "4242" not in message


def test_pin_env_config(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pin_env names a variable; the PIN comes from it, and a missing one is an error."""
    cfg = _valid()
    del cfg["token"]["pin_file"]
    cfg["token"]["pin_env"] = "SIGNER_TEST_PIN"
    loaded = load_config(_write(root, cfg))
    monkeypatch.delenv("SIGNER_TEST_PIN", raising=False)
    with pytest.raises(ConfigError, match="SIGNER_TEST_PIN"):
        loaded.token.read_pin()
    monkeypatch.setenv("SIGNER_TEST_PIN", PIN)
    assert loaded.token.read_pin() == PIN


# -- policy hash -----------------------------------------------------------------------


def _hash(root: Path, change: Callable[[dict[str, Any]], None] | None = None) -> str:
    cfg = _valid()
    if change is not None:
        change(cfg)
    return load_config(_write(root, cfg, f"c{len(os.listdir(root))}.toml")).policy_hash


def test_policy_hash_is_stable(root: Path) -> None:
    """The same policy hashes the same, across loads and non-policy settings."""
    base = _hash(root)
    assert len(base) == 64 and base == _hash(root)
    for change in (
        _set("server", "listen", value="0.0.0.0:9999"),
        _set("log", "format", value="json"),
        _set("token", "label", value="other"),
        _set("server", "max_wait", value="30s"),
        _set(*_KEY, "approvers", value=["carol", "alice", "bob"]),  # order is not policy
        _set(*_KEY, "requesters", value=["carol", "ci"]),
    ):
        assert _hash(root, change) == base


@pytest.mark.parametrize(
    "change",
    [
        _set(*_KEY, "threshold", value=3),
        _set(*_KEY, "approvers", value=["alice", "bob"]),
        _set(*_KEY, "requesters", value=["ci"]),
        _set(*_KEY, "max_ttl", value="2h"),
        _set(*_KEY, "algorithm", value="ecdsa-p384"),
        _set("approvers", "alice", value="approvers/dave.key.pub"),
        _set("identities", "auditor", value=["auditor", "admin"]),
        _set("audit", "key", value="audit2"),
        _set("access", value={"/signer.v1.AuditService/ListAuditEvents": ["*"]}),
        _set(
            "keys",
            "staging",
            value={"approvers": ["alice"], "threshold": 1, "requesters": ["ci"]},
        ),
    ],
    ids=[
        "threshold",
        "approvers",
        "requesters",
        "max_ttl",
        "algorithm",
        "approver-key",
        "roles",
        "audit-key",
        "access",
        "new-key",
    ],
)
def test_policy_hash_changes_with_policy(
    root: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    """Any change to who may request, approve or read changes the policy hash."""
    assert _hash(root, change) != _hash(root)


def test_config_is_frozen(root: Path) -> None:
    """The loaded config cannot be changed after validation."""
    cfg: Config = load_config(_write(root, _valid()))
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
    cfg = _valid()
    target = cfg
    for part in table:
        target = target[part]
    target[key] = ["x"] if key == "requester" else ("x" if table else {})
    with pytest.raises(ConfigError) as e:
        load_config(_write(root, cfg))
    dotted = ".".join((*table, key))
    assert f": {dotted}: unknown setting" in str(e.value)
    assert repr(suggestion) in str(e.value)
