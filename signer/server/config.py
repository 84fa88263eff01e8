"""Server configuration: one TOML file, validated once into frozen dataclasses.

Every error names the file, the key and the fix (exit code 2 at the CLI).
Secrets (the token PIN) are never in the file itself: only the path of a
0600 file or the name of an environment variable (invariant 7). The loaded
policy is hashed (`policy_hash`) and that hash goes into the audit log at
start-up (docs/architecture.md §4).

This module holds the dataclasses, `load_config` and the `[server]`, `[token]`
and `[store]` tables; the policy tables (identities, approvers, OIDC issuers,
keys and their claim rules, access) are parsed in `signer.server.policy_config`.
`load_token_store_config` reads only `[token]`, `[store]` and `[audit]`: what the
operator's commands that work on the token and the store alone need, so the
first keys can be generated before the policy that pins them is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from signer.approval.keys import ApprovalKey
from signer.core.alerts import AlertRules
from signer.core.policy import KeyPolicy, Revocation
from signer.encoding import canonical_json
from signer.errors import ConfigError
from signer.parsing import parse_address, read_secret
from signer.server._config_reader import _SECOND, _duration_of, _Reader
from signer.server.notify_config import NotifyConfig, alert_rules, notify_config
from signer.server.policy_config import (
    IssuerConfig,
    _access,
    _approver_keys,
    _file_sha256,
    _identities,
    _issuers,
    _keys,
    _policy_officers,
    _record_rule_claims,
    _revoked,
)
from signer.text import KEY_NAME

__all__ = [
    "Config",
    "ServerConfig",
    "StoreConfig",
    "TokenConfig",
    "TokenStoreConfig",
    "load_config",
    "load_token_store_config",
]


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    max_message_bytes: int = 4 * 1024 * 1024
    max_wait: dt.timedelta = dt.timedelta(seconds=60)
    workers: int = 64
    message_timeout: dt.timedelta = dt.timedelta(seconds=10)
    oidc_listen: str | None = None  # server-authenticated TLS port for OIDC requesters
    metrics_listen: str | None = None  # plain-HTTP Prometheus endpoint; off when None


@dataclass(frozen=True)
class TokenConfig:
    module: str
    label: str
    pin_file: Path | None
    pin_env: str | None
    softhsm2_conf: Path | None = None

    def read_pin(self) -> str:
        return read_secret(self.pin_file, self.pin_env, "token PIN")

    def apply_environment(self) -> None:
        """Point SoftHSM at its config before the module is loaded."""
        if self.softhsm2_conf is not None:
            os.environ["SOFTHSM2_CONF"] = str(self.softhsm2_conf)


@dataclass(frozen=True)
class StoreConfig:
    """Where requests, approvals and the audit log live: one SQLite file or PostgreSQL."""

    url: str
    path: Path | None = None  # set for sqlite:///PATH
    password_file: Path | None = None  # PostgreSQL only; never in the URL
    pool_size: int = 8

    @property
    def backend(self) -> str:
        return "sqlite" if self.path is not None else "postgresql"

    def read_password(self) -> str | None:
        if self.password_file is None:
            return None
        return read_secret(self.password_file, None, "database password")


@dataclass(frozen=True)
class TokenStoreConfig:
    """The parts of a server config that `signer keys generate`, `signer keys list` and
    `signer audit verifier` read: the token, the store and the audit key (the same fields
    as `Config`'s)."""

    path: Path
    token: TokenConfig
    store: StoreConfig
    audit_key: str
    audit_origin: str


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    token: TokenConfig
    store: StoreConfig
    audit_key: str
    audit_origin: str
    identities: Mapping[str, frozenset[str]]
    approver_keys: Mapping[str, ApprovalKey]
    keys: Mapping[str, KeyPolicy]
    access: Mapping[str, frozenset[str]] = field(default_factory=dict)
    log_format: str = "auto"
    issuers: Mapping[str, IssuerConfig] = field(default_factory=dict)
    policy_officers: tuple[str, ...] = ()
    policy_threshold: int = 1
    client_ca_sha256: str = ""  # the client CA's contents: who can be any mTLS identity
    revoked: tuple[Revocation, ...] = ()  # signing keys no longer trusted, and since when
    notify: NotifyConfig | None = None  # the webhooks told of events (no part of the policy)
    alerts: AlertRules | None = None  # what is unusual (no part of the policy either)

    @property
    def store_path(self) -> Path:
        """The SQLite file (tools that only work on the embedded store)."""
        if self.store.path is None:
            raise ConfigError(f"{self.path}: store.url is not a sqlite:/// URL")
        return self.store.path

    def roles_of(self, identity: str) -> frozenset[str]:
        return self.identities.get(identity, frozenset())

    def with_metrics_listen(self, address: str) -> Config:
        """This config with the metrics endpoint at `address` (`--metrics-listen`)."""
        try:
            parse_address(address)
        except ValueError as e:
            raise ConfigError(f"--metrics-listen: {e}") from None
        if address in (self.server.listen, self.server.oidc_listen):
            raise ConfigError(f"--metrics-listen: {address!r} is already a gRPC address")
        server = dataclasses.replace(self.server, metrics_listen=address)
        return dataclasses.replace(self, server=server)

    @property
    def policy_document(self) -> dict[str, Any]:
        """The policy in force: keys, identities, approver keys (each as its kind records
        it, `ApprovalKey.policy_value`: an Ed25519 key as raw hex), access rules.

        Recorded whole in the audit log at start-up, so an auditor can check every
        signature's quorum offline under the policy that was in force.
        """
        approver_keys = {name: key.policy_value() for name, key in self.approver_keys.items()}
        policy = {
            "keys": {n: p.as_dict() for n, p in self.keys.items()},
            "identities": {i: sorted(r) for i, r in self.identities.items()},
            "approver_keys": approver_keys,
            "access": {m: sorted(r) for m, r in self.access.items()},
            "audit_key": self.audit_key,
            "oidc": {n: i.as_dict() for n, i in sorted(self.issuers.items())},
        }
        if self.client_ca_sha256:  # absent from policies recorded before the chain
            policy["tls"] = {"client_ca_sha256": self.client_ca_sha256}
        if self.revoked:  # absent while no key has been revoked
            policy["revoked"] = [r.as_dict() for r in self.revoked]
        if self.policy_officers:  # absent from policies recorded before the chain
            policy["policy"] = {
                "officers": list(self.policy_officers),
                "threshold": self.policy_threshold,
            }
        return policy

    @property
    def policy_hash(self) -> str:
        """SHA-256 over the canonical policy document."""
        return hashlib.sha256(canonical_json(self.policy_document)).hexdigest()


_TABLES = (
    "server",
    "token",
    "store",
    "audit",
    "log",
    "identities",
    "approvers",
    "keys",
    "access",
    "oidc",
    "policy",
    "revoked",
    "notify",
    "alerts",
)


def _read(path: Path) -> tuple[Path, dict[str, Any], _Reader]:
    """The file's resolved path, its TOML and a reader of its top level (unknown tables
    refused)."""
    path = path.resolve()
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; create one with `signer init`") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    top = _Reader(path, raw, "")
    top.only(*_TABLES)
    return path, raw, top


def load_token_store_config(path: Path) -> TokenStoreConfig:
    """Read and validate only `[token]`, `[store]` and `[audit]` of the server config.

    Generating a key, listing the token's keys and printing the audit verifier need
    nothing else, and the first keys come before the policy can be written (each key of
    the policy pins its `key_id`): a file with only these three tables is enough. The
    other tables may be there; they are not read (`signer serve --check` checks them)."""
    path, raw, top = _read(path)
    token = _token(top.sub("token"))
    store = _store(top.sub("store"))
    keys = raw.get("keys")
    audit_key, audit_origin = _audit(top, keys if isinstance(keys, dict) else {})
    return TokenStoreConfig(path, token, store, audit_key, audit_origin)


def load_config(path: Path) -> Config:
    """Read and validate the server config; ConfigError names key and fix."""
    path, raw, top = _read(path)
    identities = _identities(top.sub("identities"))
    approver_keys = _approver_keys(top.sub("approvers"), identities)
    issuers = _issuers(top.sub("oidc", required=False), approver_keys)
    keys = _keys(top.sub("keys"), identities, approver_keys, issuers)
    server = _server(top.sub("server"))
    if issuers and server.oidc_listen is None:
        raise ConfigError(
            f"{path}: server.oidc_listen: missing; OIDC requesters need their own port "
            '(server-authenticated TLS), e.g. oidc_listen = "127.0.0.1:7444"'
        )
    if server.oidc_listen is not None and not issuers:
        raise ConfigError(f"{path}: server.oidc_listen is set but no [oidc.NAME] issuer is")
    issuers = {
        n: _record_rule_claims(i, [r for p in keys.values() for r in p.oidc if r.issuer == n])
        for n, i in issuers.items()
    }
    signing_ids = {p.key_id: n for n, p in keys.items() if p.key_id}
    for officer, key in approver_keys.items():
        if key.key_id in signing_ids:
            raise top.sub("approvers").error(
                officer,
                f"is the public key of signing key {signing_ids[key.key_id]!r}; an officer's "
                "approval key never lives in the token that signs (whoever holds its PIN "
                "could approve)",
            )
    officers, officers_threshold = _policy_officers(top.sub("policy"), approver_keys)
    audit_key, audit_origin = _audit(top, keys)
    log = top.sub("log", required=False)
    log.only("format")
    log_format = log.get("format", str, "auto")
    if log_format not in ("auto", "json", "console"):
        raise log.error("format", "must be auto, json or console")
    return Config(
        path=path,
        server=server,
        token=_token(top.sub("token")),
        store=_store(top.sub("store")),
        audit_key=audit_key,
        audit_origin=audit_origin,
        identities=identities,
        approver_keys=approver_keys,
        keys=keys,
        access=_access(top.sub("access", required=False)),
        log_format=log_format,
        issuers=issuers,
        policy_officers=officers,
        policy_threshold=officers_threshold,
        client_ca_sha256=_file_sha256(top.sub("server"), "client_ca", server.client_ca),
        revoked=_revoked(path, raw.get("revoked", []), keys, dt.datetime.now(dt.UTC)),
        notify=notify_config(top.sub("notify", required=False), keys),
        alerts=alert_rules(top, keys),
    )


def _audit(top: _Reader, signing_keys: Mapping[str, object]) -> tuple[str, str]:
    """`[audit]`: the audit key's name (never a signing key's) and the log's origin."""
    audit = top.sub("audit")
    audit.only("key", "origin")
    audit_key = audit.get("key", str)
    audit_origin = audit.get("origin", str, "signer")
    if not audit_origin or any(ord(c) < 33 or c == "+" for c in audit_origin):
        raise audit.error(
            "origin",
            "must be non-empty, without spaces, '+' or control characters, e.g. example.com/signer",
        )
    if not KEY_NAME.match(audit_key):
        raise audit.error("key", "key names are 1-64 of A-Z a-z 0-9 . _ - ")
    if audit_key in signing_keys:
        raise audit.error("key", f"{audit_key!r} is also a signing key; use a separate key")
    return audit_key, audit_origin


def _server(r: _Reader) -> ServerConfig:
    r.only(
        "listen",
        "oidc_listen",
        "metrics_listen",
        "tls_cert",
        "tls_key",
        "client_ca",
        "max_message_bytes",
        "max_wait",
        "message_timeout",
        "workers",
    )
    listen = r.get("listen", str)
    try:
        parse_address(listen)
    except ValueError as e:
        raise r.error("listen", str(e)) from None
    oidc_listen = r.get("oidc_listen", str, None)
    if oidc_listen is not None:
        try:
            parse_address(oidc_listen)
        except ValueError as e:
            raise r.error("oidc_listen", str(e)) from None
        if oidc_listen == listen:
            raise r.error("oidc_listen", f"{oidc_listen!r} must be a HOST:PORT other than listen")
    metrics_listen = r.get("metrics_listen", str, None)
    if metrics_listen is not None:
        try:
            parse_address(metrics_listen)
        except ValueError as e:
            raise r.error("metrics_listen", str(e)) from None
        if metrics_listen in (listen, oidc_listen):
            raise r.error("metrics_listen", f"{metrics_listen!r} is already a gRPC address")
    max_bytes = r.get("max_message_bytes", int, 4 * 1024 * 1024)
    if not 1024 <= max_bytes <= 64 * 1024 * 1024:
        raise r.error("max_message_bytes", "must be between 1024 and 67108864")
    max_wait = _duration_of(r, "max_wait", "60s", _SECOND, dt.timedelta(hours=1))
    message_timeout = _duration_of(r, "message_timeout", "10s", _SECOND, dt.timedelta(minutes=5))
    workers = r.get("workers", int, 64)
    if not 4 <= workers <= 1024:
        raise r.error("workers", "must be between 4 and 1024")
    paths = {}
    for key in ("tls_cert", "tls_key", "client_ca"):
        p = r.path_of(key)
        assert p is not None
        if not p.is_file():
            raise r.error(key, f"file {p} does not exist")
        paths[key] = p
    return ServerConfig(
        listen,
        max_message_bytes=max_bytes,
        max_wait=max_wait,
        workers=workers,
        message_timeout=message_timeout,
        oidc_listen=oidc_listen,
        metrics_listen=metrics_listen,
        **paths,
    )


def _token(r: _Reader) -> TokenConfig:
    if "pin" in r.table:
        raise r.error("pin", "PINs are never written in config; use pin_file or pin_env")
    r.only("module", "label", "pin_file", "pin_env", "softhsm2_conf")
    pin_file = r.path_of("pin_file", None)
    pin_env = r.get("pin_env", str, None)
    if (pin_file is None) == (pin_env is None):
        raise r.error("pin_file", "set exactly one of pin_file or pin_env (never the PIN itself)")
    return TokenConfig(
        module=r.get("module", str),
        label=r.get("label", str),
        pin_file=pin_file,
        pin_env=pin_env,
        softhsm2_conf=r.path_of("softhsm2_conf", None),
    )


def _store(r: _Reader) -> StoreConfig:
    r.only("url", "password_file", "pool_size")
    url = r.get("url", str)
    if url.startswith("sqlite:///"):
        for key in ("password_file", "pool_size"):
            if key in r.table:
                raise r.error(key, "is for PostgreSQL only; this store is a sqlite:/// file")
        p = Path(url.removeprefix("sqlite:///"))
        return StoreConfig(url, path=p if p.is_absolute() else (r.path.parent / p).resolve())
    if not url.startswith(("postgresql://", "postgres://")):
        raise r.error(
            "url",
            f"{url.split(':', 1)[0]!r} is not a store; use sqlite:///PATH (sqlite:////abs/path) "
            "or postgresql://USER@HOST:PORT/DB",
        )
    import psycopg.conninfo  # here, so SQLite users never load it

    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise r.error("url", f"not a valid PostgreSQL URL: {str(e).splitlines()[0]}") from None
    if "password" in info:
        raise r.error(
            "url", "holds a password; put it in a file named by store.password_file (chmod 600)"
        )
    pool_size = r.get("pool_size", int, 8)
    if not 1 <= pool_size <= 256:
        raise r.error("pool_size", "must be between 1 and 256")
    return StoreConfig(url, password_file=r.path_of("password_file", None), pool_size=pool_size)
