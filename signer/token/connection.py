"""One logged-in session on one token: the lock, the retry and the recovery.

Invariants upheld here (docs/architecture.md §3.1, §8):
- every token call runs under one lock on one long-lived logged-in session,
  because python-pkcs11 gives SoftHSM no locking callbacks; the session is
  never closed per request (closing logs every session out). Key handles are
  found once and cached. When the session is lost (token reset, session
  closed, logged out, stale handles, the token gone for a while: a SoftHSM
  token directory moved away and back, a network HSM restarting) the module
  is finalized and initialised again (SoftHSM 2.6 reads its token directory
  only in C_Initialize: once it has lost a token, C_GetSlotList fails until
  then), the token is found again by label (its slot may have changed), logged
  in to, the handles are re-found, and the call is tried once more. While the
  token cannot be found, calls fail at once with `TokenError` (UNAVAILABLE)
  and it is looked for again at most once a second; `check` is the probe the
  server's health status follows. Session handles are numbered afresh after
  C_Initialize, so a session from before is dropped, never closed (closing it
  could close a new one with the same number);
- the PIN is kept in memory only, to log in again, and never printed.

PKCS#11 exceptions are translated to `TokenError`s in `signer.token` and
nowhere else; `Token` (`signer.token.hsm`) builds the key operations on this.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
import structlog
from pkcs11 import Attribute, ObjectClass

from signer.errors import (
    ConfigError,
    KeyNotFoundError,
    SignerError,
    TokenError,
    TokenNotFoundError,
    TokenPinError,
)

__all__ = ["Connection", "TokenGone", "error_name"]

log = structlog.get_logger("signer.token")
T = TypeVar("T")


class TokenGone(p11e.PKCS11Error):
    """A search came back without a key known to be in the token: it went away."""


# The session (or the token behind it) went away: open and log in again, then retry.
_SESSION_LOST = (
    TokenGone,
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.DeviceRemoved,
    p11e.TokenNotPresent,
)


_RECOVERY_INTERVAL = 1.0  # seconds between attempts to find a lost token again


class Connection:
    """One logged-in session on one token; every call serialized by one lock."""

    def __init__(self, module_path: str, label: str, pin: str) -> None:
        self._lock = threading.RLock()
        self._keys: dict[str, Any] = {}
        self._pin = pin  # kept in memory only, to log in again after a token reset
        self.label = label
        self.module_path = module_path
        self.resets = 0  # sessions reopened after being lost
        self.errors = 0  # token calls that failed
        self._lost: TokenError | None = None  # why the token cannot be reached, while it cannot
        self._next_attempt = 0.0  # monotonic time of the next attempt to find it again
        if not os.path.exists(module_path):
            raise ConfigError(
                f"PKCS#11 module {module_path} does not exist; install it "
                "(Debian: apt-get install softhsm2) or fix token.module",
                reason="TOKEN_MODULE_MISSING",
            )
        try:
            lib = pkcs11.lib(module_path)
            token = lib.get_token(token_label=label)
        except p11e.NoSuchToken:
            raise TokenNotFoundError(
                f"no token labelled {label!r} in {module_path}; check token.label "
                "(and SOFTHSM2_CONF / token.softhsm2_conf for SoftHSM)"
            ) from None
        except p11e.MultipleTokensReturned:
            raise TokenNotFoundError(f"more than one token labelled {label!r}") from None
        except p11e.PKCS11Error as e:
            raise TokenError(f"cannot open PKCS#11 module {module_path}: {error_name(e)}") from e
        self._lib = lib
        self._token = token
        self._session: Any = self._login()

    def _login(self) -> Any:
        try:
            return self._token.open(user_pin=self._pin, rw=True)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            raise TokenPinError(
                f"the token {self.label!r} rejected the PIN; check the PIN file or variable "
                "(the PIN itself is never printed)"
            ) from None
        except p11e.PinLocked:
            raise TokenPinError(f"the PIN of token {self.label!r} is locked") from None
        except p11e.PKCS11Error as e:
            raise TokenError(f"cannot log in to token {self.label!r}: {error_name(e)}") from e

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        with self._lock:
            try:
                if self._session is None:  # lost earlier: find it again first
                    self._reopen()
                yield
            except SignerError:
                raise
            except p11e.PKCS11Error as e:
                self.errors += 1
                raise TokenError(f"token {self.label!r}: {what} failed: {error_name(e)}") from e

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn` under the lock; if the session was lost, log in again and retry once.

        Only for calls that change nothing in the token (signing, reading) or that
        are idempotent (setting a label), so a retry cannot do anything twice.
        """
        with self._call(what):
            try:
                return fn()
            except _SESSION_LOST as e:
                log.warning(
                    "token session lost; logging in again", token=self.label, error=error_name(e)
                )
                self._reopen()
            return fn()

    def _reopen(self) -> None:
        """Drop the session and every cached handle; initialise the module again, find
        the token by label and log in. While that fails, tries at most once a second."""
        lost = self._lost
        if lost is not None and time.monotonic() < self._next_attempt:
            self.errors += 1
            raise type(lost)(str(lost), reason=lost.reason)
        self._keys.clear()
        if self._session is not None:
            with contextlib.suppress(p11e.PKCS11Error):  # the session may be gone already
                self._session.close()
            self._session = None  # from here on, never touched again (see the docstring)
        try:
            self._session = self._find_again()
        except TokenError as e:
            self.errors += 1
            self._next_attempt = time.monotonic() + _RECOVERY_INTERVAL
            if self._lost is None:
                log.error("token unreachable; calls fail until it is back", token=self.label)
            self._lost = e
            raise
        if self._lost is not None:
            log.warning("token reachable again; logged in", token=self.label)
        self._lost = None
        self.resets += 1

    def _find_again(self) -> Any:
        try:
            self._lib.reinitialize()
            self._token = self._lib.get_token(token_label=self.label)
        except p11e.NoSuchToken:
            raise TokenNotFoundError(
                f"the token {self.label!r} is not reachable (no token with that label in "
                f"{self.module_path}); it is looked for again at the next call"
            ) from None
        except p11e.MultipleTokensReturned:
            raise TokenNotFoundError(f"more than one token labelled {self.label!r}") from None
        except p11e.PKCS11Error as e:
            raise TokenError(f"the token {self.label!r} is not reachable: {error_name(e)}") from e
        return self._login()

    def check(self, names: Sequence[str]) -> None:
        """Raise TokenError unless every key in `names` is found in the token now.

        The probe behind the server's health status: a key missing from a search
        means the token went away under the session (see the docstring), so the
        token is looked for again (at most once a second) before the probe fails.
        """

        def find_all() -> None:
            for name in names:
                if self._find(ObjectClass.PRIVATE_KEY, name) is None:
                    raise KeyNotFoundError(f"no key named {name!r} in token {self.label!r}")

        with self._call("checking the token"):
            try:
                find_all()
            except KeyNotFoundError:
                self._reopen()
                find_all()

    def close(self) -> None:
        # Already closed or token gone: nothing left to release.
        with self._lock, contextlib.suppress(p11e.PKCS11Error):
            if self._session is not None:
                self._session.close()

    # -- internals (caller holds the lock) --------------------------------

    def _find(self, cls: Any, name: str) -> Any | None:
        found = list(self._session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: name}))
        if len(found) > 1:
            raise TokenError(f"more than one {cls.name} labelled {name!r} in the token")
        return found[0] if found else None

    def _private(self, name: str) -> Any:
        priv = self._keys.get(name)
        if priv is None:
            priv = self._find(ObjectClass.PRIVATE_KEY, name)
            if priv is None:
                raise KeyNotFoundError(f"no key named {name!r} in token {self.label!r}")
            self._keys[name] = priv
        return priv


def error_name(e: Exception) -> str:
    return type(e).__name__ + (f" ({e})" if str(e) else "")
