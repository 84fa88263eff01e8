"""RFC 9162 Merkle tree: published known answers, every small tree, random trees, read counts.

Known answers: tests/assets/rfc6962_merkle.json (tests/merkle_trees.py). The
naive reference below is RFC 9162 §2.1 written as recursion over a list of
leaves. Tampering and impossible arguments: tests/test_merkle_tamper.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signer.audit.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    new_nodes,
    node_hash,
    root,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from tests.merkle_trees import (
    GOOD,
    KAT_LEAVES,
    VECTORS,
    H,
    hex_hashes,
    numbered_leaves,
    numbered_tree,
)

# -- naive reference (RFC 9162 §2.1.1, §2.1.3.1, §2.1.4.1) -------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(ref_mth(d[:k]), ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
    if m == len(d):
        return [] if whole else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], whole), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


# -- known answers ----------------------------------------------------------------


def test_hasher_known_answers() -> None:
    """Empty root, leaf and node hashes match the published RFC 6962 hasher vectors."""
    v = VECTORS["hasher"]
    assert H(v["empty_root"]) == EMPTY_ROOT
    assert leaf_hash(H(v["empty_leaf"]["entry"])) == H(v["empty_leaf"]["hash"])
    assert leaf_hash(H(v["leaf"]["entry"])) == H(v["leaf"]["hash"])
    assert node_hash(H(v["node"]["left"]), H(v["node"]["right"])) == H(v["node"]["hash"])


def test_perfect_nodes_known_answers() -> None:
    """Every stored perfect node of the 8-leaf tree equals the published node hash."""
    tree = MemoryTree(KAT_LEAVES)
    for level, row in enumerate(VECTORS["node_hashes"]):
        assert [tree.perfect(level, i) for i in range(len(row))] == hex_hashes(row)


def test_new_nodes_known_answer() -> None:
    """Appending the 8th leaf completes one node per level, with the published hashes."""
    nodes = VECTORS["node_hashes"]
    expected = [(0, 7, H(nodes[0][7])), (1, 3, H(nodes[1][3])), (2, 1, H(nodes[2][1]))]
    expected.append((3, 0, H(nodes[3][0])))
    assert new_nodes(MemoryTree(KAT_LEAVES[:7]), 7, KAT_LEAVES[7]) == expected


@pytest.mark.parametrize("size", range(9))
def test_roots_known_answers(size: int) -> None:
    """root, root_from_leaves and the reference give the published root for sizes 0-8."""
    want = H(VECTORS["roots"][size])
    assert root(MemoryTree(KAT_LEAVES), size) == want
    assert root_from_leaves(iter(KAT_LEAVES[:size])) == (size, want)
    assert ref_mth(KAT_LEAVES[:size]) == want


@pytest.mark.parametrize(
    "vector", VECTORS["inclusion_proofs"], ids=lambda v: f"{v['index']}@{v['size']}"
)
def test_inclusion_known_answers(vector: dict[str, Any]) -> None:
    """The published inclusion proofs are generated exactly and verify."""
    index, size, proof = vector["index"], vector["size"], hex_hashes(vector["proof"])
    assert inclusion_proof(MemoryTree(KAT_LEAVES), index, size) == proof
    verify_inclusion(KAT_LEAVES[index], index, size, proof, H(VECTORS["roots"][size]))


@pytest.mark.parametrize(
    "vector", VECTORS["consistency_proofs"], ids=lambda v: f"{v['old']}-{v['new']}"
)
def test_consistency_known_answers(vector: dict[str, Any]) -> None:
    """The published consistency proofs are generated exactly and verify."""
    old, new, proof = vector["old"], vector["new"], hex_hashes(vector["proof"])
    assert consistency_proof(MemoryTree(KAT_LEAVES), old, new) == proof
    roots = VECTORS["roots"]
    verify_consistency(old, new, H(roots[old]), H(roots[new]), proof)


# -- every proof of every small tree ----------------------------------------------


def test_every_inclusion_proof_up_to_128_verifies() -> None:
    """For sizes 1-128 and every index, the proof equals the reference and verifies."""
    leaves, tree = numbered_leaves(128), numbered_tree(128)
    for size in range(1, 129):
        head = root(tree, size)
        assert head == ref_mth(leaves[:size])
        for index in range(size):
            proof = inclusion_proof(tree, index, size)
            assert proof == ref_path(index, leaves[:size])
            verify_inclusion(leaves[index], index, size, proof, head)


def test_every_consistency_proof_up_to_128_verifies() -> None:
    """For 1 <= old <= new <= 128, the proof equals the reference and verifies."""
    leaves, tree = numbered_leaves(128), numbered_tree(128)
    roots = [root(tree, n) for n in range(129)]
    for new in range(1, 129):
        for old in range(1, new + 1):
            proof = consistency_proof(tree, old, new)
            assert proof == ref_subproof(old, leaves[:new], True)
            verify_consistency(old, new, roots[old], roots[new], proof)


def test_roots_agree_with_reference_up_to_300() -> None:
    """root, root_from_leaves and the naive reference agree for sizes 0-300."""
    leaves, tree = numbered_leaves(300), numbered_tree(300)
    for size in range(301):
        want = ref_mth(leaves[:size])
        assert root(tree, size) == want
        assert root_from_leaves(leaves[:size]) == (size, want)


# -- properties -----------------------------------------------------------------------

BIG = 5000


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_trees_up_to_5000(data: st.DataObject) -> None:
    """For random sizes and indexes up to 5000, proofs match the reference and verify."""
    leaves, tree = numbered_leaves(BIG), numbered_tree(BIG)
    size = data.draw(st.integers(1, BIG), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    old = data.draw(st.integers(1, size), label="old")
    head = root(tree, size)
    assert root_from_leaves(leaves[:size]) == (size, head)
    proof = inclusion_proof(tree, index, size)
    assert proof == ref_path(index, leaves[:size])
    verify_inclusion(leaves[index], index, size, proof, head)
    cproof = consistency_proof(tree, old, size)
    assert cproof == ref_subproof(old, leaves[:size], True)
    verify_consistency(old, size, root(tree, old), head, cproof)


# -- read counts ----------------------------------------------------------------------


class CountingSource:
    """Synthetic node hashes (for counting reads only, not for correctness)."""

    def __init__(self) -> None:
        self.reads = 0

    def perfect(self, level: int, index: int) -> bytes:
        self.reads += 1
        return hashlib.sha256(b"%d/%d" % (level, index)).digest()

    def count(self, call: Callable[..., object], *args: int) -> int:
        self.reads = 0
        call(self, *args)
        return self.reads


READ_SIZES = [2**20 - 1, 2**20, 2**20 + 1, 999_999, 1_000_003, 1_398_101]


@pytest.mark.parametrize("size", READ_SIZES)
def test_reads_are_logarithmic(size: int) -> None:
    """At ~10**6 leaves, roots and proofs read <= 2*log2(n)+2 nodes (far below log2(n)**2)."""
    src, log_n = CountingSource(), math.ceil(math.log2(size))
    bound = 2 * log_n + 2
    reads = [src.count(root, size)]
    for index in (0, 1, size // 3, size // 2, size - 2, size - 1):
        reads.append(src.count(inclusion_proof, index, size))
    for old in (1, 2, 3, size // 3, size // 2 + 1, size - 2, size - 1, size):
        reads.append(src.count(consistency_proof, old, size))
    assert max(reads) <= bound <= log_n**2


@pytest.mark.parametrize("size", [2**20 - 1, 2**20 - 2, 2**20, 999_999, 1_000_003])
def test_new_nodes_reads_at_most_log_n(size: int) -> None:
    """Appending to a tree of ~10**6 leaves reads at most log2(n) nodes."""
    src = CountingSource()
    reads = src.count(lambda s: new_nodes(s, size, GOOD))
    assert reads <= math.ceil(math.log2(size + 1))
    assert reads == (size ^ (size + 1)).bit_length() - 1  # the trailing one bits of size
