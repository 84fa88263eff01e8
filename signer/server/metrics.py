"""Prometheus metrics, served on their own plain-HTTP address when asked for.

Off by default: `server.metrics_listen` (or `signer serve --metrics-listen
HOST:PORT`) turns them on. The endpoint has no authentication, so it carries
counts and timings only, never an identity, digest, key or request id; bind
it to loopback or a monitoring network.

- `signer_requests{state}`: requests in the store by state (every state,
  zeros included), read at scrape time, so every replica reports the whole
  database;
- `signer_pending_requests`: PENDING requests (the officers' queue);
- `signer_audit_entries`: the audit log's size;
- `signer_store_up`: 1 if the scrape could read the store, else 0 (and the
  store-derived gauges are left out rather than the scrape failing);
- `signer_sign_seconds`: histogram of the token's time per signed request
  (the whole batch: one request may carry many digests);
- `signer_batch_digests`: histogram of digests per signed request;
- `signer_signed_requests_total`, `signer_sign_failures_total`: requests this
  replica signed, or failed because the token failed;
- `signer_token_errors_total`, `signer_token_resets_total`: failed token calls,
  and sessions logged in again after being lost (a token reset);
- `signer_rejected_calls_total{reason}`: calls refused (ROLE_NOT_ALLOWED,
  TOO_MANY_CALLS, MESSAGE_TIMEOUT, BAD_STATEMENT, ...), every one, also those
  past the audit log's per-identity rate; the reason is one of the server's
  own codes, never a caller's text;
- `signer_audit_head_refusals_total`: checkpoints the audit key refused to sign
  because the stored log does not extend the token's tree head (the reason,
  AUDIT_ROLLBACK or AUDIT_HEAD_MISMATCH, is in the call's error and the log):
  alert on any increase.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from signer.core.events import Event, Kind
from signer.errors import ConfigError
from signer.model import State
from signer.parsing import parse_address
from signer.store import Store

__all__ = ["Metrics"]

_SIGN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class TokenCounts(Protocol):
    errors: int
    resets: int


class _Collector(Collector):
    """Gauges read from the store and counters read from the token at each scrape."""

    def __init__(self, store: Store, token: TokenCounts) -> None:
        self._store = store
        self._token = token

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("signer_store_up", "1 if the store could be read at scrape")
        try:
            with self._store.transaction() as tx:
                counts = tx.count_by_state()
                size = tx.tree_size()
                outbox = tx.outbox_counts()
        except Exception:  # noqa: BLE001 (a scrape reports the store down, never fails)
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            by_state = GaugeMetricFamily(
                "signer_requests", "Signing requests in the store by state", labels=["state"]
            )
            for state in State:
                by_state.add_metric([state.value], counts.get(state.value, 0))
            yield by_state
            yield GaugeMetricFamily(
                "signer_pending_requests",
                "Requests waiting for officers' decisions",
                value=counts.get(State.PENDING.value, 0),
            )
            yield GaugeMetricFamily("signer_audit_entries", "Entries in the audit log", value=size)
            waiting = GaugeMetricFamily(
                "signer_notifications_waiting",
                "Notifications not yet delivered, by webhook",
                labels=["sink"],
            )
            given_up = GaugeMetricFamily(
                "signer_notifications_given_up",
                "Notifications given up after failing for notify.give_up_after, by webhook",
                labels=["sink"],
            )
            for sink, (w, g) in sorted(outbox.items()):
                waiting.add_metric([sink], w)
                given_up.add_metric([sink], g)
            yield waiting
            yield given_up
        yield CounterMetricFamily(
            "signer_token_errors", "Token calls that failed", value=self._token.errors
        )
        yield CounterMetricFamily(
            "signer_token_resets",
            "Token sessions logged in again after being lost",
            value=self._token.resets,
        )

    def describe(self) -> Iterable[Metric]:
        return []  # collected live; no fixed description to register ahead


class Metrics:
    """The server's metrics in a registry of their own; `serve` exposes them."""

    def __init__(self, store: Store, token: TokenCounts) -> None:
        self.registry = CollectorRegistry()
        self.sign_seconds = Histogram(
            "signer_sign_seconds",
            "Token time to sign one request (all its digests)",
            buckets=_SIGN_BUCKETS,
            registry=self.registry,
        )
        self.batch_digests = Histogram(
            "signer_batch_digests",
            "Digests per signed request",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.signed = Counter(
            "signer_signed_requests", "Requests signed by this replica", registry=self.registry
        )
        self.sign_failures = Counter(
            "signer_sign_failures",
            "Requests failed because the token failed to sign",
            registry=self.registry,
        )
        self.rejected_calls = Counter(
            "signer_rejected_calls",
            "Calls refused (unauthenticated, unauthorized, over a cap, bad input...), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.head_refusals = Counter(
            "signer_audit_head_refusals",
            "Checkpoints refused: the stored audit log does not extend the token's tree head",
            registry=self.registry,
        )
        self.alerts = Counter(
            "signer_alerts",
            "Alerts raised by this replica, by kind (off_hours, first_seen, burst, denied, frozen)",
            ["kind"],
            registry=self.registry,
        )
        self.notifications = Counter(
            "signer_notifications",
            "Webhook deliveries tried by this replica, by webhook, event and result",
            ["sink", "event", "result"],
            registry=self.registry,
        )
        self.registry.register(_Collector(store, token))
        self._http: WSGIServer | None = None

    def on_event(self, event: Event) -> None:
        """The core's lifecycle events this replica counts."""
        if event.kind is Kind.DENIED:
            self.alerts.labels(kind="denied").inc()
        if event.kind is Kind.SIGNED:
            self.sign_seconds.observe(event.details["seconds"])
            self.batch_digests.observe(event.details["signatures"])
            self.signed.inc()
        elif event.kind is Kind.FAILED and event.details.get("token"):
            self.sign_failures.inc()
        elif event.kind is Kind.ALERT:
            self.alerts.labels(kind=event.details.get("alert") or "unknown").inc()
        elif event.kind is Kind.REJECTED:
            self.rejected_calls.labels(reason=event.details.get("reason") or "UNKNOWN").inc()

    def notified(self, sink: str, event: str, delivered: bool) -> None:
        """One webhook delivery tried (`signer.notify.Dispatcher`'s outcome hook)."""
        result = "delivered" if delivered else "failed"
        self.notifications.labels(sink=sink, event=event, result=result).inc()

    def audit_head_refused(self, reason: str) -> None:
        self.head_refusals.inc()

    def serve(self, address: str, where: str = "server.metrics_listen") -> int:
        """Listen on `address` (HOST:PORT); return the port."""
        from prometheus_client import start_http_server

        try:
            host, port = parse_address(address)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        try:
            server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as e:
            raise ConfigError(
                f"{where}: cannot listen on {address} ({e.strerror or e}); choose another HOST:PORT"
            ) from None
        self._http = server
        return int(server.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
