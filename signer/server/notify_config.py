"""The `[notify]` and `[alerts]` tables: the webhooks told of requests, decisions,
policy and alerts, and what is unusual enough to alert on.

Neither is part of the policy (they change nothing that is signed): an operator
adds or moves a webhook, or tunes an alert, with a restart. Secrets are never in the
file: a sink's HMAC key, and a URL that is itself a secret (a Slack webhook's),
are read from 0600 files named here. Plain HTTP is allowed only to this host.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from signer.core.alerts import SEEN, AlertRules
from signer.core.policy import windows_of
from signer.notify.messages import EVENTS
from signer.notify.webhook import Sink
from signer.parsing import read_secret
from signer.server._config_reader import _SECOND, _duration_of, _Reader
from signer.text import KEY_NAME

__all__ = ["NotifyConfig", "alert_rules", "notify_config"]

_MIN_SECRET = 32  # characters of an HMAC key


@dataclass(frozen=True)
class NotifyConfig:
    sinks: tuple[Sink, ...]
    retry_min: dt.timedelta = dt.timedelta(seconds=1)
    retry_max: dt.timedelta = dt.timedelta(minutes=5)
    give_up_after: dt.timedelta = dt.timedelta(hours=24)


def notify_config(r: _Reader, keys: Mapping[str, Any]) -> NotifyConfig | None:
    """The `[notify]` table (None when absent); every error names the key and the fix."""
    if not r.table:
        return None
    r.only("webhooks", "retry_min", "retry_max", "give_up_after")
    hooks = r.sub("webhooks")
    sinks = []
    for name in hooks.table:
        if not KEY_NAME.match(name):
            raise hooks.error(name, "webhook names are 1-64 of A-Z a-z 0-9 . _ -")
        sinks.append(_sink(hooks.sub(name), name, keys))
    if not sinks:
        raise hooks.error("NAME", "no webhook; add a [notify.webhooks.NAME] table with its url")
    retry_min = _duration_of(r, "retry_min", "1s", _SECOND, _SECOND * 60)
    retry_max = _duration_of(r, "retry_max", "5m", retry_min, dt.timedelta(hours=1))
    give_up = _duration_of(
        r, "give_up_after", "24h", dt.timedelta(minutes=1), dt.timedelta(days=30)
    )
    return NotifyConfig(tuple(sinks), retry_min, retry_max, give_up)


def _sink(r: _Reader, name: str, keys: Mapping[str, Any]) -> Sink:
    r.only("url", "url_file", "form", "secret_file", "keys", "events", "timeout", "ca_file")
    if ("url" in r.table) == ("url_file" in r.table):
        raise r.error("url", "set exactly one of url or url_file (a URL that is a secret)")
    if "url" in r.table:
        url, key = r.get("url", str), "url"
    else:
        url, key = read_secret(r.path_of("url_file"), None, f"webhook {name} URL"), "url_file"
    problem = _url_problem(url)
    if problem is not None:
        shown = f"{url!r} " if key == "url" else ""
        raise r.error(key, f"{shown}{problem}")
    form = r.get("form", str, "json")
    if form not in ("json", "slack"):
        raise r.error("form", f"must be json or slack, not {form!r}")
    secret_path = r.path_of("secret_file", None)
    if secret_path is None and form == "json":
        raise r.error(
            "secret_file",
            "missing; a JSON webhook is always signed: name a 0600 file holding a random key "
            "(e.g. `openssl rand -hex 32 > FILE`)",
        )
    secret = b""
    if secret_path is not None:
        text = read_secret(secret_path, None, f"webhook {name} secret")
        if len(text) < _MIN_SECRET:
            raise r.error("secret_file", f"holds {len(text)} characters; use {_MIN_SECRET} or more")
        secret = text.encode()
    chosen_keys = r.names("keys", ())
    for k in chosen_keys:
        if k not in keys:
            close = difflib.get_close_matches(k, list(keys), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; keys: {', '.join(keys)}"
            raise r.error("keys", f"{k!r} is not a key{hint}")
    events = r.names("events", ())
    for e in events:
        if e not in EVENTS:
            close = difflib.get_close_matches(e, sorted(EVENTS), n=1)
            hint = (
                f"did you mean {close[0]!r}?" if close else f"events: {', '.join(sorted(EVENTS))}"
            )
            raise r.error("events", f"{e!r} is not an event; {hint}")
    timeout = _duration_of(r, "timeout", "5s", _SECOND, _SECOND * 60)
    ca = r.path_of("ca_file", None)
    if ca is not None and not ca.is_file():
        raise r.error("ca_file", f"file {ca} does not exist")
    return Sink(
        name=name,
        url=url,
        form=form,
        secret=secret,
        keys=frozenset(chosen_keys),
        events=frozenset(events),
        timeout=timeout.total_seconds(),
        ca_file=str(ca) if ca is not None else None,
    )


def alert_rules(r: _Reader, keys: Mapping[str, Any]) -> AlertRules | None:
    """The `[alerts]` table (None when absent: no alert watch)."""
    if "alerts" not in r.table:
        return None
    a = r.sub("alerts")
    a.only("first_seen", "burst_count", "burst_within", "burst_factor", "usual_hours")
    first_seen = a.names("first_seen", SEEN)
    for kind in first_seen:
        if kind not in SEEN:
            raise a.error("first_seen", f"{kind!r} is not one of {', '.join(SEEN)}")
    count = a.get("burst_count", int, 10)
    if not 1 <= count <= 1_000_000:
        raise a.error("burst_count", "must be from 1 to 1000000")
    within = _duration_of(a, "burst_within", "10m", _SECOND * 10, dt.timedelta(days=1))
    factor = a.table.get("burst_factor", 3.0)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1 <= factor <= 1000:
        raise a.error("burst_factor", "must be a number from 1 to 1000")
    hours = a.sub("usual_hours", required=False)
    usual = {}
    for key in hours.table:
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise hours.error(key, f"is not a key{hint}")
        try:
            usual[key] = windows_of(hours.names(key), key)
        except ValueError as e:
            raise hours.error(key, str(e).removeprefix(key).lstrip(": ")) from None
    return AlertRules(usual, frozenset(first_seen), count, within, float(factor))


def _url_problem(url: str) -> str | None:
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return "must be ASCII without spaces or control characters (percent-encode them)"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as e:
        return f"is not a URL: {e}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an https:// URL (http:// only to this host)"
    if parts.username or parts.password:
        return "carries a user or password; put a secret in url_file or secret_file"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return "is plain http:// to another host; use https:// (http:// only to this host)"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
