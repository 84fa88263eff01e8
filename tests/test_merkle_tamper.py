"""RFC 9162 Merkle proofs refuse tampering and impossible arguments.

Every bit flip of a proof, root or leaf, a changed proof length and a wrong
index or size fail verification, for sampled trees and every published proof;
impossible indexes, sizes, hash lengths and proof lengths are refused up front
(tests/merkle_trees.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from signer.audit.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    new_nodes,
    root,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from signer.errors import InvalidArgumentError, VerificationError
from tests.merkle_trees import (
    GOOD,
    KAT_LEAVES,
    LONG,
    SHORT,
    VECTORS,
    H,
    hex_hashes,
    numbered_leaves,
    numbered_tree,
)

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
    tree, leaves = numbered_tree(256), numbered_leaves(256)
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
    tree = numbered_tree(256)
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
        index, size, proof = v["index"], v["size"], hex_hashes(v["proof"])
        for bad in _proof_mutations(proof):
            assert _rejects(verify_inclusion, KAT_LEAVES[index], index, size, bad, roots[size])
    for v in VECTORS["consistency_proofs"]:
        old, new, proof = v["old"], v["new"], hex_hashes(v["proof"])
        for bad in _proof_mutations(proof):
            assert _rejects(verify_consistency, old, new, roots[old], roots[new], bad)
    assert tree.size == 8


# -- strict edges ---------------------------------------------------------------------


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
    tree = numbered_tree(128)
    proof, head = inclusion_proof(tree, 5, 100), root(tree, 100)
    with pytest.raises(
        VerificationError, match=f"has {len(proof) + 1} hashes, expected {len(proof)}"
    ):
        verify_inclusion(numbered_leaves(6)[5], 5, 100, [*proof, GOOD], head)
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
    assert root_from_leaves(leaf for leaf in numbered_leaves(1000)) == (
        1000,
        root(numbered_tree(1000), 1000),
    )
