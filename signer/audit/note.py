"""Signed notes and log checkpoints: C2SP signed-note and tlog-checkpoint, Ed25519 only.

A checkpoint ("origin\\nsize\\nbase64(root)\\n") is the text of a signed note;
the audit key in the token signs it, and an auditor who holds only the
verifier string ("name+keyid+base64(0x01||key)") checks it offline
(docs/architecture.md §6, invariant 4: a rollback or a forked log needs a checkpoint the
audit key never signed).

Parsing is strict so that one note has one reading: standard padded base64
only (re-encoding must give the same string), no control characters, no
"\\r", no empty text lines, key names without '+' or spaces, at most
`MAX_SIGNATURES` signature lines. Signatures from keys the caller does not
know (name and key id) are ignored, as C2SP requires; a known key with a bad
signature, or no verified signature at all, rejects the note. Every failure
to parse or verify raises `VerificationError`; bad input to the signing side
raises `InvalidArgumentError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from signer.errors import InvalidArgumentError, VerificationError

__all__ = [
    "MAX_SIGNATURES",
    "Checkpoint",
    "Verifier",
    "key_id",
    "open_checkpoint",
    "open_note",
    "sign_note",
]

MAX_SIGNATURES = 100
_ED25519 = b"\x01"  # C2SP signature type byte
_KEY_SIZE = 32
_SIG_SIZE = 64
_KEY_ID_SIZE = 4
_HASH_SIZE = 32
_SIG_PREFIX = "\u2014 "  # EM DASH, space
_MAX_SIZE = 2**64 - 1

# C0 and C1 controls except "\n" (so also "\r" and DEL), and lone surrogates
# (what undecodable bytes become under surrogateescape): not valid UTF-8.
_FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_KEY_ID_HEX = re.compile("[0-9a-f]{8}")
_DECIMAL = re.compile("0|[1-9][0-9]{0,19}")


# -- small strict parsers ---------------------------------------------------


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    """Standard, padded, canonical base64 (RFC 4648 §4), or VerificationError."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise VerificationError(f"{what} is not standard base64") from None
    if _b64encode(raw) != text:
        raise VerificationError(f"{what} is not canonical standard base64")
    return raw


def _control_problem(text: str) -> str | None:
    bad = _FORBIDDEN.search(text)
    if bad is None:
        return None
    return f"a control character or invalid UTF-8 ({bad.group()!r}) at offset {bad.start()}"


def _text_problem(text: str) -> str | None:
    """Why `text` cannot be a note text, or None: non-empty lines, each ending in "\\n"."""
    if not text.endswith("\n"):
        return "the text does not end with a newline"
    if text.startswith("\n") or "\n\n" in text:
        return "the text has an empty line"
    problem = _control_problem(text)
    return f"the text has {problem}" if problem else None


def _name_problem(name: str) -> str | None:
    if not name:
        return "the key name is empty"
    if "+" in name or any(c.isspace() for c in name) or _FORBIDDEN.search(name):
        return f"the key name {name!r} has a '+', a space or a control character"
    return None


def key_id(name: str, public_key: bytes) -> bytes:
    """C2SP Ed25519 key id: SHA-256(name || "\\n" || 0x01 || 32-byte key)[:4]."""
    if len(public_key) != _KEY_SIZE:
        raise InvalidArgumentError(
            f"an Ed25519 public key is {_KEY_SIZE} bytes, not {len(public_key)}"
        )
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + _ED25519 + public_key).digest()
    return digest[:_KEY_ID_SIZE]


# -- verifier keys ------------------------------------------------------------


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that may sign notes."""

    name: str
    key_id: bytes
    public_key: ed25519.Ed25519PublicKey

    def __post_init__(self) -> None:
        problem = _name_problem(self.name)
        if problem:
            raise InvalidArgumentError(f"verifier: {problem}")
        if self.key_id != key_id(self.name, self.public_key.public_bytes_raw()):
            raise InvalidArgumentError(f"verifier {self.name}: key id does not match name and key")

    def __hash__(self) -> int:
        return hash((self.name, self.key_id, self.public_key.public_bytes_raw()))

    @classmethod
    def for_key(cls, name: str, public_key: ed25519.Ed25519PublicKey) -> Verifier:
        """The verifier for `public_key` under `name`, with its derived key id."""
        problem = _name_problem(name)
        if problem:
            raise InvalidArgumentError(f"verifier: {problem}")
        return cls(name, key_id(name, public_key.public_bytes_raw()), public_key)

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Parse "name+hex8+base64(0x01||key)", checking the key id against name and key."""
        parts = vkey.split("+", 2)  # the base64 key may itself contain "+"
        if len(parts) != 3:
            raise VerificationError(f"verifier key {vkey!r} is not name+keyid+key")
        name, hex8, b64 = parts
        problem = _name_problem(name)
        if problem:
            raise VerificationError(f"verifier key {vkey!r}: {problem}")
        if not _KEY_ID_HEX.fullmatch(hex8):
            raise VerificationError(f"verifier key {vkey!r}: key id is not 8 lowercase hex digits")
        raw = _b64decode(b64, f"verifier key {vkey!r}")
        if len(raw) != 1 + _KEY_SIZE or raw[:1] != _ED25519:
            raise VerificationError(
                f"verifier key {vkey!r} is not an Ed25519 key (0x01 + 32 bytes)"
            )
        kid = bytes.fromhex(hex8)
        if kid != key_id(name, raw[1:]):
            raise VerificationError(f"verifier key {vkey!r}: key id does not match name and key")
        try:
            public_key = ed25519.Ed25519PublicKey.from_public_bytes(raw[1:])
        except ValueError:
            raise VerificationError(f"verifier key {vkey!r} is not a valid Ed25519 key") from None
        return cls(name, kid, public_key)

    def __str__(self) -> str:
        raw = _ED25519 + self.public_key.public_bytes_raw()
        return f"{self.name}+{self.key_id.hex()}+{_b64encode(raw)}"

    def verify(self, text: str, signature: bytes) -> None:
        """Check an Ed25519 signature over the note text."""
        try:
            self.public_key.verify(signature, text.encode("utf-8"))
        except InvalidSignature:
            raise VerificationError(f"invalid signature for key {_label(self)}") from None


def _label(v: Verifier) -> str:
    return f"{v.name}+{v.key_id.hex()}"


# -- notes --------------------------------------------------------------------


def sign_note(
    text: str,
    name: str,
    public_key: ed25519.Ed25519PublicKey,
    sign: Callable[[bytes], bytes],
) -> str:
    """Sign `text` with `sign` (Ed25519 under `public_key`) and return the signed note.

    The signature is checked against `public_key` before it is released, so a
    token that signs with the wrong key cannot publish an unverifiable checkpoint.
    """
    problem = _text_problem(text)
    if problem:
        raise InvalidArgumentError(f"cannot sign note: {problem}")
    verifier = Verifier.for_key(name, public_key)
    signature = sign(text.encode("utf-8"))
    try:
        verifier.verify(text, signature)
    except VerificationError:
        raise VerificationError(
            f"the signer's signature does not verify under the public key of {name}"
        ) from None
    line = f"{_SIG_PREFIX}{name} {_b64encode(verifier.key_id + signature)}\n"
    return f"{text}\n{line}"


def _split_note(note: str) -> tuple[str, list[str]]:
    """(text, signature lines) of a note; the separator is its last blank line."""
    problem = _control_problem(note)
    if problem:
        raise VerificationError(f"note has {problem}")
    split = note.rfind("\n\n")
    if split < 0:
        raise VerificationError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise VerificationError("note does not end with a complete signature line")
    problem = _text_problem(text)
    if problem:
        raise VerificationError(f"note: {problem}")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError(f"note has {len(lines)} signatures, over {MAX_SIGNATURES}")
    return text, lines


def _parse_signature(line: str) -> tuple[str, bytes, bytes]:
    """(name, key id, signature) from "— name base64(keyid||signature)"."""
    if not line.startswith(_SIG_PREFIX):
        raise VerificationError(
            f"signature line {line[:40]!r} does not start with an em dash (U+2014) and a space"
        )
    name, space, b64 = line[len(_SIG_PREFIX) :].partition(" ")
    problem = _name_problem(name) or (None if space else "no signature after the key name")
    if problem:
        raise VerificationError(f"signature line {line[:40]!r}: {problem}")
    raw = _b64decode(b64, f"signature by {name!r}")
    if len(raw) < _KEY_ID_SIZE + _SIG_SIZE:
        raise VerificationError(
            f"signature by {name!r} is {len(raw)} bytes, shorter than a key id and a signature"
        )
    return name, raw[:_KEY_ID_SIZE], raw[_KEY_ID_SIZE:]


def _known(verifiers: Sequence[Verifier]) -> dict[tuple[str, bytes], Verifier]:
    known: dict[tuple[str, bytes], Verifier] = {}
    for v in verifiers:
        other = known.setdefault((v.name, v.key_id), v)
        if other != v:
            raise VerificationError(f"two verifier keys share the name and key id {_label(v)}")
    return known


def open_note(note: str, verifiers: Sequence[Verifier]) -> str:
    """The text of `note` if a known verifier's signature on it verifies."""
    known = _known(verifiers)
    text, lines = _split_note(note)
    signatures = [_parse_signature(line) for line in lines]
    verified = False
    for name, kid, signature in signatures:
        verifier = known.get((name, kid))
        if verifier is not None:  # unknown keys are ignored (C2SP signed-note)
            verifier.verify(text, signature)
            verified = True
    if not verified:
        names = ", ".join(sorted(_label(v) for v in known.values())) or "none"
        raise VerificationError(f"note has no signature by a known key (known: {names})")
    return text


# -- checkpoints --------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A tree head as C2SP tlog-checkpoint text: origin, size, base64 root."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        problem = _origin_problem(self.origin)
        if problem:
            raise InvalidArgumentError(f"checkpoint: {problem}")
        if isinstance(self.size, bool) or not 0 <= self.size <= _MAX_SIZE:
            raise InvalidArgumentError(f"checkpoint: tree size {self.size!r} is out of range")
        if len(self.root) != _HASH_SIZE:
            raise InvalidArgumentError(f"checkpoint: root hash is {len(self.root)} bytes, not 32")

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{_b64encode(self.root)}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse checkpoint text strictly; extension lines after the third are ignored."""
        problem = _text_problem(text)
        if problem:
            raise VerificationError(f"checkpoint: {problem}")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise VerificationError("checkpoint has fewer than three lines (origin, size, root)")
        origin, size, root = lines[:3]
        if not _DECIMAL.fullmatch(size):
            raise VerificationError(
                f"checkpoint tree size {size!r} is not a decimal without leading zeros"
            )
        if int(size) > _MAX_SIZE:
            raise VerificationError(f"checkpoint tree size {size} is over 2**64-1")
        raw = _b64decode(root, "checkpoint root hash")
        if len(raw) != _HASH_SIZE:
            raise VerificationError(f"checkpoint root hash is {len(raw)} bytes, not {_HASH_SIZE}")
        try:
            return cls(origin, int(size), raw)
        except InvalidArgumentError as e:
            raise VerificationError(str(e)) from None


def _origin_problem(origin: str) -> str | None:
    if not origin:
        return "the origin is empty"
    if "\n" in origin or _FORBIDDEN.search(origin):
        return f"the origin {origin!r} has a newline or a control character"
    return None


def open_checkpoint(note: str, verifier: Verifier, where: str = "checkpoint") -> Checkpoint:
    """A checkpoint signed by `verifier` for its own origin; errors say `where`."""
    try:
        cp = Checkpoint.parse(open_note(note, [verifier]))
    except VerificationError as e:
        raise VerificationError(f"{where}: {e}") from None
    if cp.origin != verifier.name:
        raise VerificationError(f"{where}: origin {cp.origin!r} is not {verifier.name!r}")
    return cp
