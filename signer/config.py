"""Server configuration: one TOML file, validated once into frozen dataclasses.

Every error names the file, the key and the fix (exit code 2 at the CLI).
Secrets (the token PIN) are never in the file itself: only the path of a
0600 file or the name of an environment variable (invariant 7). The loaded
policy is hashed (`policy_hash`) and that hash goes into the audit log at
start-up (DESIGN §4).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import ALGORITHMS, KeyAlgorithm
from signer.encoding import canonical_json
from signer.errors import ConfigError

__all__ = [
    "ROLES",
    "Config",
    "KeyPolicy",
    "ServerConfig",
    "TokenConfig",
    "load_config",
    "parse_duration",
    "read_secret",
]

ROLES = ("requester", "approver", "auditor", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> dt.timedelta:
    """Parse `1h30m`, `15m`, `90s`, `2d`; ValueError otherwise."""
    m = _DURATION.match(text.strip())
    if not text.strip() or m is None:
        raise ValueError(f"{text!r} is not a duration like 15m, 1h or 1h30m")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return dt.timedelta(days=d, hours=h, minutes=mi, seconds=s)


def read_secret(file: Path | None, env: str | None, what: str) -> str:
    """Read a secret from a file or environment variable (never argv)."""
    if file is not None:
        try:
            value = file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read {what} file {file}: {e.strerror}") from None
        if file.stat().st_mode & 0o077:
            raise ConfigError(
                f"{what} file {file} is readable by group or others; run chmod 600 {file}"
            )
    elif env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"environment variable {env} ({what}) is not set or empty")
    else:
        raise ConfigError(f"no {what} configured: set a file or an environment variable")
    if not value:
        raise ConfigError(f"{what} is empty")
    return value


@dataclass(frozen=True)
class ServerConfig:
    listen: str
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    max_message_bytes: int = 4 * 1024 * 1024
    max_wait: dt.timedelta = dt.timedelta(seconds=60)
    workers: int = 64


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
class KeyPolicy:
    """Who may request and who must approve signatures with one key."""

    name: str
    algorithm: KeyAlgorithm | None
    approvers: tuple[str, ...]
    threshold: int
    requesters: tuple[str, ...]
    max_ttl: dt.timedelta

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "algorithm": self.algorithm.name if self.algorithm else None,
            "approvers": sorted(self.approvers),
            "threshold": self.threshold,
            "requesters": sorted(self.requesters),
            "max_ttl_seconds": int(self.max_ttl.total_seconds()),
        }


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    token: TokenConfig
    store_path: Path
    audit_key: str
    audit_origin: str
    identities: Mapping[str, frozenset[str]]
    approver_keys: Mapping[str, ed25519.Ed25519PublicKey]
    keys: Mapping[str, KeyPolicy]
    access: Mapping[str, frozenset[str]] = field(default_factory=dict)
    log_format: str = "auto"

    def roles_of(self, identity: str) -> frozenset[str]:
        return self.identities.get(identity, frozenset())

    @property
    def policy_document(self) -> dict[str, Any]:
        """The policy in force: keys, identities, approver keys (raw hex), access rules.

        Recorded whole in the audit log at start-up, so an auditor can check every
        signature's quorum offline under the policy that was in force.
        """
        approver_keys = {
            name: key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
            for name, key in self.approver_keys.items()
        }
        policy = {
            "keys": {n: p.as_dict() for n, p in self.keys.items()},
            "identities": {i: sorted(r) for i, r in self.identities.items()},
            "approver_keys": approver_keys,
            "access": {m: sorted(r) for m, r in self.access.items()},
            "audit_key": self.audit_key,
        }
        return policy

    @property
    def policy_hash(self) -> str:
        """SHA-256 over the canonical policy document."""
        return hashlib.sha256(canonical_json(self.policy_document)).hexdigest()


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, path: Path, table: Mapping[str, Any], prefix: str) -> None:
        self.path, self.table, self.prefix = path, table, prefix

    def error(self, key: str, problem: str) -> ConfigError:
        where = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(f"{self.path}: {where}: {problem}")

    def get(self, key: str, kind: type, default: Any = ..., *, required: bool = True) -> Any:
        if key not in self.table:
            if default is not ...:
                return default
            raise self.error(key, f"missing; add `{key} = ...` to [{self.prefix}]")
        value = self.table[key]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.error(key, f"must be a {kind.__name__}, got {value!r}")
        return value

    def path_of(self, key: str, default: Any = ...) -> Path | None:
        value = self.get(key, str, default)
        if value is None:
            return None
        p = Path(value)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def sub(self, key: str, *, required: bool = True) -> _Reader:
        value = self.table.get(key, None if required else {})
        if value is None:
            raise self.error(key, f"missing table; add a [{key}] section")
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        prefix = f"{self.prefix}.{key}" if self.prefix else key
        return _Reader(self.path, value, prefix)

    def only(self, *allowed: str) -> None:
        """Refuse keys this table does not have: a typo must not be silently ignored."""
        for key in self.table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                raise self.error(key, f"unknown setting; {hint}")

    def names(self, key: str, default: Any = ...) -> tuple[str, ...]:
        value = self.get(key, list, default)
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)


def load_config(path: Path) -> Config:
    """Read and validate the server config; ConfigError names key and fix."""
    path = path.resolve()
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; create one with `signer init`") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    top = _Reader(path, raw, "")
    top.only(
        "server", "token", "store", "audit", "log", "identities", "approvers", "keys", "access"
    )
    identities = _identities(top.sub("identities"))
    approver_keys = _approver_keys(top.sub("approvers"), identities)
    keys = _keys(top.sub("keys"), identities, approver_keys)
    audit = top.sub("audit")
    audit.only("key", "origin")
    audit_key = audit.get("key", str)
    audit_origin = audit.get("origin", str, "signer")
    if not audit_origin or any(ord(c) < 33 or c == "+" for c in audit_origin):
        raise audit.error(
            "origin",
            "must be non-empty, without spaces, '+' or control characters, e.g. example.com/signer",
        )
    if audit_key in keys:
        raise audit.error("key", f"{audit_key!r} is also a signing key; use a separate key")
    log = top.sub("log", required=False)
    log.only("format")
    log_format = log.get("format", str, "auto")
    if log_format not in ("auto", "json", "console"):
        raise log.error("format", "must be auto, json or console")
    return Config(
        path=path,
        server=_server(top.sub("server")),
        token=_token(top.sub("token")),
        store_path=_store(top.sub("store")),
        audit_key=audit_key,
        audit_origin=audit_origin,
        identities=identities,
        approver_keys=approver_keys,
        keys=keys,
        access=_access(top.sub("access", required=False)),
        log_format=log_format,
    )


def _server(r: _Reader) -> ServerConfig:
    r.only("listen", "tls_cert", "tls_key", "client_ca", "max_message_bytes", "max_wait", "workers")
    listen = r.get("listen", str)
    if ":" not in listen:
        raise r.error("listen", f"{listen!r} must be HOST:PORT, e.g. 127.0.0.1:7443")
    max_bytes = r.get("max_message_bytes", int, 4 * 1024 * 1024)
    if not 1024 <= max_bytes <= 64 * 1024 * 1024:
        raise r.error("max_message_bytes", "must be between 1024 and 67108864")
    try:
        max_wait = parse_duration(r.get("max_wait", str, "60s"))
    except ValueError as e:
        raise r.error("max_wait", str(e)) from None
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
        listen, max_message_bytes=max_bytes, max_wait=max_wait, workers=workers, **paths
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


def _store(r: _Reader) -> Path:
    r.only("url")
    url = r.get("url", str)
    if not url.startswith("sqlite:///"):
        raise r.error("url", f"{url!r}: only sqlite:///PATH is supported (sqlite:////abs/path)")
    p = Path(url.removeprefix("sqlite:///"))
    return p if p.is_absolute() else (r.path.parent / p).resolve()


def _identities(r: _Reader) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for identity in r.table:
        roles = r.names(identity)
        bad = [x for x in roles if x not in ROLES]
        if bad:
            raise r.error(identity, f"unknown role {bad[0]!r}; roles are {', '.join(ROLES)}")
        out[identity] = frozenset(roles)
    return out


def _approver_keys(
    r: _Reader, identities: Mapping[str, frozenset[str]]
) -> dict[str, ed25519.Ed25519PublicKey]:
    out: dict[str, ed25519.Ed25519PublicKey] = {}
    for name in r.table:
        if "approver" not in identities.get(name, frozenset()):
            raise r.error(name, f"{name!r} has no approver role; add it under [identities]")
        p = r.path_of(name)
        assert p is not None
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except (OSError, ValueError) as e:
            raise r.error(name, f"cannot load public key {p}: {e}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise r.error(name, f"{p} is not an Ed25519 public key (make one: approver keygen)")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        twin = next(
            (
                n
                for n, k in out.items()
                if k.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == raw
            ),
            None,
        )
        if twin is not None:
            raise r.error(
                name,
                f"uses the same public key as {twin!r}; one person, one key (quorum counts people)",
            )
        out[name] = key
    return out


def _keys(
    r: _Reader,
    identities: Mapping[str, frozenset[str]],
    approver_keys: Mapping[str, ed25519.Ed25519PublicKey],
) -> dict[str, KeyPolicy]:
    out = {}
    for name in r.table:
        k = r.sub(name)
        k.only("algorithm", "approvers", "threshold", "requesters", "max_ttl")
        if not _NAME.match(name):
            raise r.error(name, "key names are 1-64 of A-Z a-z 0-9 . _ - ")
        alg_name = k.get("algorithm", str, None)
        if alg_name is not None and alg_name not in ALGORITHMS:
            raise k.error("algorithm", f"unknown {alg_name!r}; one of {', '.join(ALGORITHMS)}")
        approvers = k.names("approvers")
        if len(set(approvers)) != len(approvers):
            raise k.error("approvers", "lists an approver twice")
        for a in approvers:
            if a not in approver_keys:
                raise k.error(
                    "approvers", f'{a!r} has no public key; add `{a} = "PATH"` under [approvers]'
                )
        threshold = k.get("threshold", int)
        if not 1 <= threshold <= len(approvers):
            raise k.error(
                "threshold",
                f"is {threshold} with {len(approvers)} approvers; "
                f"set 1 <= threshold <= {len(approvers)}",
            )
        requesters = k.names("requesters")
        for q in requesters:
            if "requester" not in identities.get(q, frozenset()):
                raise k.error("requesters", f"{q!r} has no requester role under [identities]")
        try:
            max_ttl = parse_duration(k.get("max_ttl", str, "1h"))
        except ValueError as e:
            raise k.error("max_ttl", str(e)) from None
        if max_ttl <= dt.timedelta(0):
            raise k.error("max_ttl", "must be positive")
        out[name] = KeyPolicy(
            name,
            ALGORITHMS[alg_name] if alg_name else None,
            approvers,
            threshold,
            requesters,
            max_ttl,
        )
    return out


def _access(r: _Reader) -> dict[str, frozenset[str]]:
    out = {}
    for method in r.table:
        if not method.startswith("/"):
            raise r.error(method, "must be a full method name like /signer.v1.AuditService/...")
        roles = r.names(method)
        bad = [x for x in roles if x not in ROLES and x != "*"]
        if bad:
            raise r.error(method, f"unknown role {bad[0]!r}; roles are {', '.join(ROLES)} or *")
        out[method] = frozenset(roles)
    return out
