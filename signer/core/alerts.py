"""Alerts on the unusual (docs/architecture.md §12): a request at an odd hour, from someone or
somewhere new to its key, or in a burst.

The alert watch reads the `request.created` entries committed since it last
looked, with a cursor kept in the store (one round at a time across replicas:
each request is looked at once) and, in the same transaction, appends an
`alert.KIND` entry for what it finds. So an alert is an audit entry; the server
counts it (`signer_alerts_total`) and the webhooks are told (`alert`), as they
are of the two other alerts, a denial and a freeze, which have entries of their
own. Alerts inform and never refuse: a key that must refuse requests at some
hours or from some pipelines says so in its policy (windows, claim rules,
limits).

- `off_hours`: made outside the key's usual hours (`[alerts.usual_hours]`);
- `first_seen`: the requester, the repository or the workflow (from the OIDC
  token's claims, else the request's context) never seen on the key before;
- `burst`: the request that takes the key's count over the last `burst_within`
  past `burst_count` and past `burst_factor` times its usual rate (over the week
  before). Only the crossing request alerts, not each one after it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from signer.audit.entry import AuditEntry
from signer.core.unusual import claimed_values
from signer.core.windows import Window, in_windows
from signer.store.base import Tx

__all__ = ["CURSOR", "KINDS", "SEEN", "AlertRules", "detect"]

CURSOR = "~alerts"  # the watch's cursor among the outbox cursors (never a webhook's name)
KINDS = ("off_hours", "first_seen", "burst")
SEEN = ("requester", "repository", "workflow")
_BASELINE = dt.timedelta(days=7)
_MAX_VALUE = 512


@dataclass(frozen=True)
class AlertRules:
    usual_hours: Mapping[str, tuple[Window, ...]] = field(default_factory=dict)
    first_seen: frozenset[str] = frozenset(SEEN)
    burst_count: int = 10
    burst_within: dt.timedelta = dt.timedelta(minutes=10)
    burst_factor: float = 3.0


def _table(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seen_values(d: Mapping[str, Any]) -> dict[str, str]:
    """What a request's entry says of who and where: the requester, and the OIDC token's
    claims; failing those, the request's own context, kept apart (`context.NAME`), as a
    requester's word is not a token's."""
    caller = _table(d.get("caller"))
    context = _table(d.get("context"))
    values = claimed_values(d.get("requester"), _table(caller.get("claims")))
    for kind in ("repository", "workflow"):
        if kind not in values and context.get(kind):
            values[f"context.{kind}"] = str(context[kind])[:_MAX_VALUE]
    return values


def detect(
    tx: Tx, rules: AlertRules, entry: AuditEntry, key: str
) -> list[tuple[str, dict[str, Any]]]:
    """The alerts a `request.created` entry raises: (kind, details) each; what it marks
    seen is recorded in `tx`."""
    out: list[tuple[str, dict[str, Any]]] = []
    hours = rules.usual_hours.get(key)
    if hours and not in_windows(hours, entry.time):
        out.append(
            (
                "off_hours",
                {
                    "message": f"a request on {key} outside its usual hours "
                    f"({'; '.join(str(w) for w in hours)})",
                    "usual_hours": [str(w) for w in hours],
                },
            )
        )
    for kind, value in _seen_values(entry.details).items():
        name = kind.removeprefix("context.")
        if name in rules.first_seen and tx.mark_seen(key, kind, value, entry.index):
            said = f"{name} {value}" + (" (the request's context)" if name != kind else "")
            out.append(
                (
                    "first_seen",
                    {
                        "message": f"{said} on key {key} for the first time",
                        "seen": kind,
                        "value": value,
                    },
                )
            )
    recent = tx.created_since(key, entry.time - rules.burst_within, entry.request_id)
    before = tx.created_since(key, entry.time - _BASELINE, entry.request_id) - recent
    usual = before * (rules.burst_within / (_BASELINE - rules.burst_within))
    limit = max(rules.burst_count, rules.burst_factor * usual)
    if recent > limit >= recent - 1:
        out.append(
            (
                "burst",
                {
                    "message": f"{recent} requests on {key} in {rules.burst_within} "
                    f"(usually {usual:.1f})",
                    "count": recent,
                    "within_seconds": int(rules.burst_within.total_seconds()),
                    "usual": f"{usual:.2f}",  # text: audit entries hold no floats
                },
            )
        )
    return out
