"""`signer audit fetch`: an auditor's incremental, verified copy of the log.

Each fetch checks, with only the pinned audit verifier key, that the server's
new checkpoint is validly signed, that it is consistent with the checkpoint
verified last time (RFC 9162 consistency proof: no rollback, fork or rewritten
history), and that the entries served are that checkpoint's log: each page,
once appended, is proved (a consistency proof from the root of everything so
far) to be a prefix of the signed tree, so a server that serves anything else
is caught within one page, and the entries past the local copy are never held
in memory (one page and O(log n) hashes at a time, whatever size a checkpoint
claims). Each entry must be a canonical audit entry with its own index.

The checkpoint is the commit point: it is written last, and entries past it
(a fetch that failed or died midway) are cut on failure and on the next
fetch. A local copy that no longer matches its own checkpoint is refused.
Files are written only inside `--out`, through `LogDir` (no link followed;
a copy whose files are links, or an `--out` that is one, refused).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from signer.audit import merkle
from signer.audit.logdir import LogDir
from signer.audit.note import Checkpoint, Verifier, open_checkpoint
from signer.audit.offline import PrefixTree, parse_entry
from signer.client.profile import Profile, remote_error
from signer.errors import ConfigError, VerificationError
from signer.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["FetchResult", "fetch"]


@dataclass(frozen=True)
class FetchResult:
    old_size: int
    new_size: int


@dataclass
class _Local:
    """The verified local copy: its checkpoint, the tree of its entries, their bytes."""

    checkpoint: Checkpoint | None
    tree: PrefixTree
    length: int  # bytes of entries.jsonl that the checkpoint commits


def fetch(profile: Profile, out: Path) -> FetchResult:
    verifier = profile.audit_verifier
    if verifier is None:
        raise ConfigError(f"profile {profile.path} has no audit_verifier to pin")
    with LogDir(out, writable=True) as log:
        local = _open_local(log, verifier)
        old_size = local.tree.size
        timeout = profile.timeout.total_seconds()
        try:
            with profile.channel() as channel:
                stub = audit_pb2_grpc.AuditServiceStub(channel)
                note = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=timeout)
                new = open_checkpoint(note.checkpoint, verifier, "the server's checkpoint")
                if local.checkpoint is not None:
                    _check_extends(stub, local.checkpoint, new, timeout)
                _append_verified(stub, log, local, new, timeout)
        except grpc.RpcError as e:
            raise remote_error(e, profile) from None
        log.write_checkpoint(new.size, note.checkpoint)
    return FetchResult(old_size, new.size)


def _open_local(log: LogDir, verifier: Verifier) -> _Local:
    """Verify the local copy against its own checkpoint, streaming; cut uncommitted entries."""
    old = None
    if log.has_checkpoint():
        old = open_checkpoint(log.read_checkpoint(), verifier, str(log.checkpoint))
    committed = old.size if old is not None else 0
    tree, length, extra = PrefixTree(), 0, False
    with contextlib.closing(log.read_lines()) as lines:
        for line in lines:
            if tree.size == committed:
                extra = True
                break
            if not line.endswith(b"\n"):
                break  # a cut line inside the committed part: refused below
            tree.push(merkle.leaf_hash(line[:-1]))
            length += len(line)
    if old is not None and (tree.size, tree.root()) != (old.size, old.root):
        raise VerificationError(
            f"the local copy in {log.path} no longer matches its checkpoint; fetch into a new "
            "directory and compare"
        )
    if extra:
        # Entries past the saved checkpoint were written by a fetch that did not finish
        # (the checkpoint is written last): they were never committed, so cut them.
        log.truncate_entries(length)
    return _Local(old, tree, length)


def _append_verified(
    stub: audit_pb2_grpc.AuditServiceStub,
    log: LogDir,
    local: _Local,
    new: Checkpoint,
    timeout: float,
) -> None:
    """Append the entries up to `new`, each page proved a prefix of `new`'s log; on any
    failure, cut entries.jsonl back to what the old checkpoint commits."""
    tree = local.tree
    try:
        with log.appending() as f:
            for page in _pages(stub, tree.size, new.size, timeout):
                for raw in page:
                    parse_entry(raw, tree.size)
                    tree.push(merkle.leaf_hash(raw))
                    f.write(raw + b"\n")
                if tree.size < new.size:
                    _check_prefix(stub, tree, new, timeout)
        if tree.root() != new.root:
            raise VerificationError(
                "the entries the server sent do not hash to its signed checkpoint's root"
            )
    except BaseException:
        log.truncate_entries(local.length)
        raise


def _pages(
    stub: audit_pb2_grpc.AuditServiceStub, start: int, end: int, timeout: float
) -> Iterator[list[bytes]]:
    """The entries [start, end) as the server pages them, each page's indexes checked."""
    while start < end:
        got = stub.GetEntries(
            audit_pb2.GetEntriesRequest(start=start, end=end), timeout=timeout
        ).events
        if not got:
            raise VerificationError(f"the server returned no entries from {start}")
        for i, ev in enumerate(got):
            if ev.index != start + i:
                raise VerificationError(f"asked for entry {start + i}, got {ev.index}")
        page = [ev.entry for ev in got[: end - start]]
        yield page
        start += len(page)


def _check_prefix(
    stub: audit_pb2_grpc.AuditServiceStub, tree: PrefixTree, new: Checkpoint, timeout: float
) -> None:
    """The entries so far are the first `tree.size` of the signed log (0 < size < new.size)."""
    proof = stub.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(first=tree.size, second=new.size), timeout=timeout
    )
    try:
        merkle.verify_consistency(tree.size, new.size, tree.root(), new.root, list(proof.hashes))
    except VerificationError as e:
        raise VerificationError(
            f"the first {tree.size} entries the server sent are not the start of its signed "
            f"log of {new.size} entries: {e}"
        ) from None


def _check_extends(
    stub: audit_pb2_grpc.AuditServiceStub, old: Checkpoint, new: Checkpoint, timeout: float
) -> None:
    """The new checkpoint must extend the last verified one (no rollback, no fork)."""
    if new.size < old.size:
        raise VerificationError(
            f"rollback: the server's log has {new.size} entries; {old.size} were verified before"
        )
    if new.size == old.size:
        if new.root != old.root:
            raise VerificationError(
                f"fork: the server signed two different logs of {new.size} entries"
            )
        return
    proof = stub.GetConsistencyProof(
        audit_pb2.GetConsistencyProofRequest(first=old.size, second=new.size), timeout=timeout
    )
    try:
        merkle.verify_consistency(old.size, new.size, old.root, new.root, list(proof.hashes))
    except VerificationError as e:
        raise VerificationError(
            f"the server's log of {new.size} entries does not extend the {old.size} verified "
            f"before (fork or rewritten history): {e}"
        ) from None
