"""`signer.pgp`: OpenPGP v4 certificates, detached, armored and cleartext signatures made
from digests a stand-in HSM signs (software RSA 3072/4096 PKCS#1 v1.5, ECDSA P-256 and
P-384 keys through `Prehashed`), verified by gpg, gpgv and sq, a tampered file failing
each; the strict parser of a requester's hashed part refuses every malformed or
unexpected input with a message naming the problem."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from hypothesis import given, settings
from hypothesis import strategies as st

from signer import pgp
from signer.pgp import BINARY, ECDSA, POSITIVE_CERTIFICATION, RSA, TEXT, Hashed, PgpFormatError
from testbed.gnupg import Gnupg

KEY_CREATED = 1_700_000_000
SIGNED_AT = KEY_CREATED + 600
UID = "Release <rel@example.org>"
_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
Private = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_MAKERS: dict[str, tuple[Callable[[], Private], str]] = {
    "rsa-3072": (lambda: rsa.generate_private_key(65537, 3072), "sha512"),
    "rsa-4096": (lambda: rsa.generate_private_key(65537, 4096), "sha512"),
    "ecdsa-p256": (lambda: ec.generate_private_key(ec.SECP256R1()), "sha256"),
    "ecdsa-p384": (lambda: ec.generate_private_key(ec.SECP384R1()), "sha384"),
}


@dataclass(frozen=True)
class Key:
    """A throwaway software key standing in for the HSM, and its OpenPGP certificate."""

    private: Private
    hash_name: str
    algorithm: int
    body: bytes
    fpr: bytes
    cert: bytes

    def hsm_sign(self, digest: bytes) -> bytes:
        """What the HSM returns for a digest: DER ECDSA or raw RSASSA-PKCS1-v1_5."""
        pre = Prehashed(_HASHES[self.hash_name])
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(digest, padding.PKCS1v15(), pre)
        return self.private.sign(digest, ec.ECDSA(pre))

    def hashed(self, sig_type: int = BINARY) -> Hashed:
        return Hashed(sig_type, self.algorithm, self.hash_name, SIGNED_AT, self.fpr)

    def detached(self, data: bytes, sig_type: int = BINARY) -> bytes:
        hashed = self.hashed(sig_type)
        digest = pgp.document_digest(data, hashed)
        return pgp.signature_packet(hashed, digest, self.hsm_sign(digest))

    def clearsigned(self, text: bytes) -> bytes:
        hashed = self.hashed(TEXT)
        digest = pgp.cleartext_digest(text, hashed)
        return pgp.clearsign(text, pgp.signature_packet(hashed, digest, self.hsm_sign(digest)))


def _make_key(name: str) -> Key:
    make, hash_name = _MAKERS[name]
    private = make()
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    body = pgp.public_key_body(pem, KEY_CREATED)
    fpr = pgp.fingerprint(body)
    algorithm = RSA if isinstance(private, rsa.RSAPrivateKey) else ECDSA
    self_sig = Hashed(
        POSITIVE_CERTIFICATION,
        algorithm,
        hash_name,
        KEY_CREATED,
        fpr,
        key_flags=0x03,
        preferred_hashes=(hash_name,),
    )
    key = Key(private, hash_name, algorithm, body, fpr, b"")
    digest = pgp.certification_digest(body, UID, self_sig)
    signature = pgp.signature_packet(self_sig, digest, key.hsm_sign(digest))
    return replace(key, cert=pgp.certificate(body, UID, signature))


@pytest.fixture(scope="module", params=list(_MAKERS))
def key(request: pytest.FixtureRequest) -> Key:
    return _make_key(request.param)


@pytest.fixture(scope="module")
def p256() -> Key:
    return _make_key("ecdsa-p256")


@pytest.fixture
def tools(tmp_path: Path, key: Key) -> Gnupg:
    return Gnupg(tmp_path, key.cert)


def _validsig(out: bytes) -> list[str]:
    """The VALIDSIG fields of a good signature (GOODSIG first), or fail."""
    status = out.decode()
    assert "[GNUPG:] GOODSIG " in status, status
    match = re.search(r"^\[GNUPG:\] VALIDSIG (.*)$", status, re.M)
    assert match, status
    return match[1].split()


def _good(done: subprocess.CompletedProcess[bytes], key: Key, sig_class: str) -> None:
    assert done.returncode == 0, done.stderr.decode()
    fields = _validsig(done.stdout)
    assert fields[0] == fields[9] == key.fpr.hex().upper()
    assert fields[2] == str(SIGNED_AT)
    assert fields[6:9] == [str(key.algorithm), str(pgp.HASH_IDS[key.hash_name]), sig_class]


# Against the real tools, for each key type.


def test_certificate_imports_into_gpg_under_the_modules_fingerprint(tools: Gnupg, key: Key) -> None:
    """gpg imports the certificate with the module's fingerprint, key ID, user ID, a good
    self-signature and key flags certify + sign; its armored export unarmors to its export."""
    fpr = key.fpr.hex().upper()
    assert tools.imported.returncode == 0, tools.imported.stderr.decode()
    assert f"[GNUPG:] IMPORT_OK 1 {fpr}" in tools.imported.stdout.decode()
    listed = tools.gpg("--with-colons", "--check-sigs").stdout.decode()
    assert f"fpr:::::::::{fpr}:" in listed
    assert (
        f"pub:-:{key.private.key_size}:{key.algorithm}:{pgp.key_id(key.body).hex().upper()}:"
        in listed
    )
    assert ":scSC:" in listed
    assert f"::{UID}::" in listed
    assert re.search(rf"^sig:!::{key.algorithm}:.*:13x::{fpr}:", listed, re.M), listed
    packets = tools.gpg("--list-packets", str(tools.cert)).stdout.decode()
    assert "sigclass 0x13" in packets and "key flags: 03" in packets
    exported = tools.export("--armor").decode()
    assert pgp.unarmor(exported) == ("PUBLIC KEY BLOCK", tools.keyring.read_bytes())


def test_detached_signatures_verify_with_gpg_gpgv_and_sq(
    tools: Gnupg, key: Key, tmp_path: Path
) -> None:
    """A binary detached signature and its armored form verify with gpg --verify, gpgv and
    sq verify --detached, gpg reporting the module's fingerprint, algorithm, hash and
    class 00."""
    data = tmp_path / "release.tar"
    data.write_bytes(os.urandom(20_000) + b"\r\n\n-- end")
    sig = tmp_path / "release.tar.sig"
    sig.write_bytes(key.detached(data.read_bytes()))
    asc = tmp_path / "release.tar.asc"
    asc.write_text(pgp.armor("SIGNATURE", sig.read_bytes()))
    for detached in (sig, asc):
        _good(tools.gpg("--verify", str(detached), str(data)), key, "00")
        _good(tools.gpgv(str(detached), str(data)), key, "00")
        verified = tools.sq_verify("--detached", str(detached), str(data))
        assert verified.returncode == 0, verified.stderr.decode()


def test_tampered_files_fail_every_tool(tools: Gnupg, key: Key, tmp_path: Path) -> None:
    """A file changed after signing fails gpg, gpgv and sq, binary and armored alike."""
    sig = tmp_path / "a.sig"
    sig.write_bytes(key.detached(b"the release"))
    asc = tmp_path / "a.asc"
    asc.write_text(pgp.armor("SIGNATURE", sig.read_bytes()))
    changed = tmp_path / "a"
    changed.write_bytes(b"the releasf")
    for detached in (sig, asc):
        bad = tools.gpg("--verify", str(detached), str(changed))
        assert bad.returncode != 0 and b"[GNUPG:] BADSIG " in bad.stdout
        assert tools.gpgv(str(detached), str(changed)).returncode != 0
        assert tools.sq_verify("--detached", str(detached), str(changed)).returncode != 0


INRELEASE = (
    b"Origin: Example\n"
    b"Label: Example  \n"
    b"Suite: stable\t\n"
    b"-----BEGIN PGP SIGNATURE-----\n"
    b"- dashes\n"
    b"\n"
    b"SHA256:\n"
    b" 0123456789abcdef 1234 main/binary-amd64/Packages\n"
)


def test_cleartext_signature_verifies_with_gpg_gpgv_and_sq(
    tools: Gnupg, key: Key, tmp_path: Path
) -> None:
    """A clearsigned InRelease-like file (dash lines, trailing blanks, blank line) verifies
    with gpg, gpgv and sq, class 01; gpg recovers the text without trailing blanks."""
    signed = tmp_path / "InRelease"
    signed.write_bytes(key.clearsigned(INRELEASE))
    head = signed.read_bytes().split(b"\n", 3)
    assert head[:3] == [
        b"-----BEGIN PGP SIGNED MESSAGE-----",
        f"Hash: {key.hash_name.upper()}".encode(),
        b"",
    ]
    assert b"\n- -----BEGIN PGP SIGNATURE-----\n- - dashes\n" in signed.read_bytes()
    _good(tools.gpg("--verify", str(signed)), key, "01")
    _good(tools.gpgv(str(signed)), key, "01")
    out = tmp_path / "Release"
    recovered = tools.gpg("--output", str(out), "--decrypt", str(signed))
    assert recovered.returncode == 0, recovered.stderr.decode()
    stripped = b"\n".join(line.rstrip(b" \t") for line in INRELEASE.split(b"\n"))
    assert out.read_bytes().replace(b"\r\n", b"\n") == stripped
    verified = tools.sq_verify(str(signed))
    assert verified.returncode == 0, verified.stderr.decode()
    assert verified.stdout.replace(b"\r\n", b"\n").rstrip(b"\n") == stripped.rstrip(b"\n")


def test_tampered_cleartext_fails_every_tool(tools: Gnupg, key: Key, tmp_path: Path) -> None:
    """A clearsigned file whose text was changed fails gpg, gpgv and sq."""
    signed = tmp_path / "InRelease"
    signed.write_bytes(key.clearsigned(INRELEASE).replace(b"Suite: stable", b"Suite: stablf"))
    bad = tools.gpg("--verify", str(signed))
    assert bad.returncode != 0 and b"[GNUPG:] BADSIG " in bad.stdout
    assert tools.gpgv(str(signed)).returncode != 0
    assert tools.sq_verify(str(signed)).returncode != 0


def test_canonical_text_signature_covers_either_line_ending(tmp_path: Path, p256: Key) -> None:
    """A canonical text (0x01) signature made over LF text verifies with gpg and sq over
    the same text with LF or CRLF line endings, and not over other text."""
    tools = Gnupg(tmp_path, p256.cert)
    text = b"line one\nline two  \n\nend"
    sig = tmp_path / "text.sig"
    sig.write_bytes(p256.detached(text, TEXT))
    for name, body, ok in (
        ("lf", text, True),
        ("crlf", text.replace(b"\n", b"\r\n"), True),
        ("other", text.replace(b"two  ", b"two"), False),
    ):
        path = tmp_path / name
        path.write_bytes(body)
        checked = tools.gpg("--verify", str(sig), str(path))
        assert (checked.returncode == 0) is ok, checked.stderr.decode()
        if ok:
            _good(checked, p256, "01")
        assert (tools.sq_verify("--detached", str(sig), str(path)).returncode == 0) is ok


# Digests and packets, without tools.


def test_streamed_digest_equals_the_one_shot_digest(p256: Key) -> None:
    """Hashing a file in chunks with start/finish gives document_digest's digest, and
    finish leaves the running hash usable."""
    data = os.urandom(100_000)
    hashed = p256.hashed()
    h = pgp.start("sha256")
    for at in range(0, len(data), 4096):
        h.update(data[at : at + 4096])
    assert pgp.finish(h, hashed) == pgp.document_digest(data, hashed)
    assert pgp.finish(h, hashed) == pgp.document_digest(data, hashed)
    assert pgp.document_digest(data, hashed) == hashlib.sha256(data + hashed.trailer()).digest()
    with pytest.raises(ValueError, match="sha384"):
        pgp.finish(pgp.start("sha384"), hashed)
    with pytest.raises(ValueError, match="binary"):
        pgp.finish(h, p256.hashed(TEXT))


def test_trailer_is_the_hashed_part_then_04ff_and_its_length(p256: Key) -> None:
    """The trailer is the hashed part, 0x04 0xFF and its 4-byte length; the hashed part
    holds creation time then issuer fingerprint, non-critical, for a document signature."""
    hashed = p256.hashed()
    encoded = hashed.encode()
    assert encoded == (
        bytes([4, 0, 19, 8, 0, 29])
        + bytes([5, 2])
        + struct.pack(">I", SIGNED_AT)
        + bytes([22, 33, 4])
        + p256.fpr
    )
    assert hashed.trailer() == encoded + b"\x04\xff" + struct.pack(">I", len(encoded))


def test_text_canonicalisation_follows_rfc_4880() -> None:
    """Canonical text makes LF line endings CRLF; the cleartext text also drops trailing
    spaces and tabs and the final line ending; a lone CR is refused by both."""
    assert pgp.canonical_text(b"a\nb\r\nc \n") == b"a\r\nb\r\nc \r\n"
    assert pgp.cleartext_text(b"a \t\nb\r\nc \n") == b"a\r\nb\r\nc"
    assert pgp.cleartext_text(b"a\nb") == pgp.cleartext_text(b"a\nb\n") == b"a\r\nb"
    assert pgp.cleartext_text(b"a\n\n") == b"a\r\n"
    for refuse in (pgp.canonical_text, pgp.cleartext_text):
        with pytest.raises(ValueError, match="CR"):
            refuse(b"a\rb\n")


def test_signature_packet_carries_the_issuer_left16_and_mpis(p256: Key) -> None:
    """The packet has the hashed part as given, the issuer key ID unhashed, the digest's
    left 16 bits and the ECDSA r, s (RSA: one MPI, leading zero bytes stripped)."""
    digest = pgp.document_digest(b"x", p256.hashed())
    parsed = pgp.parse_signature_packet(
        pgp.signature_packet(p256.hashed(), digest, p256.hsm_sign(digest))
    )
    assert Hashed.parse(parsed.hashed) == p256.hashed()
    assert parsed.unhashed == bytes([9, 16]) + pgp.key_id(p256.body)
    assert parsed.left16 == digest[:2]
    assert len(parsed.mpis) == 2
    rsa_hashed = Hashed(BINARY, RSA, "sha512", SIGNED_AT, p256.fpr)
    rsa_sig = pgp.signature_packet(rsa_hashed, bytes(64), b"\x00\x00\x01\x02")
    assert rsa_sig.endswith(b"\x00\x09\x01\x02")
    assert pgp.parse_signature_packet(rsa_sig).mpis == (0x0102,)
    with pytest.raises(ValueError, match="digest"):
        pgp.signature_packet(p256.hashed(), bytes(48), p256.hsm_sign(digest))


@pytest.mark.parametrize("size", [0, 1, 191, 192, 8383, 8384, 70_000])
def test_packets_use_the_shortest_new_format_length(size: int) -> None:
    """packet() writes a 1-, 2- or 5-byte new-format length and read_packets reads it back."""
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    made = pgp.packet(2, body)
    header = 2 if size < 192 else 3 if size < 8384 else 6
    assert len(made) == header + size and made[0] == 0xC2
    assert pgp.read_packets(made + pgp.packet(13, b"u")) == [(2, body), (13, b"u")]
    with pytest.raises(PgpFormatError):
        pgp.read_packets(made[:-1])


def test_armor_round_trips_and_its_checksum_is_checked(p256: Key) -> None:
    """Armor has 64-character lines and a CRC-24 line; unarmor returns the bytes and refuses
    a wrong checksum, another kind, or missing armor lines."""
    data = os.urandom(500)
    text = pgp.armor("SIGNATURE", data)
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN PGP SIGNATURE-----" and lines[1] == ""
    assert all(len(line) == 64 for line in lines[2:-3]) and 0 < len(lines[-3]) <= 64
    assert re.fullmatch(r"=[A-Za-z0-9+/]{4}", lines[-2])
    assert pgp.unarmor(text) == ("SIGNATURE", data)
    assert pgp.unarmor(text.replace("\n\n", "\nComment: x\n\n", 1)) == ("SIGNATURE", data)
    assert pgp.armor("SIGNATURE", b"").splitlines()[-2] == "=twTO"  # CRC-24 of nothing
    flipped = lines[2][:-1] + ("A" if lines[2][-1] != "A" else "B")
    with pytest.raises(PgpFormatError, match="CRC-24"):
        pgp.unarmor("\n".join([lines[0], "", flipped, *lines[3:]]))
    with pytest.raises(PgpFormatError, match="CRC-24 checksum line"):
        pgp.unarmor("\n".join(lines[:-2] + lines[-1:]))
    with pytest.raises(PgpFormatError, match="BEGIN"):
        pgp.unarmor(text.replace("SIGNATURE", "MESSAGE"))
    with pytest.raises(PgpFormatError, match="END"):
        pgp.unarmor("\n".join(lines[:-1]))
    with pytest.raises(ValueError, match="armor kind"):
        pgp.armor("MESSAGE", data)


def test_unsupported_keys_are_refused_naming_the_supported_ones() -> None:
    """public_key_body refuses Ed25519, P-521 and small RSA keys, naming RSA, P-256, P-384."""
    for private in (
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP521R1()),
        rsa.generate_private_key(65537, 1024),  # noqa: S505 (refused, as it should be)
    ):
        pem = (
            private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        with pytest.raises(ValueError, match=r"RSA .*P-256 or ECDSA P-384"):
            pgp.public_key_body(pem, KEY_CREATED)
    with pytest.raises(ValueError, match="PEM"):
        pgp.public_key_body("not a key", KEY_CREATED)


def test_hashed_values_are_checked_on_construction(p256: Key) -> None:
    """Hashed refuses unknown types, algorithms, hashes, times, short fingerprints, and key
    flags on a document signature."""
    good = {
        "sig_type": BINARY,
        "pubkey_algorithm": ECDSA,
        "hash_algorithm": "sha256",
        "created": SIGNED_AT,
        "issuer_fingerprint": p256.fpr,
    }
    for field, value in (
        ("sig_type", 0x10),
        ("pubkey_algorithm", 17),
        ("hash_algorithm", "sha1"),
        ("created", 2**32),
        ("issuer_fingerprint", p256.fpr[:8]),
        ("key_flags", 0x03),
    ):
        with pytest.raises(ValueError):
            Hashed(**{**good, field: value})  # type: ignore[arg-type]


# The strict parser of a requester's hashed part.


def _sp(kind: int, data: bytes, length: bytes | None = None) -> bytes:
    """A subpacket with an explicit (possibly lying or long-form) length."""
    return (length if length is not None else bytes([len(data) + 1])) + bytes([kind]) + data


CREATED = _sp(2, struct.pack(">I", SIGNED_AT))
FPR = _sp(33, b"\x04" + bytes(range(20)))


def _hashed(subpackets: bytes, head: bytes = bytes([4, 0, 19, 8])) -> bytes:
    return head + struct.pack(">H", len(subpackets)) + subpackets


def test_the_parser_accepts_what_the_module_writes() -> None:
    """A well-formed document hashed part parses to its values."""
    assert Hashed.parse(_hashed(CREATED + FPR)) == Hashed(
        BINARY, ECDSA, "sha256", SIGNED_AT, bytes(range(20))
    )


BAD_HASHED: list[tuple[str, bytes, str]] = [
    ("empty", b"", "is 0 bytes"),
    ("truncated head", bytes([4, 0, 19]), "is 3 bytes"),
    ("version 3", _hashed(CREATED + FPR, bytes([3, 0, 19, 8])), "version 3"),
    ("version 5", _hashed(CREATED + FPR, bytes([5, 0, 19, 8])), "version 5"),
    ("certification", _hashed(CREATED + FPR, bytes([4, 0x13, 19, 8])), "0x13 is not a doc"),
    ("subkey binding", _hashed(CREATED + FPR, bytes([4, 0x18, 19, 8])), "0x18 is not a doc"),
    ("DSA", _hashed(CREATED + FPR, bytes([4, 0, 17, 8])), "public-key algorithm 17"),
    ("SHA-1", _hashed(CREATED + FPR, bytes([4, 0, 19, 2])), "hash algorithm 2 is not"),
    ("SHA-224", _hashed(CREATED + FPR, bytes([4, 0, 19, 11])), "hash algorithm 11 is not"),
    ("no creation time", _hashed(FPR), "no subpacket 2 .signature creation time"),
    ("no fingerprint", _hashed(CREATED), "no subpacket 33 .issuer fingerprint"),
    ("repeated time", _hashed(CREATED + CREATED + FPR), "subpacket 2 .* more than once"),
    ("repeated fpr", _hashed(CREATED + FPR + FPR), "subpacket 33 .* more than once"),
    ("out of order", _hashed(FPR + CREATED), "must come in the order signature creation time"),
    ("hashed key id", _hashed(CREATED + FPR + _sp(16, bytes(8))), "subpacket 16 .issuer key"),
    ("key flags", _hashed(CREATED + FPR + _sp(27, b"\x03")), "subpacket 27 .key flags"),
    ("notation", _hashed(CREATED + FPR + _sp(20, bytes(12))), "subpacket 20 .unknown"),
    ("critical time", _hashed(_sp(0x82, bytes(4)) + FPR), "marked critical"),
    ("trailing bytes", _hashed(CREATED + FPR) + b"\x00", "1 trailing bytes"),
    ("truncated area", _hashed(CREATED + FPR)[:-1], "said to be 29 bytes but 28 follow"),
    ("area length lies", bytes([4, 0, 19, 8, 0, 40]) + CREATED + FPR, "said to be 40 bytes"),
    ("area too short", bytes([4, 0, 19, 8, 0, 5]) + CREATED + FPR, "trailing bytes"),
    (
        "subpacket length lies",
        _hashed(CREATED + _sp(33, b"\x04" + bytes(20), bytes([30]))),
        "said to be 30 bytes but 22 remain",
    ),
    ("zero length", _hashed(CREATED + FPR + b"\x00"), "length 0"),
    (
        "2-byte length lies",
        _hashed(CREATED + FPR + _sp(2, bytes(4), bytes([192, 0]))),
        "said to be 192 bytes",
    ),
    ("2-byte length cut", _hashed(CREATED + FPR + b"\xc0"), "length at offset 29 is cut off"),
    (
        "5-byte length lies",
        _hashed(CREATED + FPR + _sp(2, bytes(4), b"\xff" + struct.pack(">I", 2**32 - 1))),
        "said to be 4294967295 bytes",
    ),
    ("5-byte length cut", _hashed(CREATED + FPR + b"\xff\x00\x00"), "is cut off"),
    (
        "5-byte long form",
        _hashed(_sp(2, struct.pack(">I", 1), b"\xff\x00\x00\x00\x05") + FPR),
        "5-byte length where the shortest",
    ),
    ("short time", _hashed(_sp(2, bytes(3)) + FPR), "creation time is 3 bytes"),
    ("long time", _hashed(_sp(2, bytes(5)) + FPR), "creation time is 5 bytes"),
    ("fpr v5", _hashed(CREATED + _sp(33, b"\x05" + bytes(32))), "version 4 and 20 bytes"),
    ("fpr short", _hashed(CREATED + _sp(33, b"\x04" + bytes(19))), "version 4 and 20 bytes"),
    ("fpr empty", _hashed(CREATED + _sp(33, b"")), "version none"),
]


@pytest.mark.parametrize(
    ("data", "message"), [c[1:] for c in BAD_HASHED], ids=[c[0] for c in BAD_HASHED]
)
def test_the_parser_refuses_malformed_hashed_parts(data: bytes, message: str) -> None:
    """Each malformed or unexpected hashed part raises PgpFormatError naming the problem."""
    with pytest.raises(PgpFormatError, match=message):
        Hashed.parse(data)


def test_long_subpacket_lengths_are_decoded_exactly() -> None:
    """Consistent 2- and 5-byte subpacket lengths are decoded to the right size, so an
    oversized subpacket is refused for its size."""
    two = bytes([192, 0, 33]) + b"\x04" + bytes(190)  # 192 bytes: the 2-byte form is shortest
    with pytest.raises(PgpFormatError, match="got 191 bytes"):
        Hashed.parse(_hashed(CREATED + two))
    five = b"\xff" + struct.pack(">I", 8384) + bytes([2]) + bytes(8383)
    with pytest.raises(PgpFormatError, match="creation time is 8383 bytes"):
        Hashed.parse(_hashed(five + FPR))


DOCUMENT_HASHED = st.builds(
    Hashed,
    sig_type=st.sampled_from([BINARY, TEXT]),
    pubkey_algorithm=st.sampled_from([RSA, ECDSA]),
    hash_algorithm=st.sampled_from(list(pgp.HASH_IDS)),
    created=st.integers(0, 2**32 - 1),
    issuer_fingerprint=st.binary(min_size=20, max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(DOCUMENT_HASHED)
def test_document_hashed_parts_round_trip(hashed: Hashed) -> None:
    """Hashed.parse(h.encode()) == h for every document signature's hashed part."""
    assert Hashed.parse(hashed.encode()) == hashed


@settings(max_examples=300, deadline=None)
@given(DOCUMENT_HASHED, st.integers(0, 200), st.integers(0, 255))
def test_a_changed_byte_is_refused_or_parses_to_exactly_those_bytes(
    hashed: Hashed, where: int, value: int
) -> None:
    """Any one byte changed either makes the hashed part refused or is a value the module
    writes byte for byte: the parser never accepts a form it would not write."""
    data = bytearray(hashed.encode())
    data[where % len(data)] = value
    try:
        parsed = Hashed.parse(bytes(data))
    except PgpFormatError:
        return
    assert parsed.encode() == bytes(data)
