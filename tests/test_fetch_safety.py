"""`signer audit fetch` writes only inside --out, in bounded memory, and verifies as it goes.

A small audit server of the test's own (gRPC, mutual TLS with certificates from
a throwaway DevCA, checkpoints signed by an in-memory Ed25519 key that the
auditor's profile pins) serves either an honest log or a hostile one: a
checkpoint claiming a billion entries, or entries altered in one page. Links
planted at any name the fetch writes must not be followed; a copy whose files
are links, and an --out that is one, are refused. `signer audit verify`
reports a canonical entry whose fields have the wrong type as one line naming
the entry and the field.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.approval.ed25519 import Ed25519Signer
from signer.audit import logdir, merkle
from signer.audit.entry import AuditEntry
from signer.audit.note import Checkpoint, Verifier, sign_note
from signer.audit.offline import verify_dir
from signer.encoding import canonical_json
from signer.errors import VerificationError
from signer.tls import DevCA, write_private
from signer.v1 import audit_pb2, audit_pb2_grpc
from testbed.commands import SIGNER, run
from tests.test_tamper import _OFFICERS, _Synth, _valid

ORIGIN = "example.test/fetch"
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
PRECIOUS = b"a file outside the copy\n"


def _entry(i: int, pad: int = 0) -> bytes:
    details = {"method": "/signer.v1.AuditService/GetEntries", "pad": "x" * pad}
    return AuditEntry(
        i, T0 + dt.timedelta(seconds=i), "call.rejected", "mallory", "", details
    ).to_bytes()


class LogServer(audit_pb2_grpc.AuditServiceServicer):
    """An AuditService over an honest log of `entries`, or a hostile one.

    `claimed` makes the checkpoint claim that many entries (root: random bytes) while
    pages of made-up entries are served, at most `max_pages` of them; `altered` serves
    other bytes for those indexes than the ones the checkpoint commits to.
    """

    def __init__(self, key: ed25519.Ed25519PrivateKey, page: int = 4) -> None:
        self.key, self.page = key, page
        self.entries: list[bytes] = []
        self.claimed: int | None = None
        self.pad, self.max_pages = 0, 100
        self.altered: dict[int, bytes] = {}
        self.entry_calls = 0
        self._lock = threading.Lock()

    def grow(self, n: int) -> None:
        self.entries += [_entry(i) for i in range(len(self.entries), len(self.entries) + n)]

    def _tree(self, size: int) -> merkle.MemoryTree:
        return merkle.MemoryTree(merkle.leaf_hash(e) for e in self.entries[:size])

    def GetCheckpoint(self, request: Any, context: Any) -> audit_pb2.GetCheckpointResponse:
        if self.claimed is not None:
            size, root = self.claimed, os.urandom(32)
        else:
            size = len(self.entries)
            root = merkle.root(self._tree(size), size)
        text = Checkpoint(ORIGIN, size, root).text()
        note = sign_note(text, ORIGIN, self.key.public_key(), self.key.sign)
        return audit_pb2.GetCheckpointResponse(tree_size=size, checkpoint=note)

    def GetEntries(self, request: Any, context: Any) -> audit_pb2.GetEntriesResponse:
        with self._lock:
            self.entry_calls += 1
            calls = self.entry_calls
        if self.claimed is not None:
            if calls > self.max_pages:
                return audit_pb2.GetEntriesResponse()
            indexes = range(request.start, min(request.end, request.start + self.page))
            raw = [_entry(i, self.pad) for i in indexes]
        else:
            indexes = range(
                request.start, min(request.end, len(self.entries), request.start + self.page)
            )
            raw = [self.altered.get(i, self.entries[i]) for i in indexes]
        return audit_pb2.GetEntriesResponse(
            events=[
                audit_pb2.AuditEvent(index=i, entry=e) for i, e in zip(indexes, raw, strict=True)
            ]
        )

    def ListAuditEvents(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served here")

    def GetInclusionProof(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not served here")

    def GetConsistencyProof(
        self, request: Any, context: Any
    ) -> audit_pb2.GetConsistencyProofResponse:
        if self.claimed is not None:
            return audit_pb2.GetConsistencyProofResponse(hashes=[os.urandom(32)] * 30)
        tree = self._tree(request.second)
        return audit_pb2.GetConsistencyProofResponse(
            hashes=merkle.consistency_proof(tree, request.first, request.second)
        )


@dataclasses.dataclass
class Fetcher:
    server: LogServer
    profile: Path
    verifier: str

    def fetch(self, out: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        args = ["audit", "fetch", "--profile", str(self.profile), "--out", str(out)]
        return run([*SIGNER, *args], check=False, timeout=timeout)

    def verify(self, out: Path) -> subprocess.CompletedProcess[str]:
        return run([*SIGNER, "audit", "verify", str(out), "--verifier", self.verifier], check=False)


@pytest.fixture
def fetcher(tmp_path: Path) -> Iterator[Fetcher]:
    """The test's audit server on 127.0.0.1 and an auditor profile pinning its key."""
    ca = DevCA("fetch CA")
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "ca.pem").write_bytes(ca.pem)
    server_cert, server_key = ca.issue("audit server", server_hosts=["127.0.0.1"])
    cert, key = ca.issue("auditor")
    (tls / "auditor.pem").write_bytes(cert)
    write_private(tls / "auditor.key", key)
    audit_key = ed25519.Ed25519PrivateKey.generate()
    log = LogServer(audit_key)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    audit_pb2_grpc.add_AuditServiceServicer_to_server(log, server)
    creds = grpc.ssl_server_credentials(
        [(server_key, server_cert)], root_certificates=ca.pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    verifier = str(Verifier.for_key(ORIGIN, audit_key.public_key()))
    profile = tmp_path / "auditor.toml"
    profile.write_text(
        f'server = "127.0.0.1:{port}"\nca = "tls/ca.pem"\ncert = "tls/auditor.pem"\n'
        f'key = "tls/auditor.key"\ntimeout = "30s"\naudit_verifier = "{verifier}"\n'
    )
    try:
        yield Fetcher(log, profile, verifier)
    finally:
        server.stop(0).wait()


def _ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def _refused(p: subprocess.CompletedProcess[str], *phrases: str, code: int = 1) -> str:
    message = " ".join(p.stderr.split())
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    for phrase in phrases:
        assert phrase in message, message
    return message


def _victim(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(PRECIOUS)
    return path


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# -- no link followed -----------------------------------------------------------------------


def test_links_planted_at_temporary_names_are_not_followed(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    """Symlinks at every name an older fetch used for temporary files (NAME.tmp) are left
    alone: the files they point to are unchanged, and the copy verifies."""
    out = tmp_path / "copy"
    (out / "checkpoints").mkdir(parents=True)
    victims = []
    for name in (
        "checkpoint.tmp",
        "entries.jsonl.tmp",
        "checkpoints/6.note.tmp",
        "checkpoints/9.note.tmp",
    ):
        victims.append(_victim(tmp_path, name.replace("/", "-")))
        (out / name).symlink_to(victims[-1])
    fetcher.server.grow(6)
    _ok(fetcher.fetch(out))
    with (out / "entries.jsonl").open("ab") as f:
        f.write(_entry(6) + b"\n")  # an uncommitted tail, as a fetch that died leaves it
    fetcher.server.grow(3)
    _ok(fetcher.fetch(out))
    assert all(v.read_bytes() == PRECIOUS for v in victims)
    assert not (out / "checkpoint").is_symlink()
    assert len((out / "entries.jsonl").read_bytes().splitlines()) == 9
    assert "OK: 9 entries, 2 checkpoints" in _ok(fetcher.verify(out))


def _link(out: Path, tmp_path: Path, name: str, kind: str) -> Path:
    """Replace out/NAME by a link to a copy of it outside `out`; return the copy."""
    target = out / name
    victim = tmp_path / "elsewhere" / name.replace("/", "-")
    victim.parent.mkdir(exist_ok=True)
    os.rename(target, victim)
    if kind == "symlink":
        target.symlink_to(victim)
    else:
        os.link(victim, target)
    return victim


@pytest.mark.parametrize(
    ("name", "kind", "phrase"),
    [
        ("entries.jsonl", "symlink", "entries.jsonl is a symbolic link"),
        ("entries.jsonl", "hardlink", "entries.jsonl has 1 other hard link(s)"),
        ("checkpoint", "symlink", "checkpoint is a symbolic link"),
        ("checkpoint", "hardlink", "checkpoint has 1 other hard link(s)"),
        ("checkpoints", "symlink", "checkpoints: refused: it is a symbolic link"),
        ("checkpoints/5.note", "symlink", "5.note is a symbolic link"),
    ],
)
def test_a_copy_whose_files_are_links_is_refused(
    fetcher: Fetcher, tmp_path: Path, name: str, kind: str, phrase: str
) -> None:
    """A link in the copy (symbolic, or a hard link to a file elsewhere) makes the fetch
    exit 1 naming it, before anything is written: what it points to is unchanged."""
    out = tmp_path / "copy"
    fetcher.server.grow(5)
    _ok(fetcher.fetch(out))
    victim = _link(out, tmp_path, name, kind)
    before = victim.read_bytes() if victim.is_file() else _files(victim)
    fetcher.server.grow(4)
    _refused(fetcher.fetch(out), phrase)
    assert (victim.read_bytes() if victim.is_file() else _files(victim)) == before


def test_a_fifo_in_the_copy_is_refused_at_once(fetcher: Fetcher, tmp_path: Path) -> None:
    """A FIFO where entries.jsonl should be is refused (not read, which would hang)."""
    out = tmp_path / "copy"
    out.mkdir()
    os.mkfifo(out / "entries.jsonl")
    fetcher.server.grow(3)
    _refused(fetcher.fetch(out, timeout=30), "entries.jsonl is not a regular file")


def test_an_out_that_is_a_symlink_is_refused(fetcher: Fetcher, tmp_path: Path) -> None:
    """--out naming a symbolic link exits 2 naming it; the directory it points to stays empty."""
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "copy"
    out.symlink_to(real)
    fetcher.server.grow(3)
    _refused(fetcher.fetch(out), f"{out} is a symbolic link", code=2)
    assert list(real.iterdir()) == []


def test_verify_follows_no_link_inside_the_copy(fetcher: Fetcher, tmp_path: Path) -> None:
    """`audit verify` reads a copy through a linked directory, but not a linked entries file."""
    out = tmp_path / "copy"
    fetcher.server.grow(4)
    _ok(fetcher.fetch(out))
    alias = tmp_path / "alias"
    alias.symlink_to(out)
    assert "OK: 4 entries" in _ok(fetcher.verify(alias))
    _link(out, tmp_path, "entries.jsonl", "symlink")
    _refused(fetcher.verify(out), "entries.jsonl: it is a symbolic link")


# -- bounded memory, verified page by page --------------------------------------------------

_MAXRSS = (
    "import json, resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[2:], capture_output=True, text=True)\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'rc': p.returncode, 'stderr': p.stderr, 'maxrss_kib': usage.ru_maxrss}, f)\n"
)


def test_a_checkpoint_claiming_a_billion_entries_fails_within_one_page(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    """A validly signed checkpoint of 10^9 entries, over pages of made-up 2 KiB entries, is
    refused after the first page (a consistency proof from it fails): one GetEntries
    call, memory far below what holding the pages would take, nothing committed."""
    log = fetcher.server
    log.claimed, log.page, log.pad, log.max_pages = 10**9, 1000, 2048, 100  # 200 MiB served
    out, result = tmp_path / "copy", tmp_path / "rusage.json"
    args = ["audit", "fetch", "--profile", str(fetcher.profile), "--out", str(out)]
    run([sys.executable, "-c", _MAXRSS, str(result), *SIGNER, *args], timeout=120)
    got = json.loads(result.read_text())
    assert got["rc"] == 1 and "Traceback" not in got["stderr"], got["stderr"]
    assert got["maxrss_kib"] < 150 * 1024, f"the fetch grew to {got['maxrss_kib']} KiB"
    assert log.entry_calls == 1
    message = " ".join(got["stderr"].split())
    assert (
        "the first 1000 entries the server sent are not the start of its signed log of 1000000000"
        in message
    )
    assert (out / "entries.jsonl").read_bytes() == b"" and not (out / "checkpoint").exists()


def test_entries_altered_in_one_page_are_caught_in_that_page(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    """Entries the checkpoint does not commit to, served in the 6th page of 4, stop the fetch
    at that page; the copy is cut back to what its checkpoint committed."""
    out = tmp_path / "copy"
    fetcher.server.grow(8)
    _ok(fetcher.fetch(out))
    committed = _files(out)
    fetcher.server.grow(40)
    fetcher.server.entry_calls = 0
    fetcher.server.altered[21] = _entry(21, pad=1)  # canonical, but not the committed bytes
    _refused(
        fetcher.fetch(out),
        "the first 24 entries the server sent are not the start of its signed log of 48",
    )
    assert fetcher.server.entry_calls == 4  # pages [8,12) [12,16) [16,20) [20,24)
    assert _files(out) == committed
    del fetcher.server.altered[21]
    _ok(fetcher.fetch(out))
    assert "OK: 48 entries" in _ok(fetcher.verify(out))


def test_an_entry_that_is_not_its_own_index_is_refused_while_fetching(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    """The server's entries must be canonical audit entries carrying their own index."""
    out = tmp_path / "copy"
    fetcher.server.grow(6)
    fetcher.server.entries[4] = _entry(5)
    _refused(fetcher.fetch(out), "entry 4: says it is entry 5")
    assert not (out / "checkpoint").exists() and (out / "entries.jsonl").read_bytes() == b""


# -- offline: the type of every field -------------------------------------------------------


def _with(e: AuditEntry, **changes: Any) -> AuditEntry:
    return dataclasses.replace(e, **changes)


def _details(e: AuditEntry, path: tuple[str | int, ...], value: Any) -> AuditEntry:
    details = json.loads(json.dumps(e.details))
    node = details
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return _with(e, details=details)


def _policy_with(s: _Synth, path: tuple[str, ...], value: Any) -> AuditEntry:
    """server.started with one policy field replaced (its hash matches: only the type is off)."""
    policy = s.policy()
    node = policy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    digest = hashlib.sha256(canonical_json(policy)).hexdigest()
    return _with(s.entries[0], details={"policy": policy, "policy_hash": digest, "version": "0"})


# (entry to change, the change, the phrase `audit verify` must print)
_MISTYPED: list[tuple[str, int, Callable[[_Synth, AuditEntry], AuditEntry], str]] = [
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
    change: Callable[[_Synth, AuditEntry], AuditEntry],
    phrase: str,
) -> None:
    """A correctly signed log whose entry has a field of another JSON type fails verify with
    one line naming the entry and the field (never a traceback, never a pass)."""
    s = _Synth({o: Ed25519Signer.generate() for o in _OFFICERS})
    _valid(s)
    s.entries[index] = change(s, s.entries[index])
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(VerificationError) as e:
        verify_dir(tmp_path / "log", Verifier.parse(verifier))
    assert str(e.value).startswith(phrase), str(e.value)
    assert "\n" not in str(e.value)


def test_audit_verify_prints_a_mistyped_field_as_one_line(tmp_path: Path) -> None:
    """The command exits 1 with `verification FAILED: entry N (...): FIELD ...`, no traceback."""
    s = _Synth({o: Ed25519Signer.generate() for o in _OFFICERS})
    _valid(s)
    s.entries[1] = _details(s.entries[1], ("caller",), ["not", "an", "object"])
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    p = run(
        [*SIGNER, "audit", "verify", str(tmp_path / "log"), "--verifier", verifier], check=False
    )
    _refused(p, "verification FAILED: entry 1 (request.created): details.caller must be an object")
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_line_over_the_limit_is_refused_without_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local entries line longer than the largest entry is refused, naming the line."""
    s = _Synth({o: Ed25519Signer.generate() for o in _OFFICERS})
    _valid(s)
    verifier = s.write(tmp_path / "log", ed25519.Ed25519PrivateKey.generate())
    longest = max(len(e.to_bytes()) for e in s.entries)
    monkeypatch.setattr(logdir, "MAX_LINE_BYTES", longest)  # every real line still fits
    assert verify_dir(tmp_path / "log", Verifier.parse(verifier)).entries == 6
    monkeypatch.setattr(logdir, "MAX_LINE_BYTES", longest - 10)
    with pytest.raises(VerificationError, match=r"entries\.jsonl: line \d+ is over"):
        verify_dir(tmp_path / "log", Verifier.parse(verifier))
