"""An auditor's offline verification of a fetched log (DESIGN §6, invariant 4).

Needs only the directory written by `signer audit fetch` and the audit
verifier key. Checks, and names the first entry that fails:

- every checkpoint's signature (signed note, pinned verifier) and that no two
  checkpoints of one size differ (a fork);
- every entry is canonical JSON with the index of its position, and the tree
  recomputed from the entries has, at each checkpoint's size, that
  checkpoint's root (so any edit, deletion, insertion or reordering shows);
- the semantics: every `request.signed` entry is backed by at least m valid
  approval envelopes from distinct approvers (distinct keys) of the key's
  policy in force (recorded whole in `server.started`, hash checked), each
  bound to the same request id, key name, key id and digests, none from the
  requester (nor the actor of an OIDC pipeline), and no denial.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit import merkle
from signer.audit.entry import EVENTS, AuditEntry
from signer.audit.note import Checkpoint, Verifier, open_checkpoint
from signer.dsse import Envelope
from signer.encoding import canonical_json
from signer.errors import EnvelopeError, VerificationError
from signer.model import Digest

__all__ = ["LogDir", "Report", "verify_dir"]


class LogDir:
    """The files of a fetched log: entries.jsonl, checkpoint, checkpoints/SIZE.note."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = path / "entries.jsonl"
        self.checkpoint = path / "checkpoint"
        self.history = path / "checkpoints"

    def read_entries(self) -> Iterator[bytes]:
        if not self.entries.exists():
            return
        with self.entries.open("rb") as f:
            for line in f:
                yield line.rstrip(b"\n")

    @staticmethod
    def read_note(path: Path) -> str:
        """A note file's text; undecodable bytes become lone surrogates, which the
        note parser refuses as invalid UTF-8 (instead of a UnicodeDecodeError)."""
        return path.read_text(encoding="utf-8", errors="surrogateescape")

    def notes(self) -> list[tuple[Path, str]]:
        found = list(self.history.glob("*.note"))
        for p in found:
            if not p.stem.isdecimal():
                raise VerificationError(f"{p}: not a checkpoint file (checkpoints/SIZE.note)")
        found.sort(key=lambda p: int(p.stem))
        return [(p, self.read_note(p)) for p in found]


class _Prefix:
    """Roots of every prefix of a stream of leaves, in O(log n) memory."""

    def __init__(self) -> None:
        self.stack: list[bytes] = []
        self.size = 0

    def push(self, leaf: bytes) -> None:
        h, n = leaf, self.size
        while n & 1:
            h = merkle.node_hash(self.stack.pop(), h)
            n >>= 1
        self.stack.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self.stack:
            return merkle.EMPTY_ROOT
        h = self.stack[-1]
        for left in reversed(self.stack[:-1]):
            h = merkle.node_hash(left, h)
        return h


@dataclass
class Report:
    entries: int = 0
    checkpoints: int = 0
    tree_size: int = 0
    signed: int = 0
    approvals: int = 0
    policies: int = 0


@dataclass
class _Request:
    created: dict[str, Any]
    requester: str
    approvals: dict[str, bytes] = field(default_factory=dict)  # approver -> raw key
    denied: bool = False
    signed: bool = False

    @property
    def barred(self) -> list[str]:
        """Officers who may not decide: the OIDC pipeline's actor, as mapped at creation."""
        caller = self.created.get("caller") or {}
        return list(caller.get("barred_approvers", []))


class _Semantics:
    """Replays the log and checks every signature's quorum under the policy in force."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.policy: dict[str, Any] | None = None
        self.requests: dict[str, _Request] = {}

    def check(self, e: AuditEntry) -> None:
        if e.event not in EVENTS:
            raise ValueError(f"unknown event {e.event!r}")
        handler = getattr(self, "_" + e.event.replace(".", "_"), None)
        if handler is not None:
            handler(e)

    def _server_started(self, e: AuditEntry) -> None:
        policy = e.details.get("policy")
        if not isinstance(policy, dict):
            raise ValueError("server.started does not record the policy")
        if hashlib.sha256(canonical_json(policy)).hexdigest() != e.details.get("policy_hash"):
            raise ValueError("the recorded policy does not match its policy_hash")
        self.policy = policy
        self.report.policies += 1

    def _request_created(self, e: AuditEntry) -> None:
        if e.request_id in self.requests:
            raise ValueError("request created twice")
        self.requests[e.request_id] = _Request(e.details, e.actor)

    def _request(self, e: AuditEntry) -> _Request:
        r = self.requests.get(e.request_id)
        if r is None:
            raise ValueError(f"{e.event} for a request never created")
        return r

    def _request_approved(self, e: AuditEntry) -> None:
        r = self._request(e)
        if r.denied or r.signed or e.actor in r.approvals:
            raise ValueError(f"approval by {e.actor} after the request ended or twice")
        r.approvals[e.actor] = self._verify_envelope(e, r)
        self.report.approvals += 1

    def _request_denied(self, e: AuditEntry) -> None:
        r = self._request(e)
        self._verify_envelope(e, r, "deny")
        r.denied = True

    def _request_signed(self, e: AuditEntry) -> None:
        r = self._request(e)
        if r.signed:
            raise ValueError("request signed twice")
        if r.denied:
            raise ValueError("request signed after a denial")
        key_name = r.created["key_name"]
        key_policy = (self.policy or {}).get("keys", {}).get(key_name)
        if key_policy is None:
            raise ValueError(f"no policy in force for key {key_name!r}")
        if e.details.get("key_id") != r.created["key_id"]:
            raise ValueError("signed with another key id than the request names")
        valid: dict[str, bytes] = {
            a: k
            for a, k in r.approvals.items()
            if a in key_policy["approvers"] and a != r.requester and a not in r.barred
        }
        distinct_keys = len(set(valid.values()))
        if min(len(valid), distinct_keys) < key_policy["threshold"]:
            raise ValueError(
                f"signed with {min(len(valid), distinct_keys)} valid distinct approvals; "
                f"the policy needs {key_policy['threshold']}"
            )
        if not set(e.details.get("approvers", [])) <= set(valid):
            raise ValueError("the signed entry names approvers without a valid approval")
        r.signed = True
        self.report.signed += 1

    def _verify_envelope(self, e: AuditEntry, r: _Request, decision: str = "approve") -> bytes:
        keys = (self.policy or {}).get("approver_keys", {})
        if e.actor not in keys or e.details.get("approver") != e.actor:
            raise ValueError(f"{e.actor!r} has no approval key in the policy in force")
        raw = bytes.fromhex(keys[e.actor])
        try:
            st = Envelope.parse(str(e.details["envelope"]).encode()).verify(
                ed25519.Ed25519PublicKey.from_public_bytes(raw)
            )
        except (EnvelopeError, KeyError) as x:
            raise ValueError(f"approval envelope by {e.actor} does not verify: {x}") from None
        try:
            created = [Digest.from_dict(x) for x in r.created["digests"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError("the request.created entry's digests are malformed") from None
        bound = (
            st.request_id == e.request_id
            and st.key_name == r.created["key_name"]
            and st.key_id == r.created["key_id"]
            and st.approver == e.actor
            and st.decision == decision
            and st.binds(created)
        )
        if not bound:
            raise ValueError(f"the {decision} by {e.actor} is not bound to this request")
        if e.actor == r.requester or e.actor in r.barred:
            raise ValueError(
                f"{e.actor} decided on a request they made or whose pipeline they started"
            )
        return raw


def verify_dir(path: Path, verifier: Verifier) -> Report:
    """Verify a fetched log; VerificationError names the first problem."""
    log = LogDir(path)
    if not log.checkpoint.exists():
        raise VerificationError(f"{path} has no checkpoint; run `signer audit fetch` first")
    report = Report()
    by_size: dict[int, Checkpoint] = {}
    for p, note in [*log.notes(), (log.checkpoint, log.read_note(log.checkpoint))]:
        cp = open_checkpoint(note, verifier, str(p))
        if cp.size in by_size and by_size[cp.size].root != cp.root:
            raise VerificationError(
                f"two checkpoints of size {cp.size} have different roots: the log forked"
            )
        by_size[cp.size] = cp
    report.checkpoints = len(by_size)
    latest = max(by_size)
    tree, semantics = _Prefix(), _Semantics(report)
    for i, raw in enumerate(log.read_entries()):
        try:
            entry = AuditEntry.from_bytes(raw)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise VerificationError(f"entry {i}: not a canonical audit entry: {e}") from None
        if entry.index != i:
            raise VerificationError(
                f"entry {i}: says it is entry {entry.index}: entries were removed, "
                "inserted or reordered"
            )
        tree.push(merkle.leaf_hash(raw))
        covering = by_size.get(tree.size)
        if covering is not None and covering.root != tree.root():
            raise VerificationError(
                f"entry {i}: the log up to here does not match the signed checkpoint of size "
                f"{tree.size}: an entry at or before {i} was changed, removed or reordered"
            )
        try:
            semantics.check(entry)
        except ValueError as e:
            raise VerificationError(f"entry {i} ({entry.event}): {e}") from None
        except (KeyError, TypeError, AttributeError) as e:  # fields missing or mistyped
            raise VerificationError(
                f"entry {i} ({entry.event}): malformed details ({type(e).__name__}: {e})"
            ) from None
    report.entries = tree.size
    report.tree_size = latest
    if tree.size != latest:
        raise VerificationError(
            f"the log has {tree.size} entries but its latest checkpoint covers {latest}"
        )
    return report
