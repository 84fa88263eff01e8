"""Server configuration: one TOML file, validated once into frozen dataclasses.

Every error names the file, the key and the fix (exit code 2 at the CLI).
Secrets (the token PIN) are never in the file itself: only the path of a
0600 file or the name of an environment variable (invariant 7). The loaded
policy is hashed (`policy_hash`) and that hash goes into the audit log at
start-up (DESIGN §4).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.algorithms import ALGORITHMS
from signer.core.policy import ClaimRule, KeyPolicy
from signer.encoding import canonical_json
from signer.errors import ConfigError
from signer.parsing import (
    MAX_DURATION,
    MAX_TTL,
    format_duration,
    parse_address,
    parse_duration,
    read_secret,
)
from signer.text import KEY_NAME

__all__ = [
    "MAX_DURATION",
    "MAX_TTL",
    "ROLES",
    "ClaimRule",
    "Config",
    "IssuerConfig",
    "KeyPolicy",
    "ServerConfig",
    "TokenConfig",
    "format_duration",
    "load_config",
    "parse_duration",
    "read_secret",
]

ROLES = ("requester", "approver", "auditor", "admin")
_NAME = KEY_NAME
_SECOND = dt.timedelta(seconds=1)


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


JWT_ALGORITHMS = ("RS256", "ES256")
ACTOR_CASES = ("insensitive", "sensitive")  # how an issuer compares actor names (logins)
DEFAULT_RECORDED_CLAIMS = (
    "sub",
    "repository",
    "ref",
    "sha",
    "workflow",
    "job_workflow_ref",
    "environment",
    "actor",
    "run_id",
    "project_path",
    "pipeline_id",
    "user_login",
)


@dataclass(frozen=True)
class IssuerConfig:
    """One trusted OIDC issuer: where its keys are and how its tokens are read."""

    name: str
    issuer: str
    audience: str
    jwks_file: Path | None
    jwks_url: str | None
    jwks_ca: Path | None = None
    algorithms: tuple[str, ...] = JWT_ALGORITHMS
    identity_claim: str = "sub"
    actor_claim: str = "actor"
    recorded_claims: tuple[str, ...] = DEFAULT_RECORDED_CLAIMS
    leeway: dt.timedelta = dt.timedelta(seconds=30)
    jwks_refresh: dt.timedelta = dt.timedelta(seconds=30)  # at most this often on unknown kid
    jwks_max_age: dt.timedelta = dt.timedelta(hours=1)
    officers: Mapping[str, str] = field(default_factory=dict)  # actor claim -> officer
    actor_case: str = "insensitive"  # GitHub and GitLab logins ignore case

    def same_actor(self, a: str, b: str) -> bool:
        """Whether two actor names are one account, compared as the issuer compares them.

        Case-insensitive unless the issuer is configured `sensitive`: when in doubt,
        bar more officers, never fewer.
        """
        return a == b if self.actor_case == "sensitive" else a.casefold() == b.casefold()

    def as_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "audience": self.audience,
            "jwks": self.jwks_url or str(self.jwks_file),
            "algorithms": list(self.algorithms),
            "identity_claim": self.identity_claim,
            "actor_claim": self.actor_claim,
            "actor_case": self.actor_case,
            "recorded_claims": list(self.recorded_claims),
            "leeway_seconds": int(self.leeway.total_seconds()),
            "officers": dict(sorted(self.officers.items())),
        }


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig
    token: TokenConfig
    store: StoreConfig
    audit_key: str
    audit_origin: str
    identities: Mapping[str, frozenset[str]]
    approver_keys: Mapping[str, ed25519.Ed25519PublicKey]
    keys: Mapping[str, KeyPolicy]
    access: Mapping[str, frozenset[str]] = field(default_factory=dict)
    log_format: str = "auto"
    issuers: Mapping[str, IssuerConfig] = field(default_factory=dict)

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
            "oidc": {n: i.as_dict() for n, i in sorted(self.issuers.items())},
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
    )
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
    )


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


def _identities(r: _Reader) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for identity in r.table:
        if identity.startswith("oidc:"):
            raise r.error(identity, "identities starting with oidc: are reserved for OIDC tokens")
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


def _duration_of(
    r: _Reader, key: str, default: str, low: dt.timedelta, high: dt.timedelta
) -> dt.timedelta:
    try:
        value = parse_duration(r.get(key, str, default), low, high)
    except ValueError as e:
        raise r.error(key, str(e)) from None
    return value


def _issuers(
    r: _Reader, approver_keys: Mapping[str, ed25519.Ed25519PublicKey]
) -> dict[str, IssuerConfig]:
    out: dict[str, IssuerConfig] = {}
    for name in r.table:
        i = r.sub(name)
        i.only(
            "issuer",
            "audience",
            "jwks_file",
            "jwks_url",
            "jwks_ca",
            "algorithms",
            "identity_claim",
            "actor_claim",
            "actor_case",
            "claims",
            "leeway",
            "jwks_refresh",
            "jwks_max_age",
            "officers",
        )
        if not _NAME.match(name):
            raise r.error(name, "issuer names are 1-64 of A-Z a-z 0-9 . _ - ")
        issuer = i.get("issuer", str)
        if not issuer.startswith("https://"):
            raise i.error("issuer", f"{issuer!r} must be the https:// URL tokens carry in iss")
        if any(x.issuer == issuer for x in out.values()):
            raise i.error("issuer", f"{issuer!r} is configured twice")
        audience = i.get("audience", str)
        if not audience:
            raise i.error("audience", "must not be empty")
        jwks_file = i.path_of("jwks_file", None)
        jwks_url = i.get("jwks_url", str, None)
        if (jwks_file is None) == (jwks_url is None):
            raise i.error("jwks_url", "set exactly one of jwks_url or jwks_file")
        if jwks_url is not None and not jwks_url.startswith("https://"):
            raise i.error("jwks_url", f"{jwks_url!r} must be an https:// URL")
        if jwks_file is not None and not jwks_file.is_file():
            raise i.error("jwks_file", f"file {jwks_file} does not exist")
        jwks_ca = i.path_of("jwks_ca", None)
        if jwks_ca is not None and not jwks_ca.is_file():
            raise i.error("jwks_ca", f"file {jwks_ca} does not exist")
        algorithms = i.names("algorithms", list(JWT_ALGORITHMS))
        bad = [a for a in algorithms if a not in JWT_ALGORITHMS]
        if bad or not algorithms:
            raise i.error(
                "algorithms",
                f"{bad[0] if bad else 'none'!r}: allowed are {', '.join(JWT_ALGORITHMS)}",
            )
        officers_table = i.sub("officers", required=False)
        officers: dict[str, str] = {}
        for actor in officers_table.table:
            officer = officers_table.get(actor, str)
            if officer not in approver_keys:
                raise officers_table.error(
                    actor, f"{officer!r} is not an officer under [approvers]"
                )
            officers[actor] = officer
        identity_claim = i.get("identity_claim", str, "sub")
        actor_claim = i.get("actor_claim", str, "actor")
        actor_case = i.get("actor_case", str, "insensitive")
        if actor_case not in ACTOR_CASES:
            raise i.error(
                "actor_case",
                f"{actor_case!r}: must be insensitive (the default: GitHub, GitLab) or sensitive",
            )
        recorded = i.names("claims", list(DEFAULT_RECORDED_CLAIMS))
        out[name] = IssuerConfig(
            name=name,
            issuer=issuer,
            audience=audience,
            jwks_file=jwks_file,
            jwks_url=jwks_url,
            jwks_ca=jwks_ca,
            algorithms=tuple(algorithms),
            identity_claim=identity_claim,
            actor_claim=actor_claim,
            recorded_claims=tuple(dict.fromkeys((*recorded, identity_claim, actor_claim))),
            leeway=_duration_of(i, "leeway", "30s", dt.timedelta(0), dt.timedelta(minutes=5)),
            jwks_refresh=_duration_of(i, "jwks_refresh", "30s", _SECOND, dt.timedelta(hours=1)),
            jwks_max_age=_duration_of(
                i, "jwks_max_age", "1h", dt.timedelta(minutes=1), dt.timedelta(days=1)
            ),
            officers=officers,
            actor_case=actor_case,
        )
    return out


def _record_rule_claims(issuer: IssuerConfig, rules: list[ClaimRule]) -> IssuerConfig:
    """Every claim a key's rule looks at is recorded with the request."""
    needed = [c for r in rules for c, _ in r.conditions]
    recorded = tuple(dict.fromkeys((*issuer.recorded_claims, *needed)))
    return dataclasses.replace(issuer, recorded_claims=recorded)


def _claim_rules(k: _Reader, issuers: Mapping[str, IssuerConfig]) -> tuple[ClaimRule, ...]:
    raw = k.table.get("oidc", [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise k.error("oidc", "must be a list of tables: [[keys.NAME.oidc]]")
    rules = []
    for n, table in enumerate(raw):
        r = _Reader(k.path, table, f"{k.prefix}.oidc[{n}]")
        issuer = r.get("issuer", str)
        if issuer not in issuers:
            raise r.error("issuer", f"{issuer!r} is not an issuer under [oidc]")
        conditions = []
        for claim, value in table.items():
            if claim == "issuer":
                continue
            patterns = [value] if isinstance(value, str) else value
            if (
                not isinstance(patterns, list)
                or not patterns
                or not all(isinstance(p, str) and p for p in patterns)
            ):
                raise r.error(claim, "must be a glob string or a non-empty list of them")
            if any(set(p) <= {"*"} for p in patterns):
                raise r.error(claim, "a pattern of only * matches anything; name the value")
            conditions.append((claim, tuple(patterns)))
        if not conditions:
            raise r.error(
                "issuer",
                'a rule needs at least one claim condition, e.g. repository = "org/app"; '
                "without one any pipeline of that issuer could sign",
            )
        rules.append(ClaimRule(issuer, tuple(conditions)))
    return tuple(rules)


def _keys(
    r: _Reader,
    identities: Mapping[str, frozenset[str]],
    approver_keys: Mapping[str, ed25519.Ed25519PublicKey],
    issuers: Mapping[str, IssuerConfig],
) -> dict[str, KeyPolicy]:
    out = {}
    for name in r.table:
        k = r.sub(name)
        k.only("algorithm", "approvers", "threshold", "requesters", "max_ttl", "oidc")
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
        requesters = k.names("requesters", [])
        oidc = _claim_rules(k, issuers)
        if not requesters and not oidc:
            raise k.error("requesters", "missing; name requesters or add [[keys.NAME.oidc]] rules")
        for q in requesters:
            if "requester" not in identities.get(q, frozenset()):
                raise k.error("requesters", f"{q!r} has no requester role under [identities]")
        max_ttl = _duration_of(k, "max_ttl", "1h", _SECOND, MAX_TTL)
        out[name] = KeyPolicy(
            name,
            ALGORITHMS[alg_name] if alg_name else None,
            approvers,
            threshold,
            requesters,
            max_ttl,
            oidc,
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
