"""The outbox's dispatcher: every replica runs one; each notification leaves once.

A round, in one short store transaction: each sink's cursor moves over the audit
entries committed since it last looked, putting the ones it wants in the outbox
(`Tx.enqueue`); then, for each sink not busy posting, up to `batch` of its due
items no one holds are taken, for a lease that outlasts posting them all (each
post has an overall deadline, `Sink.timeout`). Each sink posts on a thread of its
own, so a slow or hostile receiver holds up only itself; its items are then
removed, or put back due later with a doubling backoff, in a second transaction.
An item failing for `give_up_after` is kept, given up (a metric and a log line
say so), and purged a week later. An item whose server died while posting is
taken by another once its lease runs out: at least once, and once across
replicas while they live (write transactions are serialized).

A sink seen for the first time starts at the end of the log: it is told of what
happens from then on, not of the history. Nothing here is on the signing path:
rounds run on their own thread, woken by the core's events (`poke`) and every
`poll` seconds for other replicas' entries; an error ends the round, never the
thread, and no failure reaches a caller. Entries are read one per transaction,
so a large one holds the store for no longer than reading it.
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
from signer.store.base import AuditFilter, OutboxItem, Store

__all__ = ["Dispatcher", "Outcome"]

log = structlog.get_logger("signer.notify")

_SCAN = 1000  # audit entries a round reads past a cursor
_PURGE_AFTER = dt.timedelta(days=7)  # given-up items are kept this long
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
        batch: int = 16,
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
        # How long the items taken are this server's: past posting a whole batch, one
        # after the other, each within its sink's timeout, unless `lease` says.
        longest = max((s.timeout for s in sinks), default=0)
        self.lease = lease or dt.timedelta(seconds=longest * batch + 10)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy: set[str] = set()  # sinks posting a batch now
        self._busy_lock = threading.Lock()
        self._posting = {s.name: ThreadPoolExecutor(1, f"notify-{s.name}") for s in sinks}

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
        for pool in self._posting.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def idle(self) -> bool:
        """Whether no sink is posting (for tests and a clean stop)."""
        with self._busy_lock:
            return not self._busy

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._wake.wait(self.poll):
                # Events come in bursts (a decision, its quorum, its signature): gather
                # them into one round, so the outbox costs a few commits a second at
                # most, whatever the rate of requests.
                self._stop.wait(self.gather)
            self._wake.clear()
            try:
                self.round()
            except Exception as e:  # noqa: BLE001 (the dispatcher must outlive any failure)
                log.error(
                    "notification round failed; will retry",
                    error_type=type(e).__name__,
                    error=str(e)[:500],
                )

    # -- one round ------------------------------------------------------------------------

    def round(self) -> int:
        """Take in new entries, then start posting what is due to each idle sink; how
        many items were taken."""
        if not self.sinks:
            return 0
        now = self.clock()
        with self._busy_lock:
            idle = [name for name in self.sinks if name not in self._busy]
        taken: dict[str, list[OutboxItem]] = {}
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
            for name in idle:
                items = tx.claim(self.owner, now, now + self.lease, self.batch, name)
                if items:
                    taken[name] = items
            tx.purge_given_up(now - _PURGE_AFTER)
        for name, items in taken.items():
            with self._busy_lock:
                self._busy.add(name)
            self._posting[name].submit(self._post_all, name, items)
        if any(len(items) >= self.batch for items in taken.values()):
            self.poke()  # a full batch: more may be due at once
        return sum(map(len, taken.values()))

    def _post_all(self, name: str, items: list[OutboxItem]) -> None:
        """Post one sink's batch, in order, then record how each went."""
        try:
            results: list[str | None] = []
            for item in items:  # a stopping server posts no more (the rest's leases end)
                results.append(self._post(item) if not self._stop.is_set() else "stopped")
            now = self.clock()
            with self.store.transaction() as tx:
                for item, error in zip(items, results, strict=True):
                    if error is None:
                        tx.delivered(item, self.owner)
                        continue
                    dead = now - item.created >= self.give_up_after
                    backoff = min(self.retry_min * (2 ** min(item.attempts, 20)), self.retry_max)
                    tx.retry_later(item, self.owner, now + backoff, error, dead)
                    if dead:
                        log.error(
                            "notification given up",
                            sink=name,
                            audit_index=item.index,
                            error=error,
                        )
        except Exception as e:  # noqa: BLE001 (the items' leases run out: posted again)
            log.error("notification batch failed", sink=name, error_type=type(e).__name__)
        finally:
            with self._busy_lock:
                self._busy.discard(name)
            self.poke()

    def _post(self, item: OutboxItem) -> str | None:
        """Deliver one item; None, or why it failed (whatever went wrong)."""
        sink = self.sinks[item.sink]
        event = "?"
        try:
            entry, key = self._entry(item.index)
            n = notification(entry, key, self.origin)
            event = n.event
            deliver(sink, n)
        except Exception as e:  # noqa: BLE001 (any failure is this item's, retried)
            why = str(e) if isinstance(e, DeliveryError) else type(e).__name__
            log.warning(
                "notification not delivered; will retry",
                sink=sink.name,
                audit_index=item.index,
                attempt=item.attempts + 1,
                error=why[:500],
            )
            self._tell(sink.name, event, False)
            return why
        self._tell(sink.name, event, True)
        return None

    def _entry(self, index: int) -> tuple[AuditEntry, str]:
        """The audit entry at `index` and the key it is about, in a transaction of its own."""
        with self.store.transaction() as tx:
            (entry,) = tx.list_audit(AuditFilter(), index - 1, 1)
            (head,) = tx.audit_heads(index - 1, 1)
        return entry, head.key_name

    def _tell(self, sink: str, event: str, delivered: bool) -> None:
        if self.outcome is not None:
            try:
                self.outcome(sink, event, delivered)
            except Exception:  # a metric's failure never stops a delivery
                log.exception("notification outcome hook failed")
