"""What a notification says: one audit entry as JSON, or as a Slack message.

Every field comes from the entry (what the log holds is what was notified), and
a notification is bounded whatever the request carried: a batch's digests are
counted and a few named, texts are cut. Requesters' and officers' words are
data in the JSON form; in the Slack form they are escaped (`&`, `<`, `>`) and the
block is verbatim, so a context value can neither mention a channel or a person
nor make a link (it can still use Slack's bold, italic or code marks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from signer.audit.entry import AuditEntry
from signer.encoding import format_time

__all__ = ["EVENTS", "Notification", "alert_of", "event_of", "notification", "slack_message"]

SCHEMA = "signer.notification/v1"
# Audit events notified, and the notification's name for each.
_NAMES = {
    "request.created": "request.waiting",
    "request.approved": "request.decision",
    "request.denied": "request.denied",
    "request.quorum": "request.quorum",
    "request.signed": "request.signed",
    "request.expired": "request.expired",
    "request.cancelled": "request.cancelled",
    "request.failed": "request.failed",
    "policy.proposed": "policy.pending",
    "policy.approved": "policy.decision",
    "policy.denied": "policy.denied",
    "policy.adopted": "policy.adopted",
    "key.frozen": "key.frozen",
}
EVENTS = frozenset({*_NAMES.values(), "alert"})
_MAX_TEXT = 512  # characters of any one text (a reason, a context value)
_MAX_CONTEXT = 16  # context entries shown
_MAX_DIGESTS = 5  # digests named (all are counted)


def alert_of(audit_event: str) -> str | None:
    """The alert an audit event is (`alert.KIND`, and a denial and a freeze), or None."""
    if audit_event.startswith("alert."):
        return audit_event.removeprefix("alert.")
    return {"request.denied": "denied", "key.frozen": "frozen"}.get(audit_event)


def event_of(audit_event: str) -> str | None:
    """The notification an audit event makes (None: not notified)."""
    if audit_event.startswith("alert."):
        return "alert"
    return _NAMES.get(audit_event)


@dataclass(frozen=True)
class Notification:
    """One notification: its event, unique id (the log's origin and the entry's index),
    one-line summary and JSON body."""

    event: str
    id: str
    summary: str
    body: dict[str, Any]


def _cut(value: object) -> str:
    text = str(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _context(details: Mapping[str, Any]) -> dict[str, str]:
    context = details.get("context")
    if not isinstance(context, dict):
        return {}
    return {_cut(k): _cut(v) for k, v in list(context.items())[:_MAX_CONTEXT]}


def _about(entry: AuditEntry, key: str) -> tuple[str, dict[str, Any]]:
    """The summary and the event's own fields."""
    d, who = entry.details, entry.actor
    match entry.event:
        case "request.created":
            listed = d.get("digests")
            digests: list[Any] = listed if isinstance(listed, list) else []
            approvers = [a for a in d.get("approvers", []) if a != d.get("requester")]
            threshold = d.get("threshold", 0)
            fields = {
                "requester": _cut(d.get("requester", who)),
                "digest_count": len(digests),
                "digests": [
                    {
                        "artifact": _cut(g.get("artifact", "")),
                        "algorithm": _cut(g.get("algorithm", "")),
                        "digest": _cut(g.get("digest", "")),
                    }
                    for g in digests[:_MAX_DIGESTS]
                    if isinstance(g, dict)
                ],
                "context": _context(d),
                "expire_time": _cut(d.get("expire_time", "")),
                "waiting_for": {"approvers": approvers, "threshold": threshold},
            }
            unusual = [
                _cut(r.get("message", "")) for r in d.get("unusual", []) if isinstance(r, dict)
            ]
            if unusual:
                fields["unusual"] = unusual
            n = len(digests)
            summary = (
                f"{fields['requester']} asks to sign {n} digest{'s' * (n != 1)} with {key}; "
                f"waiting for {threshold} of {', '.join(approvers)}"
                + (f" (unusual: {'; '.join(unusual)})" if unusual else "")
            )
        case "request.approved":
            fields = {"approver": who, "decision": "approve"}
            summary = f"{who} approved a request on {key}"
        case "request.denied":
            fields = {"approver": who, "decision": "deny", "reason": _cut(d.get("reason", ""))}
            summary = f"{who} denied a request on {key}: {fields['reason']}"
        case "request.quorum":
            fields = {"approvers": d.get("approvers", []), "threshold": d.get("threshold", 0)}
            summary = f"a request on {key} has its {fields['threshold']} approvals"
        case "request.signed":
            count = len(d.get("signature_sha256", []))
            fields = {"signatures": count, "approvers": d.get("approvers", [])}
            summary = f"a request on {key} was signed ({count} signature{'s' * (count != 1)})"
        case "request.expired" | "request.cancelled" | "request.failed":
            state = entry.event.removeprefix("request.")
            fields = {"reason": _cut(d.get("reason", d.get("error", "")))}
            summary = f"a request on {key} {state}" + (
                f": {fields['reason']}" if fields["reason"] else ""
            )
        case "key.frozen":
            fields = {"officer": who, "reason": _cut(d.get("reason", ""))}
            summary = f"{who} froze key {key}: {fields['reason']}"
        case event if event.startswith("policy."):
            fields = {"version": d.get("version", d.get("number", 0)), "actor": who}
            verb = {
                "policy.proposed": "proposed",
                "policy.approved": "approved",
                "policy.denied": "denied",
                "policy.adopted": "adopted",
            }.get(event, event)
            summary = f"policy version {fields['version']} {verb} ({who})"
            if event == "policy.proposed":
                summary += "; waiting for the policy officers"
        case _:  # alert.KIND
            fields = {
                "alert": entry.event.removeprefix("alert."),
                "message": _cut(d.get("message", "")),
            }
            summary = f"alert on {key or 'the server'}: {fields['message']}"
    return summary, fields


def notification(entry: AuditEntry, key: str, origin: str) -> Notification:
    """The notification of `entry` (an entry `event_of` names), about key `key`."""
    event = event_of(entry.event)
    if event is None:
        raise ValueError(f"audit event {entry.event!r} is not notified")
    summary, fields = _about(entry, key)
    ident = f"{origin}/{entry.index}"
    body = {
        "schema": SCHEMA,
        "id": ident,
        "event": event,
        "audit_event": entry.event,
        "audit_index": entry.index,
        "time": format_time(entry.time),
        "key": key,
        "request_id": entry.request_id,
        "actor": entry.actor,
        "summary": summary,
        **fields,
    }
    if (alert := alert_of(entry.event)) is not None:
        body["alert"] = alert
    return Notification(event, ident, summary, body)


def _escape(text: str) -> str:
    """Slack's escaping: what is left is plain text, never a mention, link or command."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(n: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message (`text`, with a context line under it)."""
    lines = [f"*{_escape(n.event)}*: {_escape(n.summary)}"]
    if n.body.get("request_id"):
        lines.append(f"request `{_escape(n.body['request_id'])}`")
    context = n.body.get("context") or {}
    if context:
        lines.append(" ".join(f"{_escape(k)}={_escape(v)}" for k, v in context.items()))
    text = "\n".join(lines)
    return {
        "text": text,
        # verbatim: Slack neither links URLs nor names in it; no previews of links
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}],
        "unfurl_links": False,
        "unfurl_media": False,
    }
