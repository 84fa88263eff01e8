"""The policy chain in the audit log (docs/architecture.md §11): where each version is kept.

Each version in force is one `policy.adopted` entry: its number, the hash of the
version before it, the whole document and the officers' approval envelopes. The
chain is nothing but those entries in log order, so it is as tamper-evident as the
log (checkpoints signed by the audit key, its tree head kept in the token) and an
auditor walks it offline with the same `signer.policy_chain.check_next` the server
applies. A proposed change is a `policy.proposed` entry: visible in the log before
any officer decides. A version whose key names a freeze in `lift_freeze` lifts
it in the same transaction (`signer.freeze`): the quorum, never one officer.

Read a chain only from a log the token's tree head says is the one it signed
(`Checkpointer.status`); an entry appended behind the server's back still needs the
officers' approvals to count.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from signer.audit.entry import AuditEntry
from signer.core.intake import find_request
from signer.dsse import Envelope
from signer.encoding import canonical_json, format_time
from signer.errors import EnvelopeError, PolicyChainError
from signer.model import State
from signer.policy_chain import (
    MAX_APPROVALS,
    PAYLOAD_TYPE,
    PolicyApproval,
    Version,
    check_next,
    details_of,
    new_lifts,
    version_of,
)
from signer.policy_decisions import APPROVAL_MAX_AGE, APPROVAL_SKEW
from signer.store.base import AuditFilter, Tx

__all__ = [
    "ADOPTED",
    "MAX_APPROVALS",
    "PROPOSED",
    "adopt",
    "adopted_entries",
    "details_of",
    "entries_of",
    "key_rule",
    "read_chain",
    "version_of",
    "walk",
]

ADOPTED = "policy.adopted"
PROPOSED = "policy.proposed"
_PAGE = 200


def entries_of(tx: Tx, event: str, after: int = -1) -> list[AuditEntry]:
    """Every `event` entry after index `after`, oldest first (read page by page)."""
    entries: list[AuditEntry] = []
    while True:
        page = tx.list_audit(AuditFilter(event=event), after, _PAGE)
        entries += page
        if len(page) < _PAGE:
            return entries
        after = page[-1].index


def adopted_entries(tx: Tx) -> list[AuditEntry]:
    """Every `policy.adopted` entry, oldest first."""
    return entries_of(tx, ADOPTED)


def read_chain(tx: Tx) -> list[Version]:
    """Every policy version the log holds, oldest first (not yet checked as a chain)."""
    return [version_of(e.details, e.index) for e in adopted_entries(tx)]


def walk(tx: Tx) -> list[tuple[Version, tuple[str, ...], AuditEntry]]:
    """Every version in force in turn, each checked as the next link from version 1:
    who approved it (recounted, not read from the entry), and its entry.
    PolicyChainError at the first bad link."""
    out: list[tuple[Version, tuple[str, ...], AuditEntry]] = []
    previous: Version | None = None
    for entry in adopted_entries(tx):
        version = version_of(entry.details, entry.index)
        out.append((version, check_next(previous, version), entry))
        previous = version
    return out


def adopt(
    tx: Tx,
    previous: Version | None,
    document: Mapping[str, Any],
    approvals: Sequence[bytes],
    actor: str,
    now: dt.datetime,
    ended: list[tuple[str, str, State]] | None = None,
) -> Version:
    """Append `document` as the next version after `previous`, the one in force (as the
    caller read it in `tx`), if `approvals` make it the next link (`check_next`);
    PolicyChainError naming what is missing if not, and nothing is written. The
    requests it ends (`_end_changed`) are added to `ended`: (id, key name, state)."""
    if len(approvals) > MAX_APPROVALS:
        raise PolicyChainError(f"{len(approvals)} approvals; at most {MAX_APPROVALS} are kept")
    version = Version(
        previous.number + 1 if previous else 1,
        dict(document),
        previous.sha256 if previous else "",
        tuple(dict.fromkeys(approvals)),
    )
    if previous is not None and previous.sha256 == version.sha256:
        raise PolicyChainError(f"this policy is version {previous.number}, already in force")
    for raw in version.approvals:
        _check_age(raw, now)
    approvers = check_next(previous, version)
    lifts = new_lifts(previous, version)
    for name, index in lifts.items():
        held = tx.frozen_key(name)
        if held is None or held.since_index != index:
            raise PolicyChainError(
                f"keys.{name}.lift_freeze names audit entry {index}, but the freeze of key "
                f"{name} in force is {'at entry ' + str(held.since_index) if held else 'none'}"
            )
    tx.append_audit(now, ADOPTED, actor, "", "", details_of(version, approvers))
    for name, index in lifts.items():
        tx.lift_freeze(name, index)
    done = _end_changed(tx, previous, version, now)
    if ended is not None:
        ended += done
    return version


def key_rule(document: Mapping[str, Any], name: str) -> bytes | None:
    """Everything a version says that decides a request for key `name`: its rule (but
    the freeze it lifts), the roles and approval keys of the people it names, and the
    OIDC issuers its claim rules trust. None if the version has no such key."""
    keys = document.get("keys")
    rule = keys.get(name) if isinstance(keys, dict) else None
    if not isinstance(rule, dict):
        return None
    people = [
        p for k in ("approvers", "requesters") for p in rule.get(k) or [] if isinstance(p, str)
    ]
    identities, approver_keys = document.get("identities"), document.get("approver_keys")
    return canonical_json(
        {
            "rule": {k: v for k, v in rule.items() if k != "lift_freeze"},
            "roles": {p: identities.get(p) for p in people} if isinstance(identities, dict) else {},
            "keys": (
                {p: approver_keys.get(p) for p in people} if isinstance(approver_keys, dict) else {}
            ),
            "oidc": document.get("oidc") if rule.get("oidc") else None,
        }
    )


def _end_changed(
    tx: Tx, previous: Version | None, version: Version, now: dt.datetime
) -> list[tuple[str, str, State]]:
    """A request is decided only under the rule it was made under: those whose key's
    rule `version` changes end here, unsigned (pending ones cancelled, approved ones
    failed), and their requesters ask again."""
    if previous is None:
        return []
    changed: dict[str, bool] = {}
    done: list[tuple[str, str, State]] = []
    for state, event, field in (
        (State.PENDING, "request.cancelled", "reason"),
        (State.APPROVED, "request.failed", "error"),
    ):
        for rid in tx.ids_in_state(state):
            request = find_request(tx, rid)
            name = request.key_name
            if name not in changed:
                changed[name] = key_rule(previous.document, name) != key_rule(
                    version.document, name
                )
            if not changed[name]:
                continue
            why = (
                f"policy version {version.number} changed the rule of key {name} while the "
                "request waited; not signed: ask again"
            )
            end = State.CANCELLED if state is State.PENDING else State.FAILED
            tx.set_state(rid, end, now, why)
            tx.append_audit(now, event, "signer", rid, name, {field: why})
            done.append((rid, name, end))
    return done


def _check_age(raw: bytes, now: dt.datetime) -> None:
    """PolicyChainError for an approval issued more than `APPROVAL_MAX_AGE` ago or in
    the future: one held back for months does not count (its signature is checked by
    `check_next`; an envelope that is not an approval is left to it)."""
    try:
        statement = PolicyApproval.from_bytes(Envelope.parse(raw, PAYLOAD_TYPE).payload)
    except EnvelopeError:
        return
    if not now - APPROVAL_MAX_AGE <= statement.issued_at <= now + APPROVAL_SKEW:
        raise PolicyChainError(
            f"{statement.officer}'s approval was issued at {format_time(statement.issued_at)}; "
            f"an approval counts from its issue for {APPROVAL_MAX_AGE.days} days, not before: "
            "ask for it again"
        )
