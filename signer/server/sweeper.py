"""The background sweeper: expiry, recovery and alerts on a timer, whatever goes wrong.

Every round it moves PENDING requests past their TTL to EXPIRED, signs
APPROVED requests that a crash or an outage left unsigned (invariant 9), and
raises the alerts the new requests call for (`signer.core.alerts`). No
exception ends it: a step that fails is logged with the exception's type and
tried again on the next round, and one step's failure never skips the other.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import structlog

from signer.core.machine import Core

__all__ = ["Sweeper"]

log = structlog.get_logger("signer.server.sweeper")
_MAX_ERROR = 500  # characters of an exception's text in the log line


class Sweeper:
    """Runs `sweep()` every `interval` seconds on a daemon thread until `stop()`."""

    def __init__(
        self,
        core: Core,
        *,
        interval: float = 1.0,
        min_age: dt.timedelta = dt.timedelta(seconds=10),
    ) -> None:
        self.core, self.interval, self.min_age = core, interval, min_age
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def sweep(self) -> None:
        """One round: expire what is due, sign what a crash left approved, and alert on
        the requests made since the last round."""
        self._step("expire", self.core.expire_due)
        self._step("recover", lambda: self.core.recover(min_age=self.min_age))
        self._step("alerts", self.core.raise_alerts)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()

    @staticmethod
    def _step(name: str, step: Callable[[], int]) -> None:
        try:
            step()
        except Exception as e:  # noqa: BLE001 (the sweeper must outlive any failure)
            log.error(
                "sweeper step failed; will retry",
                step=name,
                error_type=type(e).__name__,
                error=str(e)[:_MAX_ERROR],
            )
