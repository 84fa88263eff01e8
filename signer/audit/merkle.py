"""The audit log's Merkle tree: RFC 9162 hashing, proofs and their verification.

Leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right), and the
tree head over n leaves is MTH from RFC 9162 §2.1.1 (docs/architecture.md §6, invariant 4:
any edit, deletion, reordering or rollback of the log changes a root or breaks
a proof).

The tree is stored as its *perfect* nodes: (level, index) is the hash of the
2**level leaves starting at leaf index * 2**level. A node never changes once
its subtree is full, so appending writes only new nodes (`new_nodes`), and
every root or proof is assembled from O(log n) of them; nothing rehashes the
log. The storage is behind `NodeSource`; `MemoryTree` keeps it in a dict.

Verification is self-contained (no `NodeSource`) and strict: sizes, indexes,
hash lengths and proof lengths are checked before any hashing, and every
failure raises `VerificationError`. Impossible arguments to the generating
functions (an index outside the tree, a hash that is not 32 bytes) raise
`InvalidArgumentError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

from signer.errors import InvalidArgumentError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryTree",
    "NodeSource",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "new_nodes",
    "node_hash",
    "root",
    "root_from_leaves",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || entry)."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


class NodeSource(Protocol):
    """Read access to the stored perfect nodes of one tree."""

    def perfect(self, level: int, index: int) -> bytes:
        """Hash of the complete subtree of 2**level leaves starting at leaf index * 2**level."""
        ...


# -- generating: roots and proofs from perfect nodes ---------------------------


def _require_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidArgumentError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def new_nodes(src: NodeSource, size: int, leaf: bytes) -> list[tuple[int, int, bytes]]:
    """Appending leaf hash `leaf` at position `size`: the perfect nodes this completes,
    as (level, index, hash), starting with (0, size, leaf). Reads O(log n) nodes."""
    if size < 0:
        raise InvalidArgumentError(f"tree size {size} is negative")
    _require_hash(leaf, "leaf hash")
    out = [(0, size, leaf)]
    level, index, h = 0, size, leaf
    while index & 1:  # a right child completes its parent
        h = node_hash(src.perfect(level, index - 1), h)
        level, index = level + 1, index >> 1
        out.append((level, index, h))
    return out


def _range_hash(src: NodeSource, start: int, count: int) -> bytes:
    """MTH(D[start:start+count]) for a range inside one perfect subtree.

    `start` is a multiple of a power of two >= `count`, so the range splits into
    aligned perfect subtrees, largest first (the bits of `count`); MTH folds
    them from the right. Reads popcount(count) nodes.
    """
    assert count > 0 and start % (1 << (count - 1).bit_length()) == 0
    parts: list[bytes] = []
    offset = start
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            parts.append(src.perfect(level, offset >> level))
            offset += 1 << level
    h = parts.pop()
    while parts:
        h = node_hash(parts.pop(), h)
    return h


def root(src: NodeSource, size: int) -> bytes:
    """MTH of the first `size` leaves (EMPTY_ROOT for 0). Reads popcount(size) nodes."""
    if size < 0:
        raise InvalidArgumentError(f"tree size {size} is negative")
    return _range_hash(src, 0, size) if size else EMPTY_ROOT


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(src: NodeSource, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[0:size]), leaf side first."""
    if not 0 <= index < size:
        raise InvalidArgumentError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []  # built root side first, reversed at the end
    start, n, m = 0, size, index
    while n > 1:
        k = _split(n)
        if m < k:
            path.append(_range_hash(src, start + k, n - k))
            n = k
        else:
            path.append(_range_hash(src, start, k))
            start, n, m = start + k, n - k, m - k
    path.reverse()
    return path


def consistency_proof(src: NodeSource, old: int, new: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old, D[0:new]); empty when old == new."""
    if not 0 < old <= new:
        raise InvalidArgumentError(
            f"no consistency proof from size {old} to size {new}: need 0 < old <= new"
        )
    proof: list[bytes] = []  # built root side first, reversed at the end
    start, n, m, whole = 0, new, old, True
    while m != n:
        k = _split(n)
        if m <= k:
            proof.append(_range_hash(src, start + k, n - k))
            n = k
        else:
            proof.append(_range_hash(src, start, k))
            start, n, m, whole = start + k, n - k, m - k, False
    if not whole:
        proof.append(_range_hash(src, start, m))
    proof.reverse()
    return proof


def root_from_leaves(leaves: Iterable[bytes]) -> tuple[int, bytes]:
    """(size, MTH) of a stream of leaf hashes, holding O(log n) hashes.

    Keeps a stack of the pending perfect subtrees (the binary digits of the
    size so far), merging on each append, then folds them from the right.
    """
    stack: list[bytes] = []
    pop, push, sha = stack.pop, stack.append, _sha256
    size = 0
    for leaf in leaves:
        if len(leaf) != HASH_SIZE:
            raise InvalidArgumentError(f"leaf hash {size} is {len(leaf)} bytes, not {HASH_SIZE}")
        h, n = leaf, size
        while n & 1:
            h = sha(b"\x01" + pop() + h).digest()
            n >>= 1
        push(h)
        size += 1
    if not stack:
        return 0, EMPTY_ROOT
    h = pop()
    while stack:
        h = sha(b"\x01" + pop() + h).digest()
    return size, h


class MemoryTree:
    """A `NodeSource` kept in a dict, for tests and offline tools."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._size = 0
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append a leaf hash; return its index."""
        index = self._size
        for level, i, h in new_nodes(self, index, leaf):
            self._nodes[level, i] = h
        self._size += 1
        return index

    def perfect(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[level, index]
        except KeyError:
            raise InvalidArgumentError(
                f"node ({level}, {index}) is not in this tree of size {self._size}"
            ) from None


# -- verifying: RFC 9162 §2.1.3.2 and §2.1.4.2 -----------------------------------


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise VerificationError(f"{what} is {len(value)} bytes, not {HASH_SIZE}")


def _check_proof(proof: Sequence[bytes], want: int, what: str) -> None:
    if len(proof) != want:
        raise VerificationError(f"{what} has {len(proof)} hashes, expected {want}")
    for i, p in enumerate(proof):
        _check_hash(p, f"{what} element {i}")


def _inclusion_length(index: int, size: int) -> int:
    """Hashes in PATH(index, D[0:size]): the differing levels plus the border."""
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash `leaf` is at `index` in the tree of `size` with head `root`."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not in a tree of size {size}")
    _check_hash(leaf, "leaf hash")
    _check_hash(root, "root hash")
    _check_proof(proof, _inclusion_length(index, size), "inclusion proof")
    _, computed, sn = _fold(index, size - 1, leaf, proof)
    if sn != 0 or computed != root:
        raise VerificationError(
            f"inclusion proof for leaf {index} does not lead to the root of tree size {size}"
        )


def _consistency_length(old: int, new: int) -> int:
    """Hashes in PROOF(old, D[0:new]) for 0 < old < new."""
    shift = (old & -old).bit_length() - 1  # levels where the old tree is a left subtree
    own_root = old == 1 << shift  # old is a power of two: its root is not in the proof
    return _inclusion_length(old - 1, new) - shift + (0 if own_root else 1)


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of size `old` with `old_root` is a prefix of `new` with `new_root`."""
    if not 0 < old <= new:
        raise VerificationError(f"no consistency from size {old} to size {new}")
    _check_hash(old_root, "old root hash")
    _check_hash(new_root, "new root hash")
    if old == new:
        _check_proof(proof, 0, "consistency proof between equal sizes")
        if old_root != new_root:
            raise VerificationError(f"two different roots for the same tree size {old}")
        return
    _check_proof(proof, _consistency_length(old, new), "consistency proof")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)  # old is a power of two: its root is the seed
    fr, sr, sn = _fold(fn, sn, path[0], path[1:])
    if sn != 0 or fr != old_root:
        raise VerificationError(f"consistency proof does not rebuild the size {old} root")
    if sr != new_root:
        raise VerificationError(f"consistency proof does not rebuild the size {new} root")


def _fold(fn: int, sn: int, seed: bytes, path: Sequence[bytes]) -> tuple[bytes, bytes, int]:
    """RFC 9162 §2.1.3.2 / §2.1.4.2 inner loop, from node `fn` of a tree whose last node is `sn`.

    Returns (fr, sr, sn): fr hashes only the path's left siblings (the old root,
    for a consistency proof), sr hashes all of them (the root), and sn must end at 0.
    """
    fr = sr = seed
    for c in path:
        if sn == 0:
            raise VerificationError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:  # skip levels where the node has no right sibling
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr, sr, sn
