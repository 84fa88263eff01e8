"""`signer audit fetch`: an auditor's incremental, verified copy of the log.

Each fetch checks, with only the pinned audit verifier key, that the server's
new checkpoint is validly signed, that it is consistent with the checkpoint
verified last time (RFC 9162 consistency proof: no rollback, fork or rewritten
history), and that the entries served hash to the new root. Only then are the
entries and checkpoint written, the checkpoint last: it is the commit point,
and entries past it (a fetch that died midway) are dropped on the next fetch.
A local copy that no longer matches its own checkpoint is refused.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from signer.audit import merkle
from signer.audit.note import Checkpoint, open_checkpoint
from signer.audit.offline import LogDir
from signer.client import Profile, remote_error
from signer.errors import ConfigError, VerificationError
from signer.v1 import audit_pb2, audit_pb2_grpc

__all__ = ["FetchResult", "fetch"]


@dataclass(frozen=True)
class FetchResult:
    old_size: int
    new_size: int


def _write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def fetch(profile: Profile, out: Path) -> FetchResult:
    verifier = profile.audit_verifier
    if verifier is None:
        raise ConfigError(f"profile {profile.path} has no audit_verifier to pin")
    log = LogDir(out)
    out.mkdir(parents=True, exist_ok=True)
    log.history.mkdir(exist_ok=True)
    old: Checkpoint | None = None
    if log.checkpoint.exists():
        old = open_checkpoint(log.read_note(log.checkpoint), verifier, str(log.checkpoint))
    local = list(log.read_entries())
    committed = old.size if old is not None else 0
    if len(local) > committed:
        # Entries past the saved checkpoint were written by a fetch that did not finish
        # (the checkpoint is written last): they were never committed, so drop them.
        local = local[:committed]
        _rewrite_entries(log.entries, local)
    size, root = merkle.root_from_leaves(merkle.leaf_hash(e) for e in local)
    if old is not None and (size, root) != (old.size, old.root):
        raise VerificationError(
            f"the local copy in {out} no longer matches its checkpoint; fetch into a new "
            "directory and compare"
        )
    timeout = profile.timeout.total_seconds()
    try:
        with profile.channel() as channel:
            stub = audit_pb2_grpc.AuditServiceStub(channel)
            note = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=timeout)
            new = open_checkpoint(note.checkpoint, verifier, "the server's checkpoint")
            if old is not None:
                _check_extends(stub, old, new, timeout)
            fresh: list[bytes] = []
            while size + len(fresh) < new.size:
                start = size + len(fresh)
                got = stub.GetEntries(
                    audit_pb2.GetEntriesRequest(start=start, end=new.size), timeout=timeout
                ).events
                if not got:
                    raise VerificationError(f"the server returned no entries from {start}")
                for i, ev in enumerate(got):
                    if ev.index != start + i:
                        raise VerificationError(f"asked for entry {start + i}, got {ev.index}")
                fresh += [ev.entry for ev in got]
    except grpc.RpcError as e:
        raise remote_error(e) from None
    fresh = fresh[: new.size - size]
    _, full_root = merkle.root_from_leaves(
        merkle.leaf_hash(e) for e in itertools.chain(local, fresh)
    )
    if full_root != new.root:
        raise VerificationError(
            "the entries the server sent do not hash to its signed checkpoint's root"
        )
    with log.entries.open("ab") as f:
        for raw in fresh:
            if b"\n" in raw:
                raise VerificationError("an entry contains a newline: not canonical")
            f.write(raw + b"\n")
        f.flush()
        os.fsync(f.fileno())
    _write_atomic(log.history / f"{new.size}.note", note.checkpoint)
    _write_atomic(log.checkpoint, note.checkpoint)
    return FetchResult(size, new.size)


def _rewrite_entries(path: Path, entries: list[bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.writelines(e + b"\n" for e in entries)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
