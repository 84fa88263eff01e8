"""SHA-256, SHA-384 and SHA-512 continued from a midstate (FIPS 180-4).

An OpenPGP signature's digest is H(file || trailer). So that the server, which
never sees the file, still decides how the hashed message ends, the requester
sends the hash's internal state after the file's whole blocks (`midstate`), the
few bytes left over and the count of bytes hashed; the server appends the trailer
it checked and finishes the hash itself (`finish`). Whatever produced the state,
the message signed then ends with that trailer, so a signature requested for a
file can never be another kind of OpenPGP signature (a certification, a subkey
binding, a revocation), nor a bare digest of anything else.

`finish` compresses the last one to three blocks in Python, which is all the
server does. `midstate` runs over a whole file, so it uses OpenSSL's SHA-2 (the
libcrypto that Python's own hashlib uses) and reads the chaining value from the
start of its context (`h`, the first member of SHA256_CTX and SHA512_CTX in
<openssl/sha.h>); it checks, on first use, that what it reads finishes to
hashlib's digest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from signer.errors import ConfigError

__all__ = ["BLOCK", "Midstate", "finish", "midstate"]

BLOCK = {"sha256": 64, "sha384": 128, "sha512": 128}
_MAX_LENGTH = 2**61 - 1  # bytes: SHA-2 counts bits in (at least) 64

_K256 = [
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
    0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
    0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
    0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
    0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
    0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
    0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
    0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
    0xC67178F2,
]  # fmt: skip
_K512 = [
    0x428A2F98D728AE22, 0x7137449123EF65CD, 0xB5C0FBCFEC4D3B2F, 0xE9B5DBA58189DBBC,
    0x3956C25BF348B538, 0x59F111F1B605D019, 0x923F82A4AF194F9B, 0xAB1C5ED5DA6D8118,
    0xD807AA98A3030242, 0x12835B0145706FBE, 0x243185BE4EE4B28C, 0x550C7DC3D5FFB4E2,
    0x72BE5D74F27B896F, 0x80DEB1FE3B1696B1, 0x9BDC06A725C71235, 0xC19BF174CF692694,
    0xE49B69C19EF14AD2, 0xEFBE4786384F25E3, 0x0FC19DC68B8CD5B5, 0x240CA1CC77AC9C65,
    0x2DE92C6F592B0275, 0x4A7484AA6EA6E483, 0x5CB0A9DCBD41FBD4, 0x76F988DA831153B5,
    0x983E5152EE66DFAB, 0xA831C66D2DB43210, 0xB00327C898FB213F, 0xBF597FC7BEEF0EE4,
    0xC6E00BF33DA88FC2, 0xD5A79147930AA725, 0x06CA6351E003826F, 0x142929670A0E6E70,
    0x27B70A8546D22FFC, 0x2E1B21385C26C926, 0x4D2C6DFC5AC42AED, 0x53380D139D95B3DF,
    0x650A73548BAF63DE, 0x766A0ABB3C77B2A8, 0x81C2C92E47EDAEE6, 0x92722C851482353B,
    0xA2BFE8A14CF10364, 0xA81A664BBC423001, 0xC24B8B70D0F89791, 0xC76C51A30654BE30,
    0xD192E819D6EF5218, 0xD69906245565A910, 0xF40E35855771202A, 0x106AA07032BBD1B8,
    0x19A4C116B8D2D0C8, 0x1E376C085141AB53, 0x2748774CDF8EEB99, 0x34B0BCB5E19B48A8,
    0x391C0CB3C5C95A63, 0x4ED8AA4AE3418ACB, 0x5B9CCA4F7763E373, 0x682E6FF3D6B2B8A3,
    0x748F82EE5DEFB2FC, 0x78A5636F43172F60, 0x84C87814A1F0AB72, 0x8CC702081A6439EC,
    0x90BEFFFA23631E28, 0xA4506CEBDE82BDE9, 0xBEF9A3F7B2C67915, 0xC67178F2E372532B,
    0xCA273ECEEA26619C, 0xD186B8C721C0C207, 0xEADA7DD6CDE0EB1E, 0xF57D4F7FEE6ED178,
    0x06F067AA72176FBA, 0x0A637DC5A2C898A6, 0x113F9804BEF90DAE, 0x1B710B35131C471B,
    0x28DB77F523047D84, 0x32CAAB7B40C72493, 0x3C9EBE0A15C9BEBC, 0x431D67C49C100D4C,
    0x4CC5D4BECB3E42B6, 0x597F299CFC657E2A, 0x5FCB6FAB3AD6FAEC, 0x6C44198C4A475817,
]  # fmt: skip


@dataclass(frozen=True)
class _Shape:
    """One SHA-2 variant: word size, rounds, constants, rotations, digest size."""

    bits: int
    k: list[int]
    big_sigma: tuple[tuple[int, int, int], tuple[int, int, int]]
    small_sigma: tuple[tuple[int, int, int], tuple[int, int, int]]  # (rotr, rotr, shr)
    out: int  # digest bytes

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def fmt(self) -> str:
        return ">8I" if self.bits == 32 else ">8Q"


_SHA256 = _Shape(32, _K256, ((2, 13, 22), (6, 11, 25)), ((7, 18, 3), (17, 19, 10)), 32)
_SHA512 = _Shape(64, _K512, ((28, 34, 39), (14, 18, 41)), ((1, 8, 7), (19, 61, 6)), 64)
_SHA384 = _Shape(64, _K512, _SHA512.big_sigma, _SHA512.small_sigma, 48)
_SHAPES = {"sha256": _SHA256, "sha384": _SHA384, "sha512": _SHA512}


def _compress(shape: _Shape, h: list[int], block: bytes) -> list[int]:
    bits, mask = shape.bits, shape.mask
    word = bits // 8

    def rotr(x: int, n: int) -> int:
        return ((x >> n) | (x << (bits - n))) & mask

    w = [int.from_bytes(block[i : i + word], "big") for i in range(0, 16 * word, word)]
    (s0a, s0b, s0c), (s1a, s1b, s1c) = shape.small_sigma
    for t in range(16, len(shape.k)):
        x, y = w[t - 15], w[t - 2]
        s0 = rotr(x, s0a) ^ rotr(x, s0b) ^ (x >> s0c)
        s1 = rotr(y, s1a) ^ rotr(y, s1b) ^ (y >> s1c)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & mask)
    a, b, c, d, e, f, g, hh = h
    (b0a, b0b, b0c), (b1a, b1b, b1c) = shape.big_sigma
    for t, k in enumerate(shape.k):
        t1 = hh + (rotr(e, b1a) ^ rotr(e, b1b) ^ rotr(e, b1c)) + ((e & f) ^ (~e & g)) + k + w[t]
        t2 = (rotr(a, b0a) ^ rotr(a, b0b) ^ rotr(a, b0c)) + ((a & b) ^ (a & c) ^ (b & c))
        a, b, c, d, e, f, g, hh = (t1 + t2) & mask, a, b, c, (d + t1) & mask, e, f, g
    return [(x + y) & mask for x, y in zip(h, (a, b, c, d, e, f, g, hh), strict=True)]


@dataclass(frozen=True)
class Midstate:
    """A hash after `length` bytes, whole blocks only: its chaining value, big-endian."""

    hash_name: str
    state: bytes
    length: int

    def __post_init__(self) -> None:
        if self.hash_name not in BLOCK:
            raise ValueError(f"hash {self.hash_name!r} is not sha256, sha384 or sha512")
        if len(self.state) != 8 * _SHAPES[self.hash_name].bits // 8:
            raise ValueError(
                f"a {self.hash_name} state is {8 * _SHAPES[self.hash_name].bits // 8} bytes"
            )
        if not 0 <= self.length <= _MAX_LENGTH or self.length % BLOCK[self.hash_name]:
            raise ValueError(
                f"a midstate is after a whole number of {BLOCK[self.hash_name]}-byte blocks"
            )


def finish(mid: Midstate, rest: bytes) -> bytes:
    """The digest of (the `mid.length` bytes that gave `mid`) || `rest`."""
    shape = _SHAPES[mid.hash_name]
    block = BLOCK[mid.hash_name]
    total = mid.length + len(rest)
    if total > _MAX_LENGTH:
        raise ValueError("the message is too long for SHA-2")
    size = 8 if block == 64 else 16  # the bit count's width in the padding
    pad = b"\x80" + bytes((-(len(rest) + 1 + size)) % block) + (8 * total).to_bytes(size, "big")
    data = rest + pad
    h = list(struct.unpack(shape.fmt, mid.state))
    for i in range(0, len(data), block):
        h = _compress(shape, h, data[i : i + block])
    return struct.pack(shape.fmt, *h)[: shape.out]


class _Ctx(ctypes.Structure):
    # Room for SHA512_CTX (216 bytes) with margin; only `h` at offset 0 is read.
    _fields_ = [("raw", ctypes.c_uint64 * 64)]  # 8-byte aligned


@functools.cache
def _libcrypto() -> Any:
    name = ctypes.util.find_library("crypto") or "libcrypto.so.3"
    try:
        lib = ctypes.CDLL(name)
        for fn in ("SHA256_Init", "SHA384_Init", "SHA512_Init", "SHA256_Update", "SHA512_Update"):
            getattr(lib, fn).restype = ctypes.c_int
    except (OSError, AttributeError) as e:
        raise ConfigError(
            f"libcrypto (OpenSSL), which hashes the files to sign, cannot be used: {e}"
        ) from None
    lib.SHA256_Update.argtypes = lib.SHA512_Update.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    probe = bytes(range(256)) * 3 + b"tail"
    for name in ("sha256", "sha384", "sha512"):
        mid, rest = _midstate(lib, name, [probe])
        if finish(mid, rest) != hashlib.new(name, probe).digest():
            raise ConfigError(
                f"{name}'s SHA-2 state is not laid out as <openssl/sha.h> says; cannot hash"
            )
    return lib


def _midstate(lib: Any, hash_name: str, chunks: Iterable[bytes]) -> tuple[Midstate, bytes]:
    ctx = _Ctx()
    init = {"sha256": lib.SHA256_Init, "sha384": lib.SHA384_Init, "sha512": lib.SHA512_Init}
    update = lib.SHA256_Update if hash_name == "sha256" else lib.SHA512_Update
    if init[hash_name](ctypes.byref(ctx)) != 1:
        raise ConfigError(f"libcrypto: {hash_name} init failed")
    block, pending, length = BLOCK[hash_name], b"", 0
    for chunk in chunks:
        pending += chunk
        whole = len(pending) // block * block
        if whole:
            if update(ctypes.byref(ctx), pending[:whole], whole) != 1:
                raise ConfigError(f"libcrypto: {hash_name} update failed")
            length += whole
            pending = pending[whole:]
    native = "=8I" if hash_name == "sha256" else "=8Q"  # as the C struct holds them
    h = struct.unpack(native, bytes(ctx)[: struct.calcsize(native)])
    return Midstate(hash_name, struct.pack(_SHAPES[hash_name].fmt, *h), length), pending


def midstate(hash_name: str, chunks: Iterable[bytes]) -> tuple[Midstate, bytes]:
    """The state after every whole block of the concatenated `chunks`, and the bytes left
    over (fewer than a block)."""
    if hash_name not in BLOCK:
        raise ValueError(f"hash {hash_name!r} is not sha256, sha384 or sha512")
    return _midstate(_libcrypto(), hash_name, chunks)
