"""Unusual requests that need more officers (docs/architecture.md §12): the one way an
alert may hold signing, and only when the key's policy says so.

Alerts inform (`signer.core.alerts`). A key whose policy has an `unusual` section
asks `extra_approvals` more approvals of a request that is unusual when it is
made:

- `off_hours`: made outside the key's `usual_hours` (release windows' syntax);
- `first_signed`: its requester, or the repository or workflow its OIDC token
  names, never yet on a signature of this key (`first_signed` lists which). Only
  what the server verified counts, never the request's own context: a requester
  cannot make itself usual by saying so. A requester that only asks (and is
  denied) stays new: a value becomes known when a signature is recorded with it.

The server decides when it records the request (the reasons go into its
`request.created` entry and onto the request) and the quorum of an unusual
request is the policy's threshold plus the extra, under the policy in force when
it is signed. `signer audit verify` rebuilds each key's known values from the
`request.signed` entries before the request and requires every reason it finds
to be recorded: a server may only be stricter (replicas that record in parallel
may see a signature a moment late, and then ask for more), never laxer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signer.core.windows import Window, in_windows
from signer.fields import field, strings, typed
from signer.model import TokenCaller

__all__ = [
    "FIRST_SIGNED",
    "MAX_EXTRA",
    "Unusual",
    "claimed_values",
    "key_of",
    "reasons_of",
    "values_of",
]

FIRST_SIGNED = ("requester", "repository", "workflow")
MAX_EXTRA = 16
_MAX_VALUE = 512
_CLAIMS = {"repository": ("repository",), "workflow": ("workflow", "job_workflow_ref")}


def values_of(requester: str, caller: TokenCaller | None) -> dict[str, str]:
    """Who and where a request comes from, as the server verified it: the requester, and
    the repository and workflow its OIDC token's claims name."""
    return claimed_values(requester, caller.claims if caller is not None else {})


def claimed_values(requester: object, claims: Mapping[str, Any]) -> dict[str, str]:
    """`values_of` from a requester and token claims as an entry records them."""
    values = {"requester": requester if isinstance(requester, str) else ""}
    for kind, names in _CLAIMS.items():
        values[kind] = next((claims[n] for n in names if claims.get(n)), "")
    return {k: str(v)[:_MAX_VALUE] for k, v in values.items() if v}


@dataclass(frozen=True)
class Unusual:
    extra_approvals: int
    usual_hours: tuple[Window, ...] = ()
    first_signed: tuple[str, ...] = ()

    def problem(self, approvers: int, threshold: int) -> str | None:
        """Why this section cannot be met or means nothing (None: it is sound)."""
        if not 1 <= self.extra_approvals <= MAX_EXTRA:
            return f"extra_approvals must be from 1 to {MAX_EXTRA}"
        if threshold + self.extra_approvals > approvers:
            return (
                f"threshold {threshold} + extra_approvals {self.extra_approvals} is more than "
                f"the key's {approvers} approvers: an unusual request could never be signed"
            )
        if not self.usual_hours and not self.first_signed:
            return "names neither usual_hours nor first_signed: nothing would be unusual"
        for kind in self.first_signed:
            if kind not in FIRST_SIGNED:
                return f"first_signed: {kind!r} is not one of {', '.join(FIRST_SIGNED)}"
        if len(set(self.first_signed)) != len(self.first_signed):
            return "first_signed lists a kind twice"
        return None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"extra_approvals": self.extra_approvals}
        if self.usual_hours:
            d["usual_hours"] = [str(w) for w in self.usual_hours]
        if self.first_signed:
            d["first_signed"] = sorted(self.first_signed)
        return d

    @classmethod
    def from_dict(
        cls,
        d: Any,
        where: str,
        windows_of: Callable[[Sequence[str], str], tuple[Window, ...]],
    ) -> Unusual:
        """The recorded section (hostile input); ValueError names the field."""
        typed(d, dict, where)
        unknown = sorted(set(d) - {"extra_approvals", "usual_hours", "first_signed"})
        if unknown:
            raise ValueError(f"{where}.{unknown[0]} is not a field this verifier knows")
        return cls(
            field(d, "extra_approvals", int, where),
            windows_of(strings(d, "usual_hours", where, []), f"{where}.usual_hours"),
            tuple(strings(d, "first_signed", where, [])),
        )

    def reasons(
        self,
        key: str,
        at: dt.datetime,
        values: Mapping[str, str],
        known: Callable[[str, str], bool],
    ) -> list[dict[str, str]]:
        """Why a request on `key` made at `at` by `values` is unusual (none: it is not);
        `known(kind, value)` says whether a signature of the key was made with it."""
        out: list[dict[str, str]] = []
        if self.usual_hours and not in_windows(self.usual_hours, at):
            hours = "; ".join(str(w) for w in self.usual_hours)
            said = f"made outside key {key!r}'s usual hours ({hours})"
            out.append({"reason": "off_hours", "message": said})
        for kind in sorted(self.first_signed):
            value = values.get(kind)
            if value is not None and not known(kind, value):
                out.append(
                    {
                        "reason": "first_signed",
                        "seen": kind,
                        "value": value,
                        "message": f"{kind} {value} has never had a signature of key {key!r}",
                    }
                )
        return out


def reasons_of(d: Mapping[str, Any], where: str) -> set[tuple[str, str, str]]:
    """The reasons a `request.created` entry records (hostile input), as (reason, seen,
    value) each; ValueError names what is malformed."""
    out = set()
    for i, r in enumerate(field(d, "unusual", list, where, [])):
        at = f"{where}.unusual[{i}]"
        typed(r, dict, at)
        reason = field(r, "reason", str, at)
        if reason not in ("off_hours", "first_signed"):
            raise ValueError(f"{at}.reason {reason!r} is not a reason this verifier knows")
        field(r, "message", str, at)
        out.add((reason, field(r, "seen", str, at, ""), field(r, "value", str, at, "")))
    return out


def key_of(reason: Mapping[str, str]) -> tuple[str, str, str]:
    """A reason as `reasons_of` reads it back."""
    return reason["reason"], reason.get("seen", ""), reason.get("value", "")
