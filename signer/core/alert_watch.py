"""The core's side of alerts (`signer.core.alerts`): look at new requests, record alerts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager

import structlog

from signer.core.alerts import CURSOR, AlertRules, detect
from signer.core.events import Event, Hook, Kind
from signer.store.base import AuditFilter, Tx

__all__ = ["AlertWatch"]

log = structlog.get_logger("signer.core.alerts")

_SCAN = 500  # entries a round looks at


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
        """One round: an `alert.KIND` entry for each alert the new requests raise, in the
        transaction that moves the cursor past them; how many were raised."""
        rules = self.alert_rules
        if rules is None:
            return 0
        raised: list[Event] = []
        with self._tx() as tx:
            after = tx.outbox_cursor(CURSOR)
            if after is None:
                tx.set_outbox_cursor(CURSOR, tx.tree_size() - 1)
                return 0
            heads = tx.audit_heads(after, _SCAN)
            if not heads:
                return 0
            now = self.clock()
            for h in heads:
                if h.event != "request.created":
                    continue
                (entry,) = tx.list_audit(AuditFilter(), h.index - 1, 1)
                for kind, details in detect(tx, rules, entry, h.key_name):
                    tx.append_audit(
                        now,
                        f"alert.{kind}",
                        "signer",
                        entry.request_id,
                        h.key_name,
                        {**details, "request_index": entry.index},
                    )
                    raised.append(
                        Event(Kind.ALERT, entry.request_id, h.key_name, "signer", {"alert": kind})
                    )
            tx.set_outbox_cursor(CURSOR, heads[-1].index)
        for event in raised:
            log.warning("alert", alert=event.details["alert"], key_name=event.key_name)
            self.events.emit(event)
        return len(raised)
