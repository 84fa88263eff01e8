"""Lifecycle events: one typed event per transition of a request, through one hook.

The core emits an `Event` after each transition is durable (its audit entry
committed): created, approved, quorum, signed, denied, expired, cancelled,
failed, and each call it refused. Whatever must follow a transition subscribes
to the core's `Hook`: today the waiters' wake-up (`Notifier`) and the metrics;
notifications and witnesses plug in the same way. A subscriber that raises is
logged and skipped: no subscriber can undo or block a transition.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

__all__ = ["Event", "Hook", "Kind", "Subscriber"]

log = structlog.get_logger("signer.core.events")


class Kind(enum.StrEnum):
    """What happened; the value is the audit log's event name."""

    CREATED = "request.created"
    APPROVED = "request.approved"
    QUORUM = "request.quorum"
    SIGNED = "request.signed"
    DENIED = "request.denied"
    EXPIRED = "request.expired"
    CANCELLED = "request.cancelled"
    FAILED = "request.failed"
    REJECTED = "call.rejected"
    ALERT = "alert"  # details: `alert`, its kind (`signer.core.alerts`)


_TERMINAL = frozenset({Kind.SIGNED, Kind.DENIED, Kind.EXPIRED, Kind.CANCELLED, Kind.FAILED})


@dataclass(frozen=True)
class Event:
    """One transition (or refused call). `details` by kind: SIGNED `seconds` (the token's
    time) and `signatures`; FAILED `token` (True when the token failed to sign); REJECTED
    `reason` and `method`."""

    kind: Kind
    request_id: str = ""
    key_name: str = ""
    actor: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """The request has reached a state it never leaves."""
        return self.kind in _TERMINAL


Subscriber = Callable[[Event], None]


class Hook:
    """The subscribers to a core's events, told in the order they subscribed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:  # a subscriber's failure never reaches the transition
                log.exception("event subscriber failed", kind=str(event.kind))
