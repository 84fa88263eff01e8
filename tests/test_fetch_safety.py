"""`signer audit fetch` writes only inside --out, in bounded memory, and verifies as it goes.

A small audit server of the test's own (gRPC, mutual TLS with certificates from
a throwaway DevCA, checkpoints signed by an in-memory Ed25519 key that the
auditor's profile pins) serves either an honest log or a hostile one: a
checkpoint claiming a billion entries, or entries altered in one page. Links
planted at any name the fetch writes must not be followed; a copy whose files
are links, and an --out that is one, are refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit import merkle
from signer.audit.entry import AuditEntry
from signer.audit.note import Checkpoint, Verifier, sign_note
from signer.tls import DevCA, write_private
from signer.v1 import audit_pb2, audit_pb2_grpc
from testbed.commands import SIGNER, run
from tests.harness import ok, refused

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
    ok(fetcher.fetch(out))
    with (out / "entries.jsonl").open("ab") as f:
        f.write(_entry(6) + b"\n")  # an uncommitted tail, as a fetch that died leaves it
    fetcher.server.grow(3)
    ok(fetcher.fetch(out))
    assert all(v.read_bytes() == PRECIOUS for v in victims)
    assert not (out / "checkpoint").is_symlink()
    assert len((out / "entries.jsonl").read_bytes().splitlines()) == 9
    assert "OK: 9 entries, 2 checkpoints" in ok(fetcher.verify(out))


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
    ok(fetcher.fetch(out))
    victim = _link(out, tmp_path, name, kind)
    before = victim.read_bytes() if victim.is_file() else _files(victim)
    fetcher.server.grow(4)
    refused(fetcher.fetch(out), phrase)
    assert (victim.read_bytes() if victim.is_file() else _files(victim)) == before


def test_a_fifo_in_the_copy_is_refused_at_once(fetcher: Fetcher, tmp_path: Path) -> None:
    """A FIFO where entries.jsonl should be is refused (not read, which would hang)."""
    out = tmp_path / "copy"
    out.mkdir()
    os.mkfifo(out / "entries.jsonl")
    fetcher.server.grow(3)
    refused(fetcher.fetch(out, timeout=30), "entries.jsonl is not a regular file")


def test_an_out_that_is_a_symlink_is_refused(fetcher: Fetcher, tmp_path: Path) -> None:
    """--out naming a symbolic link exits 2 naming it; the directory it points to stays empty."""
    real = tmp_path / "real"
    real.mkdir()
    out = tmp_path / "copy"
    out.symlink_to(real)
    fetcher.server.grow(3)
    refused(fetcher.fetch(out), f"{out} is a symbolic link", code=2)
    assert list(real.iterdir()) == []


def test_verify_follows_no_link_inside_the_copy(fetcher: Fetcher, tmp_path: Path) -> None:
    """`audit verify` reads a copy through a linked directory, but not a linked entries file."""
    out = tmp_path / "copy"
    fetcher.server.grow(4)
    ok(fetcher.fetch(out))
    alias = tmp_path / "alias"
    alias.symlink_to(out)
    assert "OK: 4 entries" in ok(fetcher.verify(alias))
    _link(out, tmp_path, "entries.jsonl", "symlink")
    refused(fetcher.verify(out), "entries.jsonl: it is a symbolic link")


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
    ok(fetcher.fetch(out))
    committed = _files(out)
    fetcher.server.grow(40)
    fetcher.server.entry_calls = 0
    fetcher.server.altered[21] = _entry(21, pad=1)  # canonical, but not the committed bytes
    refused(
        fetcher.fetch(out),
        "the first 24 entries the server sent are not the start of its signed log of 48",
    )
    assert fetcher.server.entry_calls == 4  # pages [8,12) [12,16) [16,20) [20,24)
    assert _files(out) == committed
    del fetcher.server.altered[21]
    ok(fetcher.fetch(out))
    assert "OK: 48 entries" in ok(fetcher.verify(out))


def test_an_entry_that_is_not_its_own_index_is_refused_while_fetching(
    fetcher: Fetcher, tmp_path: Path
) -> None:
    """The server's entries must be canonical audit entries carrying their own index."""
    out = tmp_path / "copy"
    fetcher.server.grow(6)
    fetcher.server.entries[4] = _entry(5)
    refused(fetcher.fetch(out), "entry 4: says it is entry 5")
    assert not (out / "checkpoint").exists() and (out / "entries.jsonl").read_bytes() == b""
