"""The waiters' wake-up: a version counter and a bounded log of which requests changed.

The core publishes every change of a request here (through its event hook);
another replica's changes arrive through the store's listener. A waiter blocks
on a condition until its request may have finished, and is told "changed" too
when the bounded log no longer reaches back to when it started waiting, so no
change is ever missed, only over-reported (a waiter then reads its request
again). Holds no request data: what a waiter returns is always read from the
store, never from here.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["Notifier"]


class Notifier:
    """Wakes waiters when a request changes; keeps a bounded change log."""

    def __init__(self, history: int = 10_000) -> None:
        self._cond = threading.Condition()
        self._version = 0
        # (version, request id, whether the request may now be terminal)
        self._log: deque[tuple[int, str, bool]] = deque(maxlen=history)

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    def publish(self, request_id: str, terminal: bool = True) -> None:
        """Tell waiters `request_id` changed; `terminal=False` when it surely is not
        finished yet (another replica's change, of unknown kind, counts as terminal)."""
        with self._cond:
            self._version += 1
            self._log.append((self._version, request_id, terminal))
            self._cond.notify_all()

    def wait_for(self, request_id: str, since: int, timeout: float) -> tuple[int, bool]:
        """Block until `request_id` may have finished after `since`, or timeout:
        (version, changed).

        Reports a change too when the bounded log no longer reaches back to `since`.
        """

        def changed() -> bool:
            if self._log and self._log[0][0] > since + 1:
                return True
            for v, r, terminal in reversed(self._log):
                if v <= since:
                    return False
                if r == request_id and terminal:
                    return True
            return False

        with self._cond:
            hit = self._cond.wait_for(changed, timeout=max(timeout, 0))
            return self._version, hit

    def wait(self, since: int, timeout: float) -> tuple[int, list[str]]:
        """Block until a change after `since` or timeout; return (version, changed ids)."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > since, timeout=max(timeout, 0))
            changed = list(dict.fromkeys(r for v, r, _ in self._log if v > since))
            return self._version, changed
