"""`signer.sha2`: a hash stopped at a midstate by libcrypto and finished in Python gives
hashlib's digest, for every length around the block and padding boundaries and any
split into chunks; a malformed midstate is refused."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signer import sha2

HASHES = ("sha256", "sha384", "sha512")


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("length", [0, 1, 55, 56, 63, 64, 65, 111, 112, 127, 128, 129, 4097])
def test_boundaries(hash_name: str, length: int) -> None:
    """Around every block and padding boundary, a midstate finished with more bytes is
    hashlib's digest of the whole."""
    data = bytes(i % 251 for i in range(length))
    mid, tail = sha2.midstate(hash_name, [data])
    assert mid.length + len(tail) == length and len(tail) < sha2.BLOCK[hash_name]
    for rest in (b"", b"\x04\xff\x00\x00\x00\x10", bytes(300)):
        assert sha2.finish(mid, tail + rest) == hashlib.new(hash_name, data + rest).digest()


@given(
    hash_name=st.sampled_from(HASHES),
    chunks=st.lists(st.binary(max_size=300), max_size=8),
    rest=st.binary(max_size=400),
)
@settings(max_examples=200, deadline=None)
def test_any_chunks_finish_to_hashlib(hash_name: str, chunks: list[bytes], rest: bytes) -> None:
    """However the data is cut into chunks, the midstate finishes to hashlib's digest."""
    mid, tail = sha2.midstate(hash_name, chunks)
    expected = hashlib.new(hash_name, b"".join(chunks) + rest).digest()
    assert sha2.finish(mid, tail + rest) == expected


def test_malformed_midstates_are_refused() -> None:
    """A state of the wrong size, a length that is not whole blocks, an unknown hash."""
    with pytest.raises(ValueError, match="whole number of 64-byte blocks"):
        sha2.Midstate("sha256", bytes(32), 65)
    with pytest.raises(ValueError, match="a sha512 state is 64 bytes"):
        sha2.Midstate("sha512", bytes(32), 0)
    with pytest.raises(ValueError, match="is not sha256"):
        sha2.Midstate("md5", bytes(16), 0)
    with pytest.raises(ValueError, match="whole number"):
        sha2.Midstate("sha256", bytes(32), -64)
