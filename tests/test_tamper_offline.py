"""Fetched audit files edited offline: `signer audit verify` names the first bad entry.

The files come from the baseline's auditor copies (tests/tamper.py); they do not
depend on the store, so these tests run once, on the first backend chosen.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit.note import Verifier
from tests.harness import ok, refused
from tests.synthetic_log import write_lines
from tests.tamper import Baseline, Case, audit_verify, copies, with_fields


@pytest.fixture(scope="module")
def fetched(request: pytest.FixtureRequest, baselines: Callable[[str], Baseline]) -> Baseline:
    """A baseline for the offline tests, which only read its fetched files: they do not
    depend on the store, so they run once, on SQLite unless only PostgreSQL is chosen."""
    only_pg = request.config.getoption("--backend") == "postgresql"
    return baselines("postgresql" if only_pg else "sqlite")


@pytest.fixture
def offline(fetched: Baseline, tmp_path: Path) -> Case:
    """Copies of the fetched logs only; the database is not touched."""
    return copies(fetched, tmp_path)


def _lines(d: Path) -> list[bytes]:
    return (d / "entries.jsonl").read_bytes().splitlines()


def _with_context(raw: bytes) -> bytes:
    """A request.created entry with other context: nothing the semantic checks read."""
    details = json.loads(raw)["details"]
    return with_fields(raw, details={**details, "context": {"repository": "org/evil"}})


def _without_key_name(raw: bytes) -> bytes:
    details = json.loads(raw)["details"]
    del details["key_name"]
    return with_fields(raw, details=details)


def test_offline_edits_name_the_first_bad_entry(offline: Case) -> None:
    """Each edit of the fetched entries fails `audit verify`, naming the entry or checkpoint."""
    base, d = offline.base, offline.end
    lines = _lines(d)
    late = base.index("request.approved", "bob", after=base.n_mid)
    early = base.index("request.created", "ci")
    created = base.index("request.created", "ci", after=base.n_mid)
    assert created + 1 == late  # bob's approval is the next entry of that request
    cases: list[tuple[list[bytes], list[str]]] = [
        # the actor of an approval changed: the approval no longer checks out
        (
            [*lines[:late], with_fields(lines[late], actor="mallory"), *lines[late + 1 :]],
            [f"entry {late} (request.approved)", "'mallory' has no approval key"],
        ),
        # a field no rule reads changed: the first checkpoint covering it disagrees
        (
            [*lines[:early], _with_context(lines[early]), *lines[early + 1 :]],
            [
                f"entry {base.n_mid - 1}: the log up to here does not match the signed "
                f"checkpoint of size {base.n_mid}: an entry at or before {base.n_mid - 1}",
            ],
        ),
        # not canonical any more
        (
            [*lines[:late], lines[late].replace(b'","', b'", "', 1), *lines[late + 1 :]],
            [f"entry {late}: not a canonical audit entry"],
        ),
        # fields the semantic checks need, missing or mistyped (once a traceback)
        (
            [*lines[:created], _without_key_name(lines[created]), *lines[created + 1 :]],
            [f"entry {created} (request.created): details.key_name is missing"],
        ),
        (
            [*lines[:late], with_fields(lines[late], time=5), *lines[late + 1 :]],
            [f"entry {late}: not a canonical audit entry"],
        ),
        # one line deleted
        (
            lines[:late] + lines[late + 1 :],
            [f"entry {late}: says it is entry {late + 1}", "removed, inserted or reordered"],
        ),
        # two lines swapped
        (
            [*lines[:late], lines[late + 1], lines[late], *lines[late + 2 :]],
            [f"entry {late}: says it is entry {late + 1}"],
        ),
        # the tail dropped
        (
            lines[:-3],
            [f"the log has {base.n - 3} entries but its latest checkpoint covers {base.n}"],
        ),
    ]
    for edited, phrases in cases:
        write_lines(d, edited)
        refused(audit_verify(d, base.verifier), "verification FAILED", *phrases)
    write_lines(d, lines)
    assert "OK: " in ok(audit_verify(d, base.verifier))


def _flip_signature_byte(note: str) -> str:
    text, _, sig_line = note.rpartition("\n\n")
    prefix, _, b64 = sig_line.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 0x01  # inside the signature, after the 4-byte key id
    return f"{text}\n\n{prefix} {base64.b64encode(bytes(raw)).decode()}\n"


def test_offline_bad_checkpoint_signature_or_other_key_fails(offline: Case) -> None:
    """A flipped signature byte, bad bytes, a stray note or another key's verifier: refused."""
    base, d = offline.base, offline.end
    other = Verifier.for_key(
        Verifier.parse(base.verifier).name, ed25519.Ed25519PrivateKey.generate().public_key()
    )
    refused(audit_verify(d, str(other)), "no signature by a known key")
    note = (d / "checkpoint").read_text()
    (d / "checkpoint").write_text(_flip_signature_byte(note))
    refused(audit_verify(d, base.verifier), f"{d / 'checkpoint'}: invalid signature for key")
    (d / "checkpoint").write_text(note)
    (d / "checkpoint").write_bytes(note.encode().replace(b"\n\n", b"\n\xff\n", 1))
    refused(audit_verify(d, base.verifier), "checkpoint: note has", "invalid UTF-8")  # no traceback
    (d / "checkpoint").write_text(note)
    stray = d / "checkpoints" / "latest.note"
    stray.write_text(note)
    refused(audit_verify(d, base.verifier), f"{stray}: not a checkpoint file")
    stray.unlink()
    history = d / "checkpoints" / f"{base.n_mid}.note"
    history.write_text(_flip_signature_byte(history.read_text()))
    refused(audit_verify(d, base.verifier), f"{history}: invalid signature for key")
