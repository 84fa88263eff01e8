"""`signer audit verify` reports a canonical entry whose field has the wrong type as one line.

Small synthetic logs (tests/synthetic_log.py), correctly signed, with one field
of one entry of another JSON type: verification fails naming the entry and the
field, never with a traceback and never passing; a local line longer than any
entry is refused without being read whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.audit import logdir
from signer.audit.entry import AuditEntry
from signer.audit.note import Verifier
from signer.audit.offline import verify_dir
from signer.encoding import canonical_json
from signer.errors import VerificationError
from testbed.commands import SIGNER, run
from tests.harness import refused
from tests.synthetic_log import OFFICERS, Synth, valid_quorum


def _with(e: AuditEntry, **changes: Any) -> AuditEntry:
    return dataclasses.replace(e, **changes)


def _details(e: AuditEntry, path: tuple[str | int, ...], value: Any) -> AuditEntry:
    details = json.loads(json.dumps(e.details))
    node = details
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return _with(e, details=details)


def _policy_with(s: Synth, path: tuple[str, ...], value: Any) -> AuditEntry:
    """server.started with one policy field replaced (its hash matches: only the type is off)."""
    policy = s.policy()
    node = policy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    digest = hashlib.sha256(canonical_json(policy)).hexdigest()
    return _with(s.entries[0], details={"policy": policy, "policy_hash": digest, "version": "0"})


# (entry to change, the change, the phrase `audit verify` must print)
_MISTYPED: list[tuple[str, int, Callable[[Synth, AuditEntry], AuditEntry], str]] = [
    (
        "index-string",
        0,
        lambda s, e: _with(e, index="0"),
        "entry 0: not a canonical audit entry: entry.index must be an integer, not a string",
    ),
    (
        "actor-integer",
        2,
        lambda s, e: _with(e, actor=5),
        "entry 2: not a canonical audit entry: entry.actor must be a string, not an integer",
    ),
    (
        "request-id-null",
        1,
        lambda s, e: _with(e, request_id=None),
        "entry 1: not a canonical audit entry: entry.request_id must be a string, not null",
    ),
    (
        "details-list",
        1,
        lambda s, e: _with(e, details=[]),
        "entry 1: not a canonical audit entry: entry.details must be an object, not a list",
    ),
    (
        "threshold-boolean",
        0,
        lambda s, e: _policy_with(s, ("keys", "release", "threshold"), True),
        "entry 0 (server.started): details.policy.keys.release.threshold must be an integer, "
        "not a boolean",
    ),
    (
        "threshold-zero",
        0,
        lambda s, e: _policy_with(s, ("keys", "release", "threshold"), 0),
        "entry 0 (server.started): details.policy.keys.release.threshold must be at least 1",
    ),
    (
        "approvers-string",
        0,
        lambda s, e: _policy_with(s, ("keys", "release", "approvers"), "alice bob carol"),
        "entry 0 (server.started): details.policy.keys.release.approvers must be a list, "
        "not a string",
    ),
    (
        "approver-key-integer",
        0,
        lambda s, e: _policy_with(s, ("approver_keys", "alice"), 5),
        "entry 0 (server.started): details.policy.approver_keys.alice must be a string, "
        "not an integer",
    ),
    (
        "digests-object",
        1,
        lambda s, e: _details(e, ("digests",), {}),
        "entry 1 (request.created): details.digests must be a list, not an object",
    ),
    (
        "digest-integer",
        1,
        lambda s, e: _details(e, ("digests", 0, "digest"), 5),
        "entry 1 (request.created): details.digests[0].digest must be a string, not an integer",
    ),
    (
        "caller-list",
        1,
        lambda s, e: _details(e, ("caller",), []),
        "entry 1 (request.created): details.caller must be an object, not a list",
    ),
    (
        "barred-string",
        1,
        lambda s, e: _details(e, ("caller",), {"barred_approvers": "alice"}),
        "entry 1 (request.created): details.caller.barred_approvers must be a list, not a string",
    ),
    (
        "key-name-integer",
        1,
        lambda s, e: _details(e, ("key_name",), 5),
        "entry 1 (request.created): details.key_name must be a string, not an integer",
    ),
    (
        "expire-time-out-of-range",
        1,
        lambda s, e: _details(e, ("expire_time",), "0001-01-01T00:00:00+01:00"),
        "entry 1 (request.created): ",
    ),
    (
        "envelope-object",
        2,
        lambda s, e: _details(e, ("envelope",), {}),
        "entry 2 (request.approved): details.envelope must be a string, not an object",
    ),
    (
        "signed-approvers-string",
        5,
        lambda s, e: _details(e, ("approvers",), "alice"),
        "entry 5 (request.signed): details.approvers must be a list, not a string",
    ),
    (
        "signed-key-id-integer",
        5,
        lambda s, e: _details(e, ("key_id",), 5),
        "entry 5 (request.signed): details.key_id must be a string, not an integer",
    ),
]


@pytest.mark.parametrize(
    ("index", "change", "phrase"), [c[1:] for c in _MISTYPED], ids=[c[0] for c in _MISTYPED]
)
def test_a_canonical_entry_with_a_field_of_the_wrong_type_is_one_clear_error(
    tmp_path: Path,
    index: int,
    change: Callable[[Synth, AuditEntry], AuditEntry],
    phrase: str,
) -> None:
    """A correctly signed log whose entry has a field of another JSON type fails verify with
    one line naming the entry and the field (never a traceback, never a pass)."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    valid_quorum(s)
    s.entries[index] = change(s, s.entries[index])
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError) as e:
        verify_dir(tmp_path / "log", Verifier.parse(verifier))
    assert str(e.value).startswith(phrase), str(e.value)
    assert "\n" not in str(e.value)


def test_audit_verify_prints_a_mistyped_field_as_one_line(tmp_path: Path) -> None:
    """The command exits 1 with `verification FAILED: entry N (...): FIELD ...`, no traceback."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    valid_quorum(s)
    s.entries[1] = _details(s.entries[1], ("caller",), ["not", "an", "object"])
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    p = run(
        [*SIGNER, "audit", "verify", str(tmp_path / "log"), "--verifier", verifier], check=False
    )
    refused(p, "verification FAILED: entry 1 (request.created): details.caller must be an object")
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_line_over_the_limit_is_refused_without_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local entries line longer than the largest entry is refused, naming the line."""
    s = Synth({o: Ed25519Signer.generate() for o in OFFICERS})
    valid_quorum(s)
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    longest = max(len(e.to_bytes()) for e in s.entries)
    monkeypatch.setattr(logdir, "MAX_LINE_BYTES", longest)  # every real line still fits
    assert verify_dir(tmp_path / "log", Verifier.parse(verifier)).entries == 6
    monkeypatch.setattr(logdir, "MAX_LINE_BYTES", longest - 10)
    with pytest.raises(VerificationError, match=r"entries\.jsonl: line \d+ is over"):
        verify_dir(tmp_path / "log", Verifier.parse(verifier))
