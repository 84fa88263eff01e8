"""The core's side of alerts (`signer.core.alerts`): look at new requests, record alerts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager

import structlog

from signer.core.alerts import CURSOR, AlertRules, detect
from signer.core.events import Event, Hook, Kind
from signer.store.base import PAGE_BYTES, AuditFilter, Tx

__all__ = ["AlertWatch"]

log = structlog.get_logger("signer.core.alerts")

_PAGE = 50  # requests a page looks at (and at most PAGE_BYTES of their entries)
_PAGES = 20  # pages a call looks at


class AlertWatch:
    """Alerts on the requests committed since the last round; the core sets every
    attribute named here."""

    clock: Callable[[], dt.datetime]
    events: Hook
    alert_rules: AlertRules | None

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def prime_alerts(self) -> None:
        """Start the watch at the end of the log the first time (no alerts on history)."""
        if self.alert_rules is None:
            return
        with self._tx() as tx:
            if tx.outbox_cursor(CURSOR) is None:
                tx.set_outbox_cursor(CURSOR, tx.tree_size() - 1)

    def raise_alerts(self) -> int:
        """Alert on the requests made since the last call: an `alert.KIND` entry for each
        alert, in the transaction that moves the cursor past them, a page at a time
        (bounded in entries and bytes); how many alerts were raised."""
        if self.alert_rules is None:
            return 0
        raised = 0
        for _ in range(_PAGES):
            done, count = self._alert_page(self.alert_rules)
            raised += count
            if done:
                break
        return raised

    def _alert_page(self, rules: AlertRules) -> tuple[bool, int]:
        """One page: (whether the log is read to its end, alerts raised)."""
        raised: list[Event] = []
        with self._tx() as tx:
            after = tx.outbox_cursor(CURSOR)
            if after is None:
                tx.set_outbox_cursor(CURSOR, tx.tree_size() - 1)
                return True, 0
            page = tx.list_audit(AuditFilter(event="request.created"), after, _PAGE, PAGE_BYTES)
            now = self.clock()
            for entry in page:
                key = str(entry.details.get("key_name", ""))
                for kind, details in detect(tx, rules, entry, key):
                    tx.append_audit(
                        now,
                        f"alert.{kind}",
                        "signer",
                        entry.request_id,
                        key,
                        {**details, "request_index": entry.index},
                    )
                    raised.append(
                        Event(Kind.ALERT, entry.request_id, key, "signer", {"alert": kind})
                    )
            # No request after the page: the cursor goes to the end (past the alerts);
            # written only when it moves (an idle store is not written every second).
            moved = page[-1].index if page else tx.tree_size() - 1
            if moved != after:
                tx.set_outbox_cursor(CURSOR, moved)
        for event in raised:
            log.warning("alert", alert=event.details["alert"], key_name=event.key_name)
            self.events.emit(event)
        return not page, len(raised)
