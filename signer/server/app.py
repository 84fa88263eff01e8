"""Assembles and runs the server: token, store, core, gRPC with mutual TLS.

Start-up refuses to serve unless every configured key passes the token's
security check (invariant 1) and the audit log records the start with the
loaded policy's hash (invariant 3, docs/architecture.md §4). A background sweeper expires
PENDING requests past their TTL and signs APPROVED requests that a crash or
outage left unsigned (invariant 9). A policy version adopted while the server runs,
here or on another server of the store, is taken on without a restart
(`follow_policy`, within the token probe's second).

Below gRPC, no connection can take the shared capacity (docs/architecture.md §14): a
connection carries at most `STREAMS_PER_CONNECTION` streams at once (gRPC
core then also paces rapid stream resets), an idle one is closed, a dead peer
is found by keepalive pings, and every connection is recycled after
`CONNECTION_AGE` with a grace longer than any call may last, which bounds the
life of every stream. Each identity holds at most half the workers, a caller
with a role holds one no longer than `server.message_timeout` waiting for a
message, and a caller without a role none for longer than it takes to refuse it.

Before anything secret is read the server turns core dumps off for itself
(RLIMIT_CORE 0, and on Linux not dumpable: no core file, even through a
core_pattern pipe, and no ptrace by the same user), so the token PIN and
session state never land in a core file (invariant 7). A watcher probes the
token every second: while it cannot be reached the gRPC health status is
NOT_SERVING (calls that need it fail UNAVAILABLE and record nothing), and
SERVING again once the token adapter has found it and logged in.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import resource
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from signer import __version__
from signer.bounds import RateLimit
from signer.core.enforced import Enforced
from signer.core.machine import Core
from signer.errors import ConfigError, KeyNotFoundError, SignerError, TokenError
from signer.model import KeySpec
from signer.notify.dispatcher import Dispatcher
from signer.policy_chain import Version
from signer.server import openpgp_keys, policy_admin, policy_head
from signer.server.admin import checkpointer_for, open_token
from signer.server.auth import DEFAULT_RULES, AuthInterceptor
from signer.server.config import Config
from signer.server.metrics import Metrics
from signer.server.oidc import OidcVerifier
from signer.server.openpgp_keys import can_openpgp
from signer.server.policy_switch import config_under
from signer.server.service import ApprovalService, AuditService, SigningService
from signer.server.sweeper import Sweeper
from signer.store import Store
from signer.store.factory import open_store
from signer.store.factory import schema_of as store_schema
from signer.tls import check_server_files
from signer.token.hsm import Token
from signer.v1 import (
    approval_pb2,
    approval_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    signing_pb2,
    signing_pb2_grpc,
)

__all__ = ["Server", "load_keys", "no_core_dumps"]

log = structlog.get_logger("signer.server.app")
STREAMS_PER_CONNECTION = 32
CONNECTION_IDLE = dt.timedelta(minutes=5)
CONNECTION_AGE = dt.timedelta(hours=1)
_PR_SET_DUMPABLE = 4  # <linux/prctl.h>
_TOKEN_PROBE_SECONDS = 1.0
_SERVICES = (
    signing_pb2.DESCRIPTOR.services_by_name["SigningService"].full_name,
    approval_pb2.DESCRIPTOR.services_by_name["ApprovalService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


def load_keys(config: Config, token: Token) -> dict[str, KeySpec]:
    """Check every configured key in the token (invariant 1) and describe it, with the
    OpenPGP creation time the token keeps for it (fixed when the key was generated, or by
    `signer keys openpgp-created`; never by the server, see `openpgp_keys`)."""
    keys = {}
    for name, policy in config.keys.items():
        if not policy.key_id:
            raise ConfigError(
                f"{config.path}: keys.{name}.key_id: missing; the policy pins which token key "
                "signs under each name, so that no one changes it without the officers: add "
                "the key id `signer keys list` shows and propose the change (docs/policy.md)"
            )
        try:
            label = token.key_by_id(name, policy.key_id).name
        except KeyNotFoundError as e:
            raise ConfigError(f"{config.path}: keys.{name}.key_id: {e}") from None
        k = token.check_key(label, policy.algorithm)
        assert k.algorithm is not None
        created = None
        if can_openpgp(k.algorithm):
            try:
                created = openpgp_keys.creation_time(token, label)
            except TokenError as e:  # refused for this key alone, until the operator repairs it
                log.error("OpenPGP signatures refused for this key", key=name, error=str(e))
        keys[name] = KeySpec(name, k.algorithm, k.key_id, k.public_key_pem, created, label)
    audit = token.check_key(config.audit_key)
    if audit.algorithm is None or audit.algorithm.name != "ed25519":
        raise ConfigError(f"{config.path}: audit.key {config.audit_key!r} must be an ed25519 key")
    return keys


def _policy_in_force(config: Config, token: Token, store: Store) -> Version | None:
    """The policy version in force, read only from a log the token's tree head vouches
    for (a database restored or edited behind the server's back is refused first)."""
    with store.transaction() as tx:
        policy_admin.require_trusted(config, token, tx)
        return policy_admin.checked_in_force(config, token, tx)


def _checked_policy(config: Config, token: Token, store: Store) -> Version:
    """The version in force, which `config`'s policy must be: an edited policy, one the
    officers never approved, or an older version (rolled back) is refused."""
    with store.transaction() as tx:
        policy_admin.require_trusted(config, token, tx)
        chain, in_force = policy_admin.checked_chain(config, token, tx)
    if in_force is not None and config.policy_hash != in_force.sha256:
        older = next((v for v in chain if v.sha256 == config.policy_hash), None)
        if older is not None:
            raise ConfigError(
                f"{config.path}: its policy is version {older.number}, older than version "
                f"{in_force.number} in force ({in_force.sha256[:16]}...); nothing is signed "
                f"under a version rolled back: put the file proposed as version "
                f"{in_force.number} in its place (running servers took it on already)"
            )
    policy_admin.check_config(config, in_force)
    assert in_force is not None
    return in_force


def preflight(config: Config) -> list[str]:
    """What `signer serve --check` checks, without serving or writing anything: the TLS
    files, the token and each key's attributes, the store (at this server's schema: one
    a start would make or migrate is reported, not changed) and the audit log's tree
    head, and the policy in force. Raises the error a start would; else says what was
    found."""
    _check_tls(config)
    found, current = store_schema(config.store)
    where = config.store.path or "the PostgreSQL database"
    if found is None or found < current:
        now = (
            f"does not exist (a start creates it, at schema {current})"
            if found is None
            else f"has schema {found or 'none'}, older than this server's {current} (a start "
            "migrates it)"
        )
        raise ConfigError(f"store: {where} {now}; --check changes nothing, so it stops here")
    token = open_token(config)
    try:
        store = open_store(config.store)
        try:
            in_force = _checked_policy(config, token, store)
            keys = load_keys(config, token)
            with store.transaction() as tx:
                size = checkpointer_for(config, token).status(tx).tree.size
        finally:
            store.close()
    finally:
        token.close()
    listens = [config.server.listen, config.server.oidc_listen, config.server.metrics_listen]
    return [
        f"config {config.path}: valid",
        f"TLS: the server certificate and key for {', '.join(a for a in listens if a)}",
        f"token {config.token.label!r}: audit key {config.audit_key!r} and "
        f"{len(keys)} signing key(s), each sensitive, never extractable, sign-only: "
        + ", ".join(f"{k.name} ({k.algorithm.name})" for k in keys.values()),
        f"store {config.store.path or 'PostgreSQL'}: reachable; its audit log ({size} "
        "entries) extends the tree head the token keeps",
        f"policy: version {in_force.number} ({in_force.sha256[:16]}...) in force, as the "
        "config holds it",
    ]


@dataclass
class Server:
    config: Config
    token: Token
    store: Store
    core: Core
    grpc_server: grpc.Server
    port: int
    oidc_port: int = 0
    metrics: Metrics | None = None
    metrics_port: int = 0
    health_servicer: health.HealthServicer | None = None
    watch: policy_head.Watch | None = None
    interceptor: AuthInterceptor | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sweeper: Sweeper | None = None
    dispatcher: Dispatcher | None = None
    _watcher: threading.Thread | None = None
    _follow_lock: threading.Lock = field(default_factory=threading.Lock)
    _not_followed: str = ""

    @classmethod
    def build(cls, config: Config) -> Server:
        no_core_dumps()
        _check_tls(config)  # before the token, the store or a port is touched
        token = open_token(config)
        store: Store | None = None
        metrics: Metrics | None = None
        try:
            store = open_store(config.store)
            in_force = _checked_policy(config, token, store)
            keys = load_keys(config, token)
            metrics_port = 0
            if config.server.metrics_listen is not None:
                metrics = Metrics(store, token)
                metrics_port = metrics.serve(config.server.metrics_listen)
            watch = policy_head.Watch(token, config.audit_key, in_force)
            core = Core(
                store,
                token,
                keys,
                config.keys,
                config.approver_keys,
                checkpointer=checkpointer_for(config, token, metrics),
                policy_officers=config.policy_officers,
                superseded=watch.superseded,
                superseded_now=lambda: watch.superseded(fresh=True),
                freeze_marks=policy_head.TokenFreezes(token),
                policy_sha256=in_force.sha256,
                policy_number=in_force.number,
                policy_head=policy_head.TokenHead(token, config.audit_key),
                alert_rules=config.alerts,
            )
            core.reconcile_freezes()
            core.prime_alerts()  # alerts on the requests from here on
            if metrics is not None:
                core.events.subscribe(metrics.on_event)
            dispatcher = _dispatcher(config, store, core, metrics)
            # Replicas on one database hear each other's changes through the store.
            store.subscribe(core.notifier.publish)
            server, port, oidc_port, health_servicer, interceptor = _grpc_server(config, core)
            core.record(
                "server.started",
                "signer",
                {
                    "version": __version__,
                    "policy_hash": config.policy_hash,
                    "policy": config.policy_document,
                    "listen": config.server.listen,
                    "oidc_listen": config.server.oidc_listen,
                    "metrics_listen": config.server.metrics_listen,
                    "keys": {
                        n: {
                            "key_id": k.key_id,
                            "algorithm": k.algorithm.name,
                            **({"label": k.label} if k.label != k.name else {}),
                            **({"openpgp_created": k.openpgp_created} if k.openpgp_created else {}),
                        }
                        for n, k in sorted(keys.items())
                    },
                },
            )
        except BaseException:
            if metrics is not None:
                metrics.close()
            if store is not None:
                store.close()
            token.close()
            raise
        built = cls(
            config,
            token,
            store,
            core,
            server,
            port,
            oidc_port,
            metrics,
            metrics_port,
            health_servicer,
            watch=watch,
            interceptor=interceptor,
            dispatcher=dispatcher,
        )

        def follow(version: Version) -> None:
            built.follow_policy()

        core.on_policy_adopted = follow
        return built

    def follow_policy(self) -> bool:
        """Take on the version in force if it is not the one enforced (adopted here or on
        another server of the store): True once enforced. Until then nothing is signed
        and no request taken (`Watch`); why not is logged once per version."""
        with self._follow_lock:
            in_force = _policy_in_force(self.config, self.token, self.store)
            if in_force is None or in_force.sha256 == self.core.policy_sha256:
                return True
            try:
                config = config_under(self.config, in_force)
                keys = load_keys(config, self.token)
            except SignerError as e:
                if self._not_followed != in_force.sha256:
                    self._not_followed = in_force.sha256
                    log.error("policy version not taken on", version=in_force.number, error=str(e))
                return False
            if self.interceptor is not None:
                self.interceptor.use(config.roles_of, {**DEFAULT_RULES, **config.access})
                if self.interceptor.oidc is not None:
                    self.interceptor.oidc.use_officers(config.approver_keys)
            self.core.enforce(
                Enforced(
                    keys,
                    config.keys,
                    config.approver_keys,
                    config.policy_officers,
                    in_force.sha256,
                    in_force.number,
                )
            )
            if self.watch is not None:
                self.watch.follow(in_force)
            self.config = config
        # Approved requests left waiting for the switch are signed under it, if their
        # quorum holds under it.
        threading.Thread(target=self._recover, name="policy-recover", daemon=True).start()
        return True

    def _recover(self) -> None:
        try:
            self.core.recover()
        except SignerError as e:
            log.error("signing approved requests after the policy change failed", error=str(e))

    def start(self) -> None:
        self.core.recover()
        self.core.expire_due()
        self.grpc_server.start()
        self._sweeper = Sweeper(self.core)
        self._sweeper.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        self._watcher = threading.Thread(target=self._watch_token, name="token-watch", daemon=True)
        self._watcher.start()
        log.info(
            "serving",
            listen=self.config.server.listen,
            port=self.port,
            oidc_port=self.oidc_port or None,
            metrics_port=self.metrics_port or None,
            policy_hash=self.config.policy_hash,
        )

    def _watch_token(self) -> None:
        """Health follows the token: NOT_SERVING while it cannot be reached. A version
        adopted on another server is taken on here within the probe's second."""
        serving = True
        while not self._stop.wait(_TOKEN_PROBE_SECONDS):
            names = [self.config.audit_key, *(k.token_label for k in self.core.keys.values())]
            try:
                self.token.check(names)
                ok = True
            except SignerError as e:
                ok = False
                if serving:
                    log.error("token unreachable: not serving", error=str(e))
            if ok:
                self._follow_if_superseded()
            if ok != serving:
                serving = ok
                self._set_health(ok)
                if ok:
                    log.warning("token reachable again: serving")

    def _follow_if_superseded(self) -> None:
        try:
            if self.core.superseded() is not None:
                self.follow_policy()
        except Exception as e:  # read again at the next probe; nothing signed meanwhile
            if self._not_followed != str(e):
                self._not_followed = str(e)
                log.error("the policy in force cannot be read", error=str(e), exc_info=True)

    def _set_health(self, serving: bool) -> None:
        if self.health_servicer is None:
            return
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *_SERVICES):
            self.health_servicer.set(name, status)

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.stop()
        self.grpc_server.stop(grace).wait()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self.metrics is not None:
            self.metrics.close()
        self.store.close()
        self.token.close()
        log.info("stopped", clean=True)


def _dispatcher(
    config: Config, store: Store, core: Core, metrics: Metrics | None
) -> Dispatcher | None:
    """The webhooks' dispatcher, woken by every event of the core (None: no [notify])."""
    if config.notify is None:
        return None
    dispatcher = Dispatcher(
        store,
        config.notify.sinks,
        config.audit_origin,
        retry_min=config.notify.retry_min,
        retry_max=config.notify.retry_max,
        give_up_after=config.notify.give_up_after,
        outcome=metrics.notified if metrics is not None else None,
    )
    dispatcher.prime()  # told of everything from here on
    core.events.subscribe(dispatcher.poke)
    return dispatcher


def no_core_dumps() -> None:
    """No core file of this process, and (Linux) not dumpable: secrets stay in memory."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise ConfigError(
                f"cannot turn core dumps off (prctl): {os.strerror(ctypes.get_errno())}"
            )


def _grpc_server(
    config: Config, core: Core
) -> tuple[grpc.Server, int, int, health.HealthServicer, AuthInterceptor]:
    s = config.server
    rules = {**DEFAULT_RULES, **config.access}
    oidc = None
    if s.oidc_listen is not None:
        oidc = OidcVerifier(config.issuers, officers=config.approver_keys)
        oidc.load()
    log_limit = RateLimit(core.limits.max_rejections_per_minute)
    interceptor = AuthInterceptor(
        config.roles_of,
        rules,
        lambda who, method, e: core.record_rejection(who, method, e),
        oidc,
        calls_per_identity=max(2, s.workers // 2),
        log_limit=log_limit,
        message_timeout=s.message_timeout.total_seconds(),
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="rpc"),
        interceptors=[interceptor],
        options=_options(config),
        # Calls waiting for a worker hold no message yet (served as request streams, see
        # signer.server.auth) and a connection brings at most STREAMS_PER_CONNECTION: room for a
        # burst of refused calls from many connections, without refusing the others.
        maximum_concurrent_rpcs=s.workers * STREAMS_PER_CONNECTION,
    )
    token = core.token

    def certificates(name: str) -> bytes:
        assert isinstance(token, Token)
        spec = core.keys[name]
        return openpgp_keys.certificate(token, spec.token_label, spec.public_key_pem)

    signing = SigningService(
        core, s.max_wait, log_limit, certificates if isinstance(token, Token) else None
    )
    approval = ApprovalService(core, s.max_wait, log_limit)
    audit = AuditService(core, s.max_wait, log_limit)
    signing_pb2_grpc.add_SigningServiceServicer_to_server(signing, server)
    approval_pb2_grpc.add_ApprovalServiceServicer_to_server(approval, server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(audit, server)
    health_servicer = health.HealthServicer()
    for name in ("", *_SERVICES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*_SERVICES, reflection.SERVICE_NAME, health.SERVICE_NAME), server
    )
    creds = grpc.ssl_server_credentials(
        [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
        root_certificates=s.client_ca.read_bytes(),
        require_client_auth=True,
    )
    port = _bind(server, s.listen, creds, config, "listen")
    oidc_port = 0
    if s.oidc_listen is not None:
        # Server-authenticated TLS only: callers prove who they are with a token.
        tls = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())])
        oidc_port = _bind(server, s.oidc_listen, tls, config, "oidc_listen")
    return server, port, oidc_port, health_servicer, interceptor


def _check_tls(config: Config) -> None:
    """A mismatched certificate and key is named as such (gRPC says only that it cannot bind)."""
    s = config.server
    try:
        check_server_files(s.tls_cert, s.tls_key, s.client_ca)
    except ValueError as e:
        raise ConfigError(f"{config.path}: server.tls_cert, tls_key, client_ca: {e}") from None


def _options(config: Config) -> list[tuple[str, int]]:
    """gRPC core settings that bound what one connection can hold, and for how long."""
    s = config.server
    longest = max(ApprovalService.watch_limit, s.max_wait)  # the longest call there is
    return [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
        ("grpc.max_connection_idle_ms", _ms(CONNECTION_IDLE)),
        ("grpc.max_connection_age_ms", _ms(CONNECTION_AGE)),
        ("grpc.max_connection_age_grace_ms", _ms(longest + dt.timedelta(minutes=1))),
        ("grpc.keepalive_time_ms", _ms(dt.timedelta(minutes=5))),
        ("grpc.keepalive_timeout_ms", _ms(dt.timedelta(seconds=20))),
    ]


def _ms(d: dt.timedelta) -> int:
    return min(int(d.total_seconds() * 1000), 2**31 - 1)


def _bind(
    server: grpc.Server, address: str, creds: grpc.ServerCredentials, config: Config, key: str
) -> int:
    try:
        port = server.add_secure_port(address, creds)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        raise ConfigError(
            f"{config.path}: server.{key}: cannot listen on {address} "
            "(address in use or not local); choose another HOST:PORT"
        )
    return int(port)
