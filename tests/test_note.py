"""C2SP signed notes: Go known answers, signing, strict parsing, verifier strings, unknown keys.

Known answers: tests/assets/go_sumdb_note.json (golang.org/x/mod/sumdb/note
tests) and tests/assets/c2sp_examples.json (C2SP spec examples), loaded by
tests/vectors.py; see tests/assets/README.md. Checkpoints:
tests/test_note_checkpoint.py.
"""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.audit.note import (
    MAX_SIGNATURES,
    Checkpoint,
    Verifier,
    key_id,
    open_note,
    sign_note,
)
from signer.errors import InvalidArgumentError, VerificationError
from tests.vectors import C2SP, GO_NOTE

TEXT: str = GO_NOTE["text"]
PETER_SIG: str = GO_NOTE["peter_sig_line"]
ENOCH_SIG: str = GO_NOTE["enoch_sig_line"]
PETER = Verifier.parse(GO_NOTE["peter_vkey"])
ENOCH = Verifier.parse(GO_NOTE["enoch_vkey"])
BOTH = f"{TEXT}\n{PETER_SIG}{ENOCH_SIG}"
DASH = "\u2014"


def _peter_private_key() -> ed25519.Ed25519PrivateKey:
    """The test signer key published in note_test.go: PRIVATE+KEY+name+hash+base64(0x01||seed)."""
    encoded = GO_NOTE["peter_skey"].split("+", 4)[4]
    return ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(encoded)[1:])


def _fresh(name: str) -> tuple[ed25519.Ed25519PrivateKey, Verifier]:
    key = ed25519.Ed25519PrivateKey.generate()
    return key, Verifier.for_key(name, key.public_key())


def _sig_b64(line: str) -> str:
    return line.rstrip("\n").rsplit(" ", 1)[1]


# -- Go known answers -------------------------------------------------------------


def test_go_verifier_keys_parse() -> None:
    """The published verifier strings parse, with their names and key ids, and print back."""
    assert (PETER.name, PETER.key_id.hex()) == ("PeterNeumann", "c74f20a3")
    assert (ENOCH.name, ENOCH.key_id.hex()) == ("EnochRoot", "af0cfe78")
    assert str(PETER) == GO_NOTE["peter_vkey"]
    assert str(ENOCH) == GO_NOTE["enoch_vkey"]


def test_key_id_matches_go() -> None:
    """key_id over name and raw key gives the published key hash."""
    assert key_id("PeterNeumann", PETER.public_key.public_bytes_raw()) == bytes.fromhex("c74f20a3")
    assert Verifier.for_key("PeterNeumann", PETER.public_key) == PETER


def test_go_signed_note_opens() -> None:
    """The published signed note opens with the published verifier and yields its text."""
    assert open_note(GO_NOTE["signed_note"], [PETER]) == TEXT


def test_sign_note_reproduces_go_note_byte_for_byte() -> None:
    """Signing the published text with the published test key gives Go's TestSign output."""
    key = _peter_private_key()
    assert Verifier.for_key("PeterNeumann", key.public_key()) == PETER
    assert sign_note(TEXT, "PeterNeumann", key.public_key(), key.sign) == GO_NOTE["signed_note"]


def test_note_signed_by_two_keys_opens_with_either() -> None:
    """A note signed by Peter and Enoch opens with either verifier, or both."""
    for verifiers in ([PETER], [ENOCH], [PETER, ENOCH], [ENOCH, PETER], [PETER, PETER]):
        assert open_note(BOTH, verifiers) == TEXT


def test_unknown_keys_are_ignored() -> None:
    """Signatures by keys not in the list are skipped, even beside a bad-looking one."""
    _, stranger = _fresh("Stranger")
    assert open_note(BOTH, [stranger, ENOCH]) == TEXT
    forged = base64.b64encode(b"\x00" * 68).decode()
    assert open_note(f"{TEXT}\n{DASH} Stranger {forged}\n{PETER_SIG}", [PETER]) == TEXT


# Same name as Peter, different key (so a different key id).
NAMESAKE = Verifier.for_key("PeterNeumann", ed25519.Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize(
    ("note", "verifiers"),
    [
        (BOTH, [NAMESAKE]),  # signed, but by nobody we know
        (BOTH, []),
        (
            f"{TEXT}\n{DASH} CarmenSandiego {_sig_b64(PETER_SIG)}\n",
            [PETER],
        ),  # Peter's id, other name
        (f"{TEXT}\n{PETER_SIG.replace('x08g', 'xxxx')}", [PETER]),  # Peter's name, other key id
    ],
    ids=["namesake", "no verifiers", "other name", "other key id"],
)
def test_note_without_known_signature_fails(note: str, verifiers: list[Verifier]) -> None:
    """A note with no signature from a known (name, key id) is rejected."""
    with pytest.raises(VerificationError, match="no signature by a known key"):
        open_note(note, verifiers)


def test_known_key_with_bad_signature_rejects_the_note() -> None:
    """A bad signature by a known key rejects the note even beside a good one (Go TestOpen)."""
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(VerificationError, match="invalid signature for key PeterNeumann"):
        open_note(f"{TEXT}\n{ENOCH_SIG}{bad}", [PETER, ENOCH])
    raw = bytearray(base64.b64decode(_sig_b64(PETER_SIG)))
    raw[-1] ^= 1
    flipped = f"{TEXT}\n{DASH} PeterNeumann {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(flipped, [PETER])
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(f"{TEXT.upper()}\n{PETER_SIG}", [PETER])


def _colliding_keys(name: str) -> tuple[bytes, bytes]:
    """Two 32-byte keys with the same key id under `name` (a birthday search over 2**32)."""
    seen: dict[bytes, bytes] = {}
    for i in itertools.count():
        raw = hashlib.sha256(i.to_bytes(8, "big")).digest()
        other = seen.setdefault(key_id(name, raw), raw)
        if other != raw:
            return other, raw
    raise AssertionError("unreachable")


def test_colliding_key_ids() -> None:
    """Two keys sharing name and key id: ambiguous as a list, and one cannot pass for the other."""
    raw_a, raw_b = _colliding_keys("collide")
    a, b = (
        Verifier("collide", key_id("collide", raw), ed25519.Ed25519PublicKey.from_public_bytes(raw))
        for raw in (raw_a, raw_b)
    )
    assert a.key_id == b.key_id
    with pytest.raises(VerificationError, match="share the name and key id"):
        open_note(GO_NOTE["signed_note"], [a, b])
    forged = base64.b64encode(a.key_id + bytes(64)).decode()
    line = f"{DASH} collide {forged}\n"
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(f"{TEXT}\n{line}", [b])


# -- signing ----------------------------------------------------------------------


def test_sign_note_fresh_key_layout_and_round_trip() -> None:
    """sign_note emits text, a blank line and one em-dash line, which opens again."""
    key, verifier = _fresh("audit.example/log")
    text = "audit.example/log\n42\n" + base64.b64encode(b"\x07" * 32).decode() + "\n"
    note = sign_note(text, "audit.example/log", key.public_key(), key.sign)
    prefix = f"{text}\n{DASH} audit.example/log "
    assert note.startswith(prefix) and note.endswith("\n") and note.count("\n") == 5
    raw = base64.b64decode(note[len(prefix) : -1], validate=True)
    assert raw[:4] == verifier.key_id and len(raw) == 68
    key.public_key().verify(raw[4:], text.encode())
    assert open_note(note, [verifier]) == text


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("no newline", "k"),
        ("a\n\nb\n", "k"),  # empty line
        ("\n", "k"),
        ("a\r\n", "k"),
        ("a\x00\n", "k"),
        ("ok\n", ""),
        ("ok\n", "a b"),
        ("ok\n", "a+b"),
        ("ok\n", "a\u00a0b"),
    ],
)
def test_sign_note_rejects_bad_input(text: str, name: str) -> None:
    """Texts that could not be opened and invalid key names are refused before signing."""
    key, _ = _fresh("k")
    with pytest.raises(InvalidArgumentError):
        sign_note(text, name, key.public_key(), key.sign)


def test_sign_note_checks_the_signer() -> None:
    """A signer that signs with a different key than the named public key is caught."""
    key, _ = _fresh("k")
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(VerificationError, match="does not verify"):
        sign_note("ok\n", "k", key.public_key(), other.sign)


def test_signed_checkpoint_flow() -> None:
    """A checkpoint signed with sign_note opens and parses back to the same checkpoint."""
    key, verifier = _fresh("log.example/audit")
    cp = Checkpoint("log.example/audit", 123, hashlib.sha256(b"root").digest())
    note = sign_note(cp.text(), verifier.name, key.public_key(), key.sign)
    assert Checkpoint.parse(open_note(note, [verifier])) == cp


# -- malformed notes ----------------------------------------------------------------

PETER_B64 = _sig_b64(PETER_SIG)
EN_DASH = "\u2013"
SHORT_SIG = base64.b64encode(base64.b64decode(PETER_B64)[:67]).decode()

MALFORMED = {
    "ascii dash": f"{TEXT}\n{PETER_SIG.replace(DASH, '-')}",
    "double hyphen": f"{TEXT}\n{PETER_SIG.replace(DASH, '--')}",
    "en dash": f"{TEXT}\n{PETER_SIG.replace(DASH, EN_DASH)}",
    "dash without space": f"{TEXT}\n{PETER_SIG.replace(DASH + ' ', DASH)}",
    "no blank line": TEXT + PETER_SIG,
    "text only": TEXT,
    "text and blank line": TEXT + "\n",
    "unterminated signature": f"{TEXT}\n{PETER_SIG[:-1]}",
    "control character": f"\x01{TEXT}\n{PETER_SIG}",
    "escape": f"{TEXT[:5]}\x1b{TEXT[5:]}\n{PETER_SIG}",
    "tab": f"{TEXT[:5]}\t{TEXT[5:]}\n{PETER_SIG}",
    "delete": f"{TEXT[:5]}\x7f{TEXT[5:]}\n{PETER_SIG}",
    "nul in signature": f"{TEXT}\n{PETER_SIG[:-1]}\x00\n",
    "non-utf-8 byte": f"\udcff{TEXT}\n{PETER_SIG}",
    "crlf text": f"{TEXT.replace(chr(10), chr(13) + chr(10))}\n{PETER_SIG}",
    "cr in signature": f"{TEXT}\n{PETER_SIG[:-1]}\r\n",
    "space in name": f"{TEXT}\n{DASH} Bad Name {PETER_B64}\n",
    "empty name": f"{TEXT}\n{DASH}  {PETER_B64}\n",
    "plus in name": f"{TEXT}\n{DASH} Peter+Neumann {PETER_B64}\n",
    "unicode space in name": f"{TEXT}\n{DASH} Peter\u2003Neumann {PETER_B64}\n",
    "no signature": f"{TEXT}\n{DASH} PeterNeumann\n",
    "empty signature": f"{TEXT}\n{DASH} PeterNeumann \n",
    "trailing space": f"{TEXT}\n{PETER_SIG[:-1]} \n",
    "url-safe base64": f"{TEXT}\n{PETER_SIG.replace('/', '_').replace('+', '-')}",
    "unpadded base64": f"{TEXT}\n{PETER_SIG.replace('=', '')}",
    "non-canonical base64": f"{TEXT}\n{PETER_SIG.replace('nAM=', 'nAN=')}",
    "short signature": f"{TEXT}\n{DASH} PeterNeumann {SHORT_SIG}\n",
    "key id only": f"{TEXT}\n{DASH} PeterNeumann x08gow==\n",
    "unexpected line": f"{TEXT}\n{PETER_SIG}Unexpected line.\n",
    "empty text line": f"first\n\nlast\n\n{PETER_SIG}",
    "leading empty line": f"\n{TEXT}\n{PETER_SIG}",
    "blank line after signatures": f"{TEXT}\n{PETER_SIG}\n",
    "too many signatures": f"{TEXT}\n{PETER_SIG * (MAX_SIGNATURES + 1)}",
    "empty note": "",
}


@pytest.mark.parametrize("note", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_notes_are_rejected(note: str) -> None:
    """Each malformation raises VerificationError even though Peter's signature is known."""
    with pytest.raises(VerificationError):
        open_note(note, [PETER])


def test_signature_cap_is_inclusive() -> None:
    """Exactly MAX_SIGNATURES signature lines are accepted."""
    assert open_note(f"{TEXT}\n{PETER_SIG * MAX_SIGNATURES}", [PETER]) == TEXT


def test_c2sp_example_with_empty_text_line_is_rejected() -> None:
    """The C2SP signed-note example has an empty text line, which this parser refuses."""
    with pytest.raises(VerificationError, match="empty line"):
        open_note(C2SP["signed_note_example"], [PETER])


# -- verifier strings ---------------------------------------------------------------


def _bad_vkeys() -> list[str]:
    vkey: str = GO_NOTE["peter_vkey"]
    subs = {vkey[i:j] for i in range(len(vkey) + 1) for j in range(i, len(vkey) + 1)}
    bumped = {vkey[:i] + chr(ord(vkey[i]) + 1) + vkey[i + 1 :] for i in range(len(vkey))}
    raw = base64.b64decode(vkey.split("+")[2])
    return sorted(
        (subs | bumped | set(GO_NOTE["bad_vkeys"])) - {vkey}
        | {
            vkey.replace("c74f20a3", "C74F20A3"),  # uppercase key id
            vkey.replace("c74f20a3", "0c74f20a3"),
            vkey + "+extra",
            "Peter Neumann+c74f20a3+" + vkey.split("+")[2],
            vkey.replace("/", "_"),  # url-safe base64
            vkey.rstrip("W") + "W=",
            "PeterNeumann+c74f20a3+" + base64.b64encode(b"\x02" + raw[1:]).decode(),
            "PeterNeumann+c74f20a3+" + base64.b64encode(raw[1:]).decode(),  # no type byte
        }
    )


def test_bad_verifier_strings_are_rejected() -> None:
    """Every substring, single-character bump and other mangling fails (Go TestNewVerifier)."""
    bad = _bad_vkeys()
    assert len(bad) > 2000
    for vkey in bad:
        with pytest.raises(VerificationError):
            Verifier.parse(vkey)


def test_verifier_string_round_trip() -> None:
    """for_key prints a string that parses back to an equal, hashable verifier."""
    _, verifier = _fresh("audit.example/log")
    assert Verifier.parse(str(verifier)) == verifier
    assert len({verifier, Verifier.parse(str(verifier))}) == 1


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\x00b"])
def test_verifier_rejects_bad_names(name: str) -> None:
    """Verifiers need a non-empty name without '+', spaces or control characters."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(InvalidArgumentError):
        Verifier.for_key(name, key)


def test_verifier_rejects_wrong_key_id() -> None:
    """A verifier built by hand with a key id that does not match is refused."""
    with pytest.raises(InvalidArgumentError):
        Verifier("PeterNeumann", b"\x00\x00\x00\x00", PETER.public_key)
    with pytest.raises(InvalidArgumentError):
        key_id("PeterNeumann", b"\x00" * 31)
