"""Stand-alone audit entries and the audit of refused calls.

A mixin of the core. `record` appends an event no request transition carries
(server start, key generation) in its own transaction: the caller's effect
happens only if it returns (invariant 3). `record_rejection` audits each call
the server refused, with its reason, method and a message cut to 1 KiB, up to
`Limits.max_rejections_per_minute` entries per identity and minute; past that
rate a caller cannot grow the log, and the calls it made are counted into the
next entry let through (`suppressed_before`), never lost (docs/architecture.md §14). Every
refusal is also told to the core's event hook, audited or not.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import structlog

from signer.audit.entry import AuditEntry
from signer.core.events import Event, Hook, Kind
from signer.core.intake import Limits, is_request_id
from signer.errors import SignerError
from signer.store.base import Tx

__all__ = ["Recording"]

log = structlog.get_logger("signer.core.recording")

_MAX_RECORDED_MESSAGE = 1024  # a rejected call cannot bloat the audit log


class Recording:
    """Audits stand-alone events and refused calls; the core sets every attribute here."""

    clock: Callable[[], dt.datetime]
    limits: Limits
    events: Hook
    _rejections: dict[str, tuple[int, int, int]]  # identity -> minute, recorded, suppressed
    _rejections_lock: threading.Lock

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def record(
        self,
        event: str,
        actor: str,
        details: dict[str, Any],
        request_id: str = "",
        key_name: str = "",
    ) -> AuditEntry:
        """Append a stand-alone audit event (server start, key generation, rejections)."""
        with self._tx() as tx:
            return tx.append_audit(self.clock(), event, actor, request_id, key_name, details)

    def record_rejection(
        self, actor: str, method: str, error: SignerError, request_id: str = ""
    ) -> None:
        """Audit a rejected call; past the per-identity rate, count it into the next entry."""
        self.events.emit(  # every one, audited or not
            Event(
                Kind.REJECTED,
                request_id,
                actor=actor,
                details={"reason": error.reason, "method": method},
            )
        )
        with self._rejections_lock:
            minute = int(self.clock().timestamp() // 60)
            start, recorded, suppressed = self._rejections.get(actor, (minute, 0, 0))
            if start != minute:
                start, recorded = minute, 0
            if recorded >= self.limits.max_rejections_per_minute:
                self._rejections[actor] = (start, recorded, suppressed + 1)
                if suppressed == 0:  # once per identity and minute, not once per call
                    log.warning("rejections not audited: rate exceeded", identity=actor)
                return
            self._rejections[actor] = (start, recorded + 1, 0)
        details: dict[str, Any] = {
            **error.details,
            "method": method,
            "reason": error.reason,
            "message": str(error)[:_MAX_RECORDED_MESSAGE],
        }
        if suppressed:
            details["suppressed_before"] = suppressed
        try:
            self.record(
                "call.rejected",
                actor,
                details,
                request_id=request_id if is_request_id(request_id) else "",
            )
        except SignerError:
            with self._rejections_lock:  # not recorded: keep counting it
                s, r, n = self._rejections[actor]
                self._rejections[actor] = (s, r, n + suppressed)
            raise
