"""The rules of a key's policy: one small class per rule, and `RULES`, the one list of them.

A rule speaks to up to three moments, one method each; a method a rule does not
override allows:

- `check_request`, when a request is made: may this requester ask, and for so long?
- `check_approver`, for each officer's decision: does this officer's decision count?
- `approval_problem`, for each approval counted: does it still count now?
- `quorum_problem`, before the token signs: are the approvals that count enough?
- `signing_problem`, before the token signs and where it is recorded: may the key
  sign now (its windows, its counts)? If not, the request waits, APPROVED.

`KeyPolicy` applies every registered rule, in order. The core calls it when a
request is created, when a decision arrives and before each signature; the
offline audit verifier calls the very same methods on the log, under the policy
recorded in force (`check_request` at each `request.created`, `check_approver`
at each approval and again, with `quorum_problem`, at each `request.signed`). So
no rule is written twice.

Upholds invariant 2 (no signature without a quorum of authorized, distinct
approvers) and invariant 5 (who may request comes from config, never from the
request). Adding a rule: one class here, one line in `RULES`; a rule that reads a
new policy field adds it to `KeyPolicy` (with `as_dict` and `from_dict`) and to
the config loader.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from signer.bounds import echo
from signer.core.limits import Usage
from signer.core.windows import in_windows
from signer.errors import InvalidArgumentError, PermissionDeniedError
from signer.model import TokenCaller

if TYPE_CHECKING:
    from signer.core.policy import KeyPolicy

__all__ = [
    "RULES",
    "ApprovalAge",
    "Approvers",
    "Ask",
    "MaxTtl",
    "Payloads",
    "ReleaseWindows",
    "Requesters",
    "Rule",
    "SignatureLimits",
    "Threshold",
    "not_an_approver",
]


@dataclass(frozen=True)
class Ask:
    """A request as the rules see it: who asked, with which OIDC token (None: mTLS),
    for how long (None when a log did not record it), and carrying which payload."""

    requester: str
    caller: TokenCaller | None = None
    lifetime: dt.timedelta | None = None
    payload_type: str = ""  # the format payload it carries; "" for plain digests
    at: dt.datetime | None = None  # when it is made (None: not known)
    signatures: int | None = None  # how many it asks for (its digests)


class Rule:
    """One rule of a key's policy. Methods raise a `SignerError` (or name a problem) to
    refuse; the defaults allow."""

    def check_request(self, policy: KeyPolicy, ask: Ask) -> None:
        """Refuse a request that `policy` does not allow."""

    def check_approver(self, policy: KeyPolicy, approver: str) -> None:
        """Refuse an officer whose decisions on `policy`'s key do not count."""

    def approval_problem(
        self, policy: KeyPolicy, given: dt.datetime, at: dt.datetime
    ) -> str | None:
        """Why an approval given at `given` no longer counts at `at`."""
        return None

    def quorum_problem(
        self, policy: KeyPolicy, counted: Sequence[str], unusual: bool = False
    ) -> str | None:
        """What `counted` (the distinct approvers of valid approvals) lacks to be a quorum;
        `unusual` for a request found unusual when it was made."""
        return None

    def signing_problem(
        self, policy: KeyPolicy, at: dt.datetime, usage: Usage | None
    ) -> str | None:
        """Why the token may not sign for `policy`'s key at `at` (the request waits);
        `usage` is the key's count of signatures then (None: not known)."""
        return None


def not_an_approver(approver: str, key_name: str) -> PermissionDeniedError:
    """The refusal of an officer who is not an approver of the key."""
    return PermissionDeniedError(
        f"{echo(approver)} is not an approver for key {key_name!r}", reason="NOT_AN_APPROVER"
    )


class Requesters(Rule):
    """Who may request: an mTLS identity named in `requesters`, or a pipeline whose OIDC
    token (the identity it names) one of the key's claim rules admits."""

    def check_request(self, policy: KeyPolicy, ask: Ask) -> None:
        caller = ask.caller
        if caller is None:
            if ask.requester not in policy.requesters:
                raise PermissionDeniedError(
                    f"{echo(ask.requester)} may not request signatures with key {policy.name!r}",
                    reason="NOT_A_REQUESTER",
                )
        elif caller.identity != ask.requester or not policy.admits(caller.issuer, caller.claims):
            why = (
                "the token's identity is not the requester's"
                if policy.admits(caller.issuer, caller.claims)
                else policy.not_admitted(caller.issuer, caller.claims)
            )
            raise PermissionDeniedError(
                f"the token's claims do not meet key {policy.name!r}'s conditions: {why}",
                reason="CLAIMS_NOT_ALLOWED",
                details={"issuer": caller.issuer, "claims": dict(caller.claims)},
            )


class MaxTtl(Rule):
    """A request lives at most the key's `max_ttl` (the core caps a longer ttl to it)."""

    def check_request(self, policy: KeyPolicy, ask: Ask) -> None:
        if ask.lifetime is not None and ask.lifetime > policy.max_ttl:
            raise InvalidArgumentError(
                f"a lifetime of {ask.lifetime} is over key {policy.name!r}'s max_ttl "
                f"of {policy.max_ttl}",
                reason="BAD_TTL",
            )


class Payloads(Rule):
    """A key may be kept to the typed requests it exists for (`payload_types`): then a
    request carrying any other payload, or plain digests ("" unless listed), is refused.
    So a key git trusts for SSH signatures never signs a bare digest an officer cannot
    read as a commit, nor a DSSE statement."""

    def check_request(self, policy: KeyPolicy, ask: Ask) -> None:
        allowed = policy.payload_types
        if allowed and ask.payload_type not in allowed:
            shown = ", ".join(t or "plain digests" for t in allowed)
            asked = echo(ask.payload_type) if ask.payload_type else "plain digests"
            raise PermissionDeniedError(
                f"key {policy.name!r} signs only {shown}, not {asked}",
                reason="FORMAT_NOT_ALLOWED",
            )


class Approvers(Rule):
    """Only the officers the key's policy names decide on its requests."""

    def check_approver(self, policy: KeyPolicy, approver: str) -> None:
        if approver not in policy.approvers:
            raise not_an_approver(approver, policy.name)


class Threshold(Rule):
    """A quorum is `threshold` distinct approvers (distinct people with distinct keys), and
    the key's `unusual.extra_approvals` more for a request made unusual
    (`signer.core.unusual`)."""

    def quorum_problem(
        self, policy: KeyPolicy, counted: Sequence[str], unusual: bool = False
    ) -> str | None:
        needed = policy.approvals_needed(unusual)
        if len(counted) >= needed:
            return None
        why = " (an unusual request)" if needed > policy.threshold else ""
        return f"{len(counted)} valid distinct approvals; the policy needs {needed}{why}"


class ReleaseWindows(Rule):
    """A key with `windows` takes requests and signs only inside one of them: a request
    made outside is refused naming them; one approved outside waits, APPROVED, and is
    signed when a window opens."""

    def check_request(self, policy: KeyPolicy, ask: Ask) -> None:
        if policy.limits.hold_outside_windows:
            return  # taken, and signed in the next window
        if ask.at is not None and not in_windows(policy.windows, ask.at):
            raise PermissionDeniedError(
                f"key {policy.name!r} takes requests only in its release windows "
                f"({'; '.join(str(w) for w in policy.windows)})",
                reason="OUTSIDE_RELEASE_WINDOW",
            )

    def signing_problem(
        self, policy: KeyPolicy, at: dt.datetime, usage: Usage | None
    ) -> str | None:
        if in_windows(policy.windows, at):
            return None
        return (
            f"key {policy.name!r} signs only in its release windows "
            f"({'; '.join(str(w) for w in policy.windows)})"
        )


class SignatureLimits(Rule):
    """A key signs at most so many signatures per request, in any 24 hours and in one
    opening of a release window (`signer.core.limits`): a request that could never be
    signed is refused; one that would go past a count waits until it allows."""

    def check_request(self, policy: KeyPolicy, ask: Ask) -> None:
        if ask.signatures is None:
            return
        if (problem := policy.limits.request_problem(policy.name, ask.signatures)) is not None:
            raise PermissionDeniedError(problem, reason="OVER_SIGNATURE_LIMIT")

    def signing_problem(
        self, policy: KeyPolicy, at: dt.datetime, usage: Usage | None
    ) -> str | None:
        return None if usage is None else policy.limits.signing_problem(policy.name, usage)


class ApprovalAge(Rule):
    """An approval counts for the key's `approval_max_age` after it was given."""

    def approval_problem(
        self, policy: KeyPolicy, given: dt.datetime, at: dt.datetime
    ) -> str | None:
        if policy.limits.approval_counts(given, at):
            return None
        return f"given more than {policy.limits.approval_max_age} before"


RULES: list[Rule] = [
    Requesters(),
    MaxTtl(),
    Payloads(),
    ReleaseWindows(),
    SignatureLimits(),
    Approvers(),
    ApprovalAge(),
    Threshold(),
]
