"""C2SP tlog checkpoints: the spec example, round trips, strict parsing, fields refused.

Checkpoint text is an origin, a size and a base64 root, one per line, then
extension lines; any other form is refused (tests/assets/c2sp_examples.json via
tests/vectors.py). Signed notes: tests/test_note.py.
"""

from __future__ import annotations

import base64

import pytest

from signer.audit.note import Checkpoint
from signer.errors import InvalidArgumentError, VerificationError
from tests.vectors import C2SP


def test_c2sp_checkpoint_example_parses() -> None:
    """The C2SP tlog-checkpoint example body parses and prints back identically."""
    note: str = C2SP["checkpoint_example"]
    body = note[: note.index("\n\n") + 1]
    cp = Checkpoint.parse(body)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.text() == body


@pytest.mark.parametrize("size", [0, 1, 10, 2**63, 2**64 - 1])
def test_checkpoint_round_trip(size: int) -> None:
    """Checkpoint text is origin, size and base64 root lines, and parses back equal."""
    cp = Checkpoint("log.example/audit", size, bytes(range(32)))
    root_b64 = base64.b64encode(bytes(range(32))).decode()
    assert cp.text() == f"log.example/audit\n{size}\n{root_b64}\n"
    assert Checkpoint.parse(cp.text()) == cp


def test_checkpoint_extension_lines_are_ignored() -> None:
    """Non-empty lines after the root are allowed and ignored."""
    cp = Checkpoint("o", 5, b"\x01" * 32)
    assert Checkpoint.parse(cp.text() + "ext one\n— ext two\n") == cp


ROOT = base64.b64encode(b"\x11" * 32).decode()
BAD_CHECKPOINTS = {
    "empty origin": f"\n5\n{ROOT}\n",
    "leading zero": f"o\n05\n{ROOT}\n",
    "double zero": f"o\n00\n{ROOT}\n",
    "plus sign": f"o\n+5\n{ROOT}\n",
    "negative": f"o\n-1\n{ROOT}\n",
    "leading space": f"o\n 5\n{ROOT}\n",
    "trailing space": f"o\n5 \n{ROOT}\n",
    "exponent": f"o\n1e3\n{ROOT}\n",
    "hex": f"o\n0x10\n{ROOT}\n",
    "fullwidth digit": f"o\n\uff15\n{ROOT}\n",
    "arabic-indic digit": f"o\n\u0665\n{ROOT}\n",
    "underscore": f"o\n1_000\n{ROOT}\n",
    "over 2**64-1": f"o\n{2**64}\n{ROOT}\n",
    "empty size": f"o\n\n{ROOT}\n",
    "31-byte root": f"o\n5\n{base64.b64encode(b'x' * 31).decode()}\n",
    "33-byte root": f"o\n5\n{base64.b64encode(b'x' * 33).decode()}\n",
    "url-safe root": f"o\n5\n{base64.urlsafe_b64encode(bytes([255] * 32)).decode()}\n",
    "unpadded root": f"o\n5\n{ROOT.rstrip('=')}\n",
    "non-canonical root": f"o\n5\n{ROOT[:-2]}R=\n",
    "hex root": f"o\n5\n{'11' * 32}\n",
    "nul in origin": f"o\x00\n5\n{ROOT}\n",
    "tab in origin": f"o\tx\n5\n{ROOT}\n",
    "cr line ends": f"o\r\n5\r\n{ROOT}\r\n",
    "no final newline": f"o\n5\n{ROOT}",
    "two lines": "o\n5\n",
    "empty extension line": f"o\n5\n{ROOT}\n\next\n",
    "empty": "",
}


@pytest.mark.parametrize("text", BAD_CHECKPOINTS.values(), ids=BAD_CHECKPOINTS.keys())
def test_checkpoint_parse_is_strict(text: str) -> None:
    """Malformed checkpoint text raises VerificationError."""
    with pytest.raises(VerificationError):
        Checkpoint.parse(text)


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [
        ("", 1, bytes(32)),
        ("a\nb", 1, bytes(32)),
        ("o", -1, bytes(32)),
        ("o", 2**64, bytes(32)),
        ("o", True, bytes(32)),
        ("o", 1, bytes(31)),
    ],
)
def test_checkpoint_rejects_bad_fields(origin: str, size: int, root: bytes) -> None:
    """A checkpoint cannot be built with text that would not parse back."""
    with pytest.raises(InvalidArgumentError):
        Checkpoint(origin, size, root)
