"""The one rule for text that people are shown, and the one way clients print it.

What an officer is shown must be exactly what they sign (docs/architecture.md §14): no text
that any party sends may hide, reorder or restyle what is around it on
someone's terminal. Every validator that accepts text other people will read
(artifact names, CI context values, reasons, OIDC claims, in-toto statement
fields, client profiles, signer URIs) calls `is_displayable`, which refuses:

- C0 and C1 control characters (so ESC, and with it every CSI and OSC
  sequence, CR, BS, TAB and NEL), and DEL;
- Unicode format characters (category Cf: bidi embeddings, overrides and
  isolates, zero-width spaces and joiners, U+061C, U+FEFF, ...);
- line and paragraph separators (U+2028, U+2029);
- the other default-ignorable code points, which a terminal draws as nothing
  (variation selectors, U+034F, Hangul fillers, U+17B4/U+17B5, Mongolian
  variation selectors) and U+2800, a blank that is not a space: a name with
  them looks the same as one without;
- surrogates, private-use and unassigned code points (nothing a terminal can
  show faithfully).

Fields with a syntax of their own (hash names, predicate types, key names,
digest-set keys) are also checked against that syntax by their validators.

Clients never trust a server's text: every string that came from the server or
from another party passes through `shown()` before it reaches a terminal,
whatever the server sent. It makes every refused character visible as a
Python-style escape (`\\x1b`, `\\u202e`), so a hostile string is shown, never
obeyed.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "DISPLAY_RULE",
    "KEY_NAME",
    "MAX_ARTIFACT",
    "counted",
    "is_artifact_name",
    "is_displayable",
    "shown",
]

# Names with a syntax of their own: signing keys and identities in config, key
# names in signer: URIs; artifact names are any displayable text of bounded length.
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
MAX_ARTIFACT = 512

DISPLAY_RULE = (
    "without control characters, format characters (bidi, zero-width...), line "
    "separators, invisible characters (variation selectors, fillers), private-use "
    "or unassigned characters"
)
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_ASCII_CONTROL = re.compile("[\x00-\x1f\x7f]")
# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) outside the refused
# categories, and the braille blank: drawn as nothing, or as a space that is not one.
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164"
    "\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]"
)


def _refused(c: str) -> bool:
    return unicodedata.category(c) in _REFUSED_CATEGORIES or _INVISIBLE.match(c) is not None


def is_displayable(text: str) -> bool:
    """True if `text` holds nothing that could hide or restyle what is around it."""
    if text.isascii():
        return _ASCII_CONTROL.search(text) is None
    return not any(_refused(c) for c in text)


def is_artifact_name(name: str) -> bool:
    """1 to MAX_ARTIFACT characters, displayable."""
    return 1 <= len(name) <= MAX_ARTIFACT and is_displayable(name)


def _escape(c: str) -> str:
    n = ord(c)
    if n <= 0xFF:
        return f"\\x{n:02x}"
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def shown(text: object) -> str:
    """`text` as it may be printed: every refused character made a visible escape."""
    s = str(text)
    if is_displayable(s):
        return s
    return "".join(_escape(c) if _refused(c) else c for c in s)


def counted(n: int, one: str, many: str = "") -> str:
    """`n` and the word that agrees with it: "1 checkpoint", "2 checkpoints"."""
    return f"{n} {one if n == 1 else many or one + 's'}"
