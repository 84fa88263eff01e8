"""Posting a notification to a webhook, signed so that its receiver can check it.

A delivery is one HTTPS (or, for a listener on this host, HTTP) POST with a
bounded time; a 2xx answer is delivered, anything else (another status, a
redirect, a timeout, a refused connection) is a failure to try again later.
Redirects are never followed: a notification goes only where it is configured
to go.

The signature header is `X-Signer-Signature: t=UNIX_TIME,v1=HEX` where HEX is
HMAC-SHA256 under the sink's secret over `UNIX_TIME.BODY`; a receiver checks it
with `verify` (constant time) and refuses a time too far from its own clock, so
a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from signer.notify.messages import Notification, slack_message

__all__ = ["DeliveryError", "Sink", "deliver", "signature", "verify"]

MAX_SKEW = 300  # seconds a receiver accepts between the signature's time and its clock
_USER_AGENT = "signer-notify/1"


class DeliveryError(Exception):
    """A delivery that did not reach its sink (tried again later)."""


@dataclass(frozen=True)
class Sink:
    """One webhook: where, in which form, signed with which secret, told of what."""

    name: str
    url: str = field(repr=False)  # may itself be a secret (a Slack webhook's URL is)
    form: str = "json"  # "json" or "slack"
    secret: bytes = field(default=b"", repr=False)
    keys: frozenset[str] = frozenset()  # events of these keys only (empty: every key)
    events: frozenset[str] = frozenset()  # these events only (empty: every event)
    timeout: float = 5.0
    ca_file: str | None = None

    def wants(self, event: str, key: str, alert: bool = False) -> bool:
        """Whether this sink is told of `event` on `key` (a key filter leaves the events
        of no key, such as policy changes, to the event filter alone); an `alert` (a
        denial and a freeze are alerts too) reaches a sink that lists `alert`."""
        if self.events and event not in self.events and not (alert and "alert" in self.events):
            return False
        return not (self.keys and key and key not in self.keys)


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Signer-Signature` value of `body` sent at `timestamp`."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, now: float | None = None) -> bool:
    """Whether `header` is a valid signature of `body` under `secret`, made within
    `MAX_SKEW` seconds of `now` (what a receiver checks before trusting a delivery).
    Any malformed header is False, never an exception."""
    if not header.isascii():
        return False
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    stamp, mac = parts.get("t", ""), parts.get("v1", "")
    if not (stamp.isdigit() and len(stamp) <= 12):
        return False
    timestamp = int(stamp)
    if abs((time.time() if now is None else now) - timestamp) > MAX_SKEW:
        return False
    expected = signature(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, f"t={stamp},v1={mac}".encode())


def body_of(sink: Sink, n: Notification) -> bytes:
    payload = slack_message(n) if sink.form == "slack" else n.body
    return json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()


def deliver(sink: Sink, n: Notification, now: float | None = None) -> None:
    """POST `n` to `sink` within `sink.timeout` in all; DeliveryError says why it was
    not delivered (never the URL, which may be a secret)."""
    body = body_of(sink, n)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
        "X-Signer-Event": n.event,
        "X-Signer-Delivery": urllib.parse.quote(n.id, safe="/:.-_~"),
    }
    if sink.secret:
        stamp = int(time.time() if now is None else now)
        headers["X-Signer-Signature"] = signature(sink.secret, stamp, body)
    url = urllib.parse.urlsplit(sink.url)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        context = _context(sink.ca_file)
        conn = http.client.HTTPSConnection(
            url.hostname or "", url.port, timeout=sink.timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=sink.timeout)
    # The timeout bounds each read and write; this bounds the whole delivery, so a
    # receiver that trickles its answer is cut off at `sink.timeout` all the same.
    cut = threading.Timer(sink.timeout, _abort, (conn,))
    cut.daemon = True
    cut.start()
    try:
        conn.request("POST", path, body=body, headers=headers)
        status = conn.getresponse().status  # the status line and headers, not the body
    except OSError as e:
        raise DeliveryError(f"{type(e).__name__}: {e.strerror or 'no answer in time'}") from None
    except http.client.HTTPException as e:
        raise DeliveryError(f"the sink's answer is not HTTP ({type(e).__name__})") from None
    finally:
        cut.cancel()
        conn.close()
    if not 200 <= status < 300:
        raise DeliveryError(f"the sink answered HTTP {status}")


def _abort(conn: http.client.HTTPConnection) -> None:
    """End a delivery that ran out of time (its blocked read or write fails at once)."""
    sock = conn.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@functools.lru_cache(maxsize=16)
def _context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)
