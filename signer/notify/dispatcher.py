"""The outbox's dispatcher: every replica runs one; each notification leaves once.

A round, in one short store transaction: each sink's cursor moves over the audit
entries committed since it last looked, putting the ones it wants in the outbox
(`Tx.enqueue`); then up to `batch` due items no one holds are taken, for a
lease. They are posted outside any transaction and, in a second one, removed or
put back due later with a doubling backoff; an item failing for `give_up_after`
is kept, given up (a metric and a log line say so). An item whose server died
while posting is taken by another once its lease runs out: at least once, and
once across replicas while they live (write transactions are serialized).

A sink seen for the first time starts at the end of the log: it is told of what
happens from then on, not of the history. Nothing here is on the signing path:
a round runs on its own thread, woken by the core's events (`poke`) and every
`poll` seconds for other replicas' entries; an error ends the round, never the
thread, and no failure reaches a caller.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog

from signer.audit.entry import AuditEntry
from signer.notify.messages import alert_of, event_of, notification
from signer.notify.webhook import DeliveryError, Sink, deliver
from signer.store.base import AuditFilter, OutboxItem, Store, Tx

__all__ = ["Dispatcher", "Outcome"]

log = structlog.get_logger("signer.notify")

_SCAN = 1000  # audit entries a round reads past a cursor
Outcome = Callable[[str, str, bool], None]  # (sink, event, delivered)


class Dispatcher:
    """Delivers the notifications of `sinks` from `store`'s audit log."""

    def __init__(
        self,
        store: Store,
        sinks: Sequence[Sink],
        origin: str,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        poll: float = 0.5,
        gather: float = 0.02,
        batch: int = 64,
        retry_min: dt.timedelta = dt.timedelta(seconds=1),
        retry_max: dt.timedelta = dt.timedelta(minutes=5),
        give_up_after: dt.timedelta = dt.timedelta(hours=24),
        outcome: Outcome | None = None,
        owner: str = "",
        lease: dt.timedelta | None = None,
    ) -> None:
        self.store, self.origin, self.clock = store, origin, clock
        self.sinks = {s.name: s for s in sinks}
        self.poll, self.batch, self.gather = poll, batch, gather
        self.retry_min, self.retry_max, self.give_up_after = retry_min, retry_max, give_up_after
        self.outcome = outcome
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        # How long an item taken is this server's: past any delivery's time (a request's
        # timeout bounds each read and write of it, not their sum), unless `lease` says.
        longest = max((s.timeout for s in sinks), default=0)
        self.lease = lease or dt.timedelta(seconds=longest * 3 + 10)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=min(8, max(1, len(sinks))))

    # -- the thread -----------------------------------------------------------------------

    def poke(self, *_: object) -> None:
        """Run a round soon (an event hook: something was committed)."""
        self._wake.set()

    def prime(self) -> None:
        """Start each new sink's cursor at the end of the log (before the server serves,
        so that no event after the start is missed)."""
        with self.store.transaction() as tx:
            for sink in self.sinks.values():
                if tx.outbox_cursor(sink.name) is None:
                    tx.set_outbox_cursor(sink.name, tx.tree_size() - 1)

    def start(self) -> None:
        self.prime()
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.poll):
                # Events come in bursts (a decision, its quorum, its signature): gather
                # them into one round, so the outbox costs a few commits a second at
                # most, whatever the rate of requests.
                self._stop.wait(self.gather)
            self._wake.clear()
            try:
                while self.round() and not self._stop.is_set():
                    pass  # a full batch: there may be more due at once
            except Exception as e:  # noqa: BLE001 (the dispatcher must outlive any failure)
                log.error(
                    "notification round failed; will retry",
                    error_type=type(e).__name__,
                    error=str(e)[:500],
                )

    # -- one round ------------------------------------------------------------------------

    def round(self) -> bool:
        """Take in new entries, then deliver what is due; whether a full batch was taken."""
        if not self.sinks:
            return False
        now = self.clock()
        with self.store.transaction() as tx:
            for sink in self.sinks.values():
                after = tx.outbox_cursor(sink.name)
                if after is None:  # a new sink starts at the end of the log
                    tx.set_outbox_cursor(sink.name, tx.tree_size() - 1)
                    continue
                heads = tx.audit_heads(after, _SCAN)
                if not heads:
                    continue
                wanted = [
                    h.index
                    for h in heads
                    if (event := event_of(h.event)) is not None
                    and sink.wants(event, h.key_name, alert_of(h.event) is not None)
                ]
                tx.enqueue(sink.name, wanted, now)
                tx.set_outbox_cursor(sink.name, heads[-1].index)
            items = tx.claim(self.owner, now, now + self.lease, self.batch)
            items = [i for i in items if i.sink in self.sinks]  # a sink since removed: left
            entries = {i.index: _entry(tx, i.index) for i in items}
        if not items:
            return False
        results = list(self._pool.map(lambda i: self._post(i, *entries[i.index]), items))
        now = self.clock()
        with self.store.transaction() as tx:
            for item, error in zip(items, results, strict=True):
                if error is None:
                    tx.delivered(item, self.owner)
                    continue
                waited = now - item.created
                dead = waited >= self.give_up_after
                backoff = min(self.retry_min * (2 ** min(item.attempts, 20)), self.retry_max)
                tx.retry_later(item, self.owner, now + backoff, error, dead)
                if dead:
                    log.error(
                        "notification given up", sink=item.sink, audit_index=item.index, error=error
                    )
        return len(items) >= self.batch

    def _post(self, item: OutboxItem, entry: AuditEntry, key: str) -> str | None:
        """Deliver one item; None, or why it failed."""
        sink = self.sinks[item.sink]
        n = notification(entry, key, self.origin)
        try:
            deliver(sink, n)
        except DeliveryError as e:
            log.warning(
                "notification not delivered; will retry",
                sink=sink.name,
                audit_index=item.index,
                attempt=item.attempts + 1,
                error=str(e)[:500],
            )
            self._tell(sink.name, n.event, False)
            return str(e)
        self._tell(sink.name, n.event, True)
        return None

    def _tell(self, sink: str, event: str, delivered: bool) -> None:
        if self.outcome is not None:
            try:
                self.outcome(sink, event, delivered)
            except Exception:  # a metric's failure never stops a delivery
                log.exception("notification outcome hook failed")


def _entry(tx: Tx, index: int) -> tuple[AuditEntry, str]:
    """The audit entry at `index` and the key it is about."""
    (entry,) = tx.list_audit(AuditFilter(), index - 1, 1)
    (head,) = tx.audit_heads(index - 1, 1)
    return entry, head.key_name
