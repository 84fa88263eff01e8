"""The auditor's command line against the shared server: fetch, verify, show, export, list.

`signer audit fetch` keeps a verified local copy (only new entries on each run),
`signer audit verify` checks it offline, and `audit show / export / list` read the
log with filters. Every command runs as a subprocess with the auditor's profile.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from signer.audit.entry import AuditEntry
from signer.v1 import types_pb2
from testbed.clients import Clients
from testbed.commands import SIGNER, run
from testbed.process import Running

SIGNED = types_pb2.REQUEST_STATE_SIGNED
_FETCHED = re.compile(
    r"fetched (\d+) entr(?:y|ies); (.+) holds (\d+), consistent with the last verified checkpoint"
)


def _audit(r: Running, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    profile = str(r.env.profile_path("auditor"))
    return run([*SIGNER, "audit", *args, "--profile", profile], check=check, timeout=60)


def _fetch(r: Running, out: Path) -> tuple[int, int]:
    """(entries fetched, entries held) as `audit fetch` reports them."""
    m = _FETCHED.fullmatch(_audit(r, "fetch", "--out", str(out)).stdout.strip())
    assert m is not None and m[2] == str(out)
    return int(m[1]), int(m[3])


def _verify(r: Running, directory: Path, *args: str) -> str:
    verifier = str(r.env.profile("auditor").audit_verifier)
    cmd = [*SIGNER, "audit", "verify", str(directory), "--verifier", verifier, *args]
    return run(cmd, timeout=60).stdout


def _entries(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / "entries.jsonl").read_bytes().splitlines()]


def _list(r: Running, *filters: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(_audit(r, "list", *filters, "--json").stdout)
    return events


def _signed(c: Clients, key: str = "release") -> types_pb2.SigningRequest:
    r = c.create(key=key)
    c.approve("alice", r)
    got = c.approve("bob", r)
    assert got.state == SIGNED
    return got


def test_fetch_verify_then_incremental_fetch(shared: Running, tmp_path: Path) -> None:
    """fetch + verify pass; a second fetch after more flows takes only the new entries."""
    out = tmp_path / "log"
    fetched, held = _fetch(shared, out)
    assert fetched == held == len(_entries(out)) > 0
    ok = _verify(shared, out)
    assert ok.startswith(f"OK: {held} entries, 1 checkpoint signed by localhost/signer-dev")

    r = _signed(shared.clients)
    fetched2, held2 = _fetch(shared, out)
    assert fetched2 == held2 - held >= 5  # created, 2 approvals, quorum, signed (and any other)
    again = json.loads(_audit(shared, "fetch", "--out", str(out), "--json").stdout)
    assert again["entries"] >= held2 and again["directory"] == str(out)
    assert again["fetched"] == again["entries"] - held2
    entries = _entries(out)
    assert len(entries) == held2 and [e["index"] for e in entries] == list(range(held2))
    mine = [e["event"] for e in entries[held:] if e["request_id"] == r.id]
    assert mine == [
        "request.created",
        "request.approved",
        "request.approved",
        "request.quorum",
        "request.signed",
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        [f"{held}.note", f"{held2}.note"]
    )
    report = json.loads(_verify(shared, out, "--json"))
    assert report["entries"] == report["tree_size"] == held2
    assert report["checkpoints"] == 2
    assert report["signed"] == sum(e["event"] == "request.signed" for e in entries) >= 1
    assert report["approvals"] == sum(e["event"] == "request.approved" for e in entries)


def test_show_prints_entry_and_inclusion(shared: Running, tmp_path: Path) -> None:
    """`audit show INDEX` prints the JSON entry and that it is in the signed checkpoint."""
    r = _signed(shared.clients)
    (signed,) = _list(shared, "--request", r.id, "--event", "request.signed")
    p = _audit(shared, "show", str(signed["index"]))
    assert json.loads(p.stdout) == signed
    message = " ".join(p.stderr.split())
    assert f"entry {signed['index']}: included in the signed checkpoint of size" in message
    missing = _audit(shared, "show", "100000000", check=False)
    assert missing.returncode == 1 and "outside the log" in missing.stderr


def test_export_jsonl_by_requester(shared: Running) -> None:
    """`audit export --requester ci` prints canonical entries, one per line, of ci's requests."""
    c = shared.clients
    mine, theirs = c.create(), c.create(who="ci2")
    p = _audit(shared, "export", "--format", "jsonl", "--requester", "ci")
    lines = p.stdout.encode().splitlines()
    assert lines and p.stdout.endswith("\n")
    entries = [AuditEntry.from_bytes(line) for line in lines]  # refuses non-canonical bytes
    assert [e.to_bytes() for e in entries] == lines
    ids = {e.request_id for e in entries}
    assert mine.id in ids and theirs.id not in ids
    requester = {e["request_id"]: e["actor"] for e in _list(shared, "--event", "request.created")}
    assert {requester[i] for i in ids} == {"ci"}


def test_list_by_approver(shared: Running) -> None:
    """`audit list --approver alice` has only alice's approvals and denials."""
    c = shared.clients
    approved, denied = c.create(), c.create()
    c.approve("alice", approved)
    c.approve("bob", approved)  # someone else's decision, not listed
    c.deny("alice", denied)
    events = _list(shared, "--approver", "alice")
    assert {e["actor"] for e in events} == {"alice"}
    assert {e["event"] for e in events} <= {"request.approved", "request.denied"}
    decisions = {(e["request_id"], e["event"]) for e in events}
    assert (approved.id, "request.approved") in decisions
    assert (denied.id, "request.denied") in decisions


def test_list_by_key_and_event(shared: Running) -> None:
    """`audit list --key release --event request.signed` has only release's signatures."""
    c = shared.clients
    release, other = _signed(c), _signed(c, key="k-ecdsa-p256")
    events = _list(shared, "--key", "release", "--event", "request.signed")
    assert events and {e["event"] for e in events} == {"request.signed"}
    assert {e["details"]["key_id"] for e in events} == {release.key_id}
    ids = {e["request_id"] for e in events}
    assert release.id in ids and other.id not in ids


def test_list_since_until(shared: Running) -> None:
    """--since (inclusive) and --until (exclusive) select entries by their time."""
    c = shared.clients
    t0 = dt.datetime.now(dt.UTC)
    inside = c.create()
    c.approve("alice", inside)
    t1 = dt.datetime.now(dt.UTC)
    after = c.create()
    since, until = t0.isoformat(), t1.isoformat()
    window = _list(shared, "--since", since, "--until", until)
    assert [(e["request_id"], e["event"]) for e in window] == [
        (inside.id, "request.created"),
        (inside.id, "request.approved"),
    ]
    for e in window:
        assert t0 <= dt.datetime.fromisoformat(e["time"]) < t1
    later = {e["request_id"] for e in _list(shared, "--since", until)}
    assert after.id in later and inside.id not in later
    earlier = {e["request_id"] for e in _list(shared, "--until", since)}
    assert inside.id not in earlier and after.id not in earlier
    bad = _audit(shared, "list", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_fetch_without_pinned_verifier_is_a_config_error(shared: Running, tmp_path: Path) -> None:
    """A profile without audit_verifier makes `audit fetch` exit 2, naming it; nothing written."""
    tls = shared.env.root / "tls"
    profile = tmp_path / "unpinned.toml"
    profile.write_text(
        f'server = "127.0.0.1:{shared.env.port}"\n'
        f'ca = "{tls / "ca.pem"}"\n'
        f'cert = "{tls / "auditor.pem"}"\n'
        f'key = "{tls / "auditor.key"}"\n'
    )
    out = tmp_path / "log"
    cmd = [*SIGNER, "audit", "fetch", "--profile", str(profile), "--out", str(out)]
    p = run(cmd, check=False, timeout=60)
    message = " ".join(p.stderr.split())
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"profile {profile} has no audit_verifier to pin" in message
    assert "Traceback" not in p.stderr
    assert not out.exists()


def test_fetch_refuses_a_corrupted_local_copy(shared: Running, tmp_path: Path) -> None:
    """A local copy edited since its last fetch, or with bad bytes in its checkpoint, is refused."""
    out = tmp_path / "log"
    _, held = _fetch(shared, out)
    shared.clients.create()
    entries = (out / "entries.jsonl").read_bytes()
    (out / "entries.jsonl").write_bytes(entries.replace(b'"actor":"', b'"actor":"x', 1))
    p = _audit(shared, "fetch", "--out", str(out), check=False)
    assert p.returncode == 1 and "no longer matches its checkpoint" in " ".join(p.stderr.split())
    (out / "entries.jsonl").write_bytes(entries)
    note = (out / "checkpoint").read_bytes()
    (out / "checkpoint").write_bytes(note.replace(b"\n\n", b"\n\xff\n", 1))
    p = _audit(shared, "fetch", "--out", str(out), check=False)
    assert p.returncode == 1 and "invalid UTF-8" in p.stderr and "Traceback" not in p.stderr
    (out / "checkpoint").write_bytes(note)
    fetched, held2 = _fetch(shared, out)
    assert fetched == held2 - held >= 1


def test_fetch_recovers_from_a_fetch_that_died_midway(shared: Running, tmp_path: Path) -> None:
    """Entries written past the saved checkpoint (a crash before it) are dropped, then refetched."""
    out = tmp_path / "copy"
    profile = str(shared.env.profile_path("auditor"))
    run([*SIGNER, "audit", "fetch", "--profile", profile, "--out", str(out)])
    entries = out / "entries.jsonl"
    good = entries.read_bytes()
    entries.write_bytes(good + good.splitlines(keepends=True)[0])  # an uncommitted tail
    shared.clients.create()
    run([*SIGNER, "audit", "fetch", "--profile", profile, "--out", str(out)])
    assert entries.read_bytes().startswith(good)
    verifier = str(shared.env.profile("auditor").audit_verifier)
    assert "OK" in run([*SIGNER, "audit", "verify", str(out), "--verifier", verifier]).stdout
