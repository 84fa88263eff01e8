"""Merkle trees for tests: the RFC 6962 known-answer vectors, numbered leaves, odd-sized hashes.

Known answers: tests/assets/rfc6962_merkle.json (transparency-dev/merkle and
certificate-transparency test suites; see tests/assets/README.md), with
`KAT_LEAVES` its eight leaf hashes. `numbered_leaves(n)` hashes the 4-byte
numbers 0..n-1; `numbered_tree(n)` is a MemoryTree of them, built once per n.
`GOOD` is a valid hash; `SHORT` and `LONG` are one byte short and one too long.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from signer.audit.merkle import MemoryTree, leaf_hash
from tests.vectors import load

__all__ = [
    "GOOD",
    "KAT_LEAVES",
    "LONG",
    "SHORT",
    "VECTORS",
    "H",
    "hex_hashes",
    "numbered_leaves",
    "numbered_tree",
]

VECTORS = load("rfc6962_merkle.json")
KAT_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaf_inputs"]]
H = bytes.fromhex


def hex_hashes(hexes: Sequence[str]) -> list[bytes]:
    return [H(x) for x in hexes]


def numbered_leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@functools.cache
def numbered_tree(n: int) -> MemoryTree:
    return MemoryTree(numbered_leaves(n))


GOOD = leaf_hash(b"x")
SHORT, LONG = GOOD[:31], GOOD + b"\x00"
