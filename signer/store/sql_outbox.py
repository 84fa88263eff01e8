"""The notification outbox's queries (`signer.notify`), and the alert watch's
(`signer.core.alerts`), in the SQL both backends speak.

An item is one audit entry to be delivered to one sink. It is taken (`claim`)
by one server for a lease and then removed (`delivered`) or put back due later
(`retry_later`); an item whose holder died is taken again once its lease has
run out, so every item is delivered at least once. Write transactions are
serialized on both backends (`signer.store.sqlite`, `signer.store.postgres`):
two replicas never hold one item at once.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from signer.encoding import format_time, parse_time
from signer.store.base import AuditHead, OutboxItem

__all__ = ["OutboxQueries"]

_MAX_ERROR = 500  # characters of a delivery's error kept with its item


class OutboxQueries(abc.ABC):
    """The outbox part of `signer.store.sql.SqlTx`."""

    @abc.abstractmethod
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    def _run(self, sql: str, args: Sequence[Any] = ()) -> None: ...

    def audit_heads(self, after: int, limit: int) -> list[AuditHead]:
        return [
            AuditHead(int(i), e, k)
            for i, e, k in self._rows(
                "SELECT idx, event, key_name FROM audit_log WHERE idx > ? ORDER BY idx LIMIT ?",
                (after, limit),
            )
        ]

    def mark_seen(self, key_name: str, kind: str, value: str, index: int) -> bool:
        if self._rows(
            "SELECT 1 FROM seen WHERE key_name = ? AND kind = ? AND value = ?",
            (key_name, kind, value),
        ):
            return False
        self._run("INSERT INTO seen VALUES (?, ?, ?, ?)", (key_name, kind, value, index))
        return True

    def signed_with(self, key_name: str, kind: str, value: str) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM signed_values WHERE key_name = ? AND kind = ? AND value = ?",
                (key_name, kind, value),
            )
        )

    def mark_signed(self, key_name: str, values: Mapping[str, str]) -> None:
        for kind, value in sorted(values.items()):
            if not self.signed_with(key_name, kind, value):
                self._run("INSERT INTO signed_values VALUES (?, ?, ?)", (key_name, kind, value))

    def created_since(self, key_name: str, since: dt.datetime, upto_request: str) -> int:
        rows = self._rows(
            "SELECT count(*) FROM requests WHERE key_name = ? AND created >= ? "
            "AND seq <= (SELECT seq FROM requests WHERE id = ?)",
            (key_name, format_time(since), upto_request),
        )
        return int(rows[0][0]) if rows else 0

    def outbox_cursor(self, sink: str) -> int | None:
        rows = self._rows("SELECT after_idx FROM outbox_cursors WHERE sink = ?", (sink,))
        return int(rows[0][0]) if rows else None

    def set_outbox_cursor(self, sink: str, after: int) -> None:
        self._run(
            "INSERT INTO outbox_cursors VALUES (?, ?) "
            "ON CONFLICT (sink) DO UPDATE SET after_idx = excluded.after_idx",
            (sink, after),
        )

    def enqueue(self, sink: str, indexes: list[int], now: dt.datetime) -> None:
        at = format_time(now)
        for index in indexes:
            self._run(
                "INSERT INTO outbox (sink, idx, created, due) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sink, idx) DO NOTHING",
                (sink, index, at, at),
            )

    def claim(
        self, owner: str, now: dt.datetime, lease_until: dt.datetime, limit: int, sink: str
    ) -> list[OutboxItem]:
        at = format_time(now)
        rows = self._rows(
            "SELECT sink, idx, attempts, created FROM outbox WHERE sink = ? AND dead = 0 "
            "AND due <= ? AND lease_until <= ? ORDER BY due, idx LIMIT ?",
            (sink, at, at, limit),
        )
        until = format_time(lease_until)
        items = [OutboxItem(s, int(i), int(a), parse_time(c)) for s, i, a, c in rows]
        for item in items:
            self._run(
                "UPDATE outbox SET owner = ?, lease_until = ? WHERE sink = ? AND idx = ?",
                (owner, until, item.sink, item.index),
            )
        return items

    def purge_given_up(self, before: dt.datetime) -> None:
        self._run("DELETE FROM outbox WHERE dead = 1 AND due < ?", (format_time(before),))

    def delivered(self, item: OutboxItem, owner: str) -> bool:
        held = self._rows(
            "SELECT 1 FROM outbox WHERE sink = ? AND idx = ? AND owner = ?",
            (item.sink, item.index, owner),
        )
        self._run("DELETE FROM outbox WHERE sink = ? AND idx = ?", (item.sink, item.index))
        return bool(held)

    def retry_later(
        self, item: OutboxItem, owner: str, due: dt.datetime, error: str, dead: bool
    ) -> None:
        self._run(
            "UPDATE outbox SET attempts = attempts + 1, due = ?, owner = '', lease_until = '', "
            "last_error = ?, dead = ? WHERE sink = ? AND idx = ? AND owner = ?",
            (format_time(due), error[:_MAX_ERROR], int(dead), item.sink, item.index, owner),
        )

    def outbox_counts(self) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for sink, dead, n in self._rows(
            "SELECT sink, dead, count(*) FROM outbox GROUP BY sink, dead"
        ):
            waiting, given_up = counts.get(sink, (0, 0))
            counts[sink] = (waiting, given_up + int(n)) if dead else (waiting + int(n), given_up)
        return counts
