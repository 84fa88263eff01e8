"""RFC 9162 Merkle tree: published known answers, every small tree, tampering, read counts.

Known answers: tests/assets/rfc6962_merkle.json (transparency-dev/merkle and
certificate-transparency test suites; see tests/assets/README.md). The naive
reference below is RFC 9162 §2.1 written as recursion over a list of leaves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
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
from signer.errors import InvalidArgumentError, VerificationError

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "assets" / "rfc6962_merkle.json").read_text()
)
KAT_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in VECTORS["leaf_inputs"]]
H = bytes.fromhex


def _hashes(hexes: Sequence[str]) -> list[bytes]:
    return [H(x) for x in hexes]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


@functools.cache
def _tree(n: int) -> MemoryTree:
    return MemoryTree(_leaves(n))


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
        assert [tree.perfect(level, i) for i in range(len(row))] == _hashes(row)


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
    index, size, proof = vector["index"], vector["size"], _hashes(vector["proof"])
    assert inclusion_proof(MemoryTree(KAT_LEAVES), index, size) == proof
    verify_inclusion(KAT_LEAVES[index], index, size, proof, H(VECTORS["roots"][size]))


@pytest.mark.parametrize(
    "vector", VECTORS["consistency_proofs"], ids=lambda v: f"{v['old']}-{v['new']}"
)
def test_consistency_known_answers(vector: dict[str, Any]) -> None:
    """The published consistency proofs are generated exactly and verify."""
    old, new, proof = vector["old"], vector["new"], _hashes(vector["proof"])
    assert consistency_proof(MemoryTree(KAT_LEAVES), old, new) == proof
    roots = VECTORS["roots"]
    verify_consistency(old, new, H(roots[old]), H(roots[new]), proof)


# -- every proof of every small tree ----------------------------------------------


def test_every_inclusion_proof_up_to_128_verifies() -> None:
    """For sizes 1-128 and every index, the proof equals the reference and verifies."""
    leaves, tree = _leaves(128), _tree(128)
    for size in range(1, 129):
        head = root(tree, size)
        assert head == ref_mth(leaves[:size])
        for index in range(size):
            proof = inclusion_proof(tree, index, size)
            assert proof == ref_path(index, leaves[:size])
            verify_inclusion(leaves[index], index, size, proof, head)


def test_every_consistency_proof_up_to_128_verifies() -> None:
    """For 1 <= old <= new <= 128, the proof equals the reference and verifies."""
    leaves, tree = _leaves(128), _tree(128)
    roots = [root(tree, n) for n in range(129)]
    for new in range(1, 129):
        for old in range(1, new + 1):
            proof = consistency_proof(tree, old, new)
            assert proof == ref_subproof(old, leaves[:new], True)
            verify_consistency(old, new, roots[old], roots[new], proof)


def test_roots_agree_with_reference_up_to_300() -> None:
    """root, root_from_leaves and the naive reference agree for sizes 0-300."""
    leaves, tree = _leaves(300), _tree(300)
    for size in range(301):
        want = ref_mth(leaves[:size])
        assert root(tree, size) == want
        assert root_from_leaves(leaves[:size]) == (size, want)


# -- tampering ----------------------------------------------------------------------


def _bit_flips(value: bytes) -> Iterator[bytes]:
    for bit in range(len(value) * 8):
        flipped = bytearray(value)
        flipped[bit // 8] ^= 1 << (bit % 8)
        yield bytes(flipped)


def _proof_mutations(proof: list[bytes]) -> Iterator[list[bytes]]:
    for i, element in enumerate(proof):
        for flipped in _bit_flips(element):
            yield [*proof[:i], flipped, *proof[i + 1 :]]
    if proof:
        yield proof[:-1]
        yield proof[1:]
        yield [proof[0], *proof]
    yield [*proof, EMPTY_ROOT]
    yield [EMPTY_ROOT, *proof]


def _rejects(verify: Callable[..., None], *args: Any) -> bool:
    try:
        verify(*args)
    except VerificationError:
        return True
    return False


INCLUSION_SAMPLE = [
    (i, n)
    for n in (1, 2, 3, 5, 7, 8, 13, 32, 33, 100, 127)
    for i in sorted({0, 1, n // 2, n - 2, n - 1})
    if 0 <= i < n
]


@pytest.mark.parametrize(("index", "size"), INCLUSION_SAMPLE)
def test_tampered_inclusion_is_rejected(index: int, size: int) -> None:
    """Any bit flip of proof, root or leaf, a changed proof length, or a wrong index/size fails."""
    tree, leaves = _tree(256), _leaves(256)
    leaf, head, proof = leaves[index], root(tree, size), inclusion_proof(tree, index, size)
    verify_inclusion(leaf, index, size, proof, head)
    for bad in _proof_mutations(proof):
        assert _rejects(verify_inclusion, leaf, index, size, bad, head)
    for bad_root in _bit_flips(head):
        assert _rejects(verify_inclusion, leaf, index, size, proof, bad_root)
    for bad_leaf in _bit_flips(leaf):
        assert _rejects(verify_inclusion, bad_leaf, index, size, proof, head)
    for other in {*range(size + 2), index ^ 2, -1} - {index}:
        assert _rejects(verify_inclusion, leaf, other, size, proof, head)
    # Sizes with a different proof shape; size+1 may share the shape (the root binds the size).
    for bad_size in {0, size * 2, size // 2}:
        assert _rejects(verify_inclusion, leaf, index, bad_size, proof, head)


CONSISTENCY_SAMPLE = [
    (1, 2), (1, 8), (2, 5), (3, 7), (4, 7), (5, 7), (6, 8), (7, 8), (1, 100),
    (31, 32), (32, 33), (33, 100), (64, 127), (100, 127), (126, 127),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new"), CONSISTENCY_SAMPLE)
def test_tampered_consistency_is_rejected(old: int, new: int) -> None:
    """Any bit flip of proof or roots, a changed proof length, or wrong sizes fails."""
    tree = _tree(256)
    old_root, new_root = root(tree, old), root(tree, new)
    proof = consistency_proof(tree, old, new)
    verify_consistency(old, new, old_root, new_root, proof)
    for bad in [*_proof_mutations(proof), []]:
        assert _rejects(verify_consistency, old, new, old_root, new_root, bad)
    for flipped in _bit_flips(old_root):
        assert _rejects(verify_consistency, old, new, flipped, new_root, proof)
    for flipped in _bit_flips(new_root):
        assert _rejects(verify_consistency, old, new, old_root, flipped, proof)
    assert _rejects(verify_consistency, old, new, new_root, old_root, proof)
    for bad_old in {*range(new + 2), old ^ 2, -1} - {old}:
        assert _rejects(verify_consistency, bad_old, new, old_root, new_root, proof)
    for bad_new in {0, new * 2, new // 2}:
        assert _rejects(verify_consistency, old, bad_new, old_root, new_root, proof)


def test_published_proofs_reject_tampering() -> None:
    """Every published non-empty proof fails after any single-bit flip or length change."""
    tree, roots = MemoryTree(KAT_LEAVES), [H(r) for r in VECTORS["roots"]]
    for v in VECTORS["inclusion_proofs"]:
        index, size, proof = v["index"], v["size"], _hashes(v["proof"])
        for bad in _proof_mutations(proof):
            assert _rejects(verify_inclusion, KAT_LEAVES[index], index, size, bad, roots[size])
    for v in VECTORS["consistency_proofs"]:
        old, new, proof = v["old"], v["new"], _hashes(v["proof"])
        for bad in _proof_mutations(proof):
            assert _rejects(verify_consistency, old, new, roots[old], roots[new], bad)
    assert tree.size == 8


# -- strict edges ---------------------------------------------------------------------

GOOD = leaf_hash(b"x")
SHORT, LONG = GOOD[:31], GOOD + b"\x00"


@pytest.mark.parametrize(
    ("leaf", "index", "size", "proof", "head"),
    [
        (GOOD, 0, 0, [], GOOD),  # empty tree
        (GOOD, 1, 1, [], GOOD),  # index == size
        (GOOD, 5, 3, [GOOD, GOOD], GOOD),  # index > size
        (GOOD, -1, 1, [], GOOD),  # negative index
        (SHORT, 0, 1, [], SHORT),  # 31-byte hashes
        (GOOD, 0, 1, [], LONG),  # 33-byte root
        (GOOD, 0, 2, [SHORT], GOOD),  # 31-byte proof element
        (GOOD, 0, 1, [GOOD], GOOD),  # proof too long
        (GOOD, 0, 3, [GOOD], GOOD),  # proof too short
        (b"", 0, 1, [], b""),  # empty hashes
    ],
)
def test_verify_inclusion_strict_edges(
    leaf: bytes, index: int, size: int, proof: list[bytes], head: bytes
) -> None:
    """Impossible indexes and sizes, wrong hash sizes and wrong proof lengths are rejected."""
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, proof, head)


@pytest.mark.parametrize(
    ("old", "new", "old_root", "new_root", "proof"),
    [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, []),  # old size 0
        (0, 5, EMPTY_ROOT, GOOD, []),  # old size 0
        (2, 1, GOOD, GOOD, []),  # old > new
        (3, 3, GOOD, GOOD, [GOOD]),  # equal sizes, non-empty proof
        (3, 3, GOOD, EMPTY_ROOT, []),  # equal sizes, different roots
        (1, 2, GOOD, GOOD, []),  # empty proof
        (1, 2, GOOD, GOOD, [GOOD, GOOD]),  # proof too long
        (1, 2, SHORT, GOOD, [GOOD]),  # 31-byte old root
        (1, 2, GOOD, LONG, [GOOD]),  # 33-byte new root
        (1, 2, GOOD, GOOD, [SHORT]),  # 31-byte proof element
        (-1, 2, GOOD, GOOD, [GOOD]),  # negative size
    ],
)
def test_verify_consistency_strict_edges(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    """Old size 0, old > new, equal sizes with a proof, bad hash sizes and lengths are rejected."""
    with pytest.raises(VerificationError):
        verify_consistency(old, new, old_root, new_root, proof)


def test_wrong_proof_length_message_names_the_expected_length() -> None:
    """A proof of the wrong length is refused before hashing, with the expected count."""
    tree = _tree(128)
    proof, head = inclusion_proof(tree, 5, 100), root(tree, 100)
    with pytest.raises(
        VerificationError, match=f"has {len(proof) + 1} hashes, expected {len(proof)}"
    ):
        verify_inclusion(_leaves(6)[5], 5, 100, [*proof, GOOD], head)
    cproof = consistency_proof(tree, 37, 100)
    with pytest.raises(
        VerificationError, match=f"has {len(cproof) - 1} hashes, expected {len(cproof)}"
    ):
        verify_consistency(37, 100, root(tree, 37), head, cproof[1:])


def test_equal_sizes_with_equal_roots_are_consistent() -> None:
    """A tree is consistent with itself through an empty proof."""
    verify_consistency(7, 7, GOOD, GOOD, [])


@pytest.mark.parametrize(
    "call",
    [
        lambda t: inclusion_proof(t, 0, 0),
        lambda t: inclusion_proof(t, 4, 4),
        lambda t: inclusion_proof(t, -1, 4),
        lambda t: inclusion_proof(t, 0, 9),  # beyond the stored tree
        lambda t: consistency_proof(t, 0, 4),
        lambda t: consistency_proof(t, 5, 4),
        lambda t: consistency_proof(t, 2, 9),  # beyond the stored tree
        lambda t: root(t, -1),
        lambda t: root(t, 9),  # beyond the stored tree
        lambda t: new_nodes(t, 8, SHORT),
        lambda t: new_nodes(t, -1, GOOD),
        lambda t: t.append(LONG),
        lambda t: root_from_leaves([GOOD, SHORT]),
    ],
    ids=lambda _: "",
)
def test_generation_rejects_impossible_arguments(call: Callable[[MemoryTree], object]) -> None:
    """Proofs or roots outside the stored tree and non-32-byte leaves are invalid arguments."""
    tree = MemoryTree(KAT_LEAVES)
    with pytest.raises(InvalidArgumentError):
        call(tree)
    assert tree.size == 8


def test_memory_tree_append_returns_indexes() -> None:
    """append returns consecutive indexes and size follows."""
    tree = MemoryTree()
    assert [tree.append(leaf) for leaf in KAT_LEAVES] == list(range(8))
    assert tree.size == 8
    assert root(tree, 8) == H(VECTORS["roots"][8])


def test_root_from_leaves_streams() -> None:
    """root_from_leaves consumes a one-shot iterator and handles the empty stream."""
    assert root_from_leaves(iter(())) == (0, EMPTY_ROOT)
    assert root_from_leaves(leaf for leaf in _leaves(1000)) == (1000, root(_tree(1000), 1000))


# -- properties -----------------------------------------------------------------------

BIG = 5000


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_trees_up_to_5000(data: st.DataObject) -> None:
    """For random sizes and indexes up to 5000, proofs match the reference and verify."""
    leaves, tree = _leaves(BIG), _tree(BIG)
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
