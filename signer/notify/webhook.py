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

import hashlib
import hmac
import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Mapping
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
    `MAX_SKEW` seconds of `now` (what a receiver checks before trusting a delivery)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > MAX_SKEW:
        return False
    expected = signature(secret, timestamp, body)
    return hmac.compare_digest(expected, f"t={parts['t']},v1={parts.get('v1', '')}")


def body_of(sink: Sink, n: Notification) -> bytes:
    payload = slack_message(n) if sink.form == "slack" else n.body
    return json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()


def deliver(sink: Sink, n: Notification, now: float | None = None) -> None:
    """POST `n` to `sink`; DeliveryError says why it was not delivered."""
    body = body_of(sink, n)
    headers: Mapping[str, str] = {
        "Content-Type": "application/json",
        "User-Agent": _USER_AGENT,
        "X-Signer-Event": n.event,
        "X-Signer-Delivery": n.id,
    }
    if sink.secret:
        stamp = int(time.time() if now is None else now)
        headers = {**headers, "X-Signer-Signature": signature(sink.secret, stamp, body)}
    url = urllib.parse.urlsplit(sink.url)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=sink.ca_file)
        conn = http.client.HTTPSConnection(
            url.hostname or "", url.port, timeout=sink.timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=sink.timeout)
    try:
        conn.request("POST", path, body=body, headers=dict(headers))
        response = conn.getresponse()
        response.read(64 * 1024)  # a bounded look at the answer, then the connection ends
    except (OSError, http.client.HTTPException) as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from None
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        raise DeliveryError(f"the sink answered HTTP {response.status}")
