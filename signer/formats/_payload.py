"""What typed payloads share: the list of artifacts they name, checked strictly.

Each artifact is a JSON object with exactly the format's fields, among them a
`name` (the one displayable-text rule) unique in the list and a `digest`, the
file's own, in lowercase hex of the payload's hash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Set
from typing import Any, Protocol, TypeVar

from signer.algorithms import HASH_SIZES
from signer.errors import InvalidArgumentError, TooLargeError
from signer.model import Digest
from signer.text import DISPLAY_RULE, MAX_ARTIFACT, is_artifact_name

__all__ = ["artifact_items", "lower_hex", "strict_json"]


class _Encodes(Protocol):
    def to_bytes(self) -> bytes: ...


P = TypeVar("P", bound=_Encodes)


def strict_json(payload: bytes, limit: int, what: str, build: Callable[[Any], P]) -> P:
    """`build` of the JSON `payload`, which must be at most `limit` bytes and exactly the
    canonical form of what it builds; InvalidArgumentError (BAD_PAYLOAD) naming `what`
    ("SSH signature request") and what is wrong, or TooLargeError."""
    if len(payload) > limit:
        raise TooLargeError(
            f"payload is {len(payload)} bytes; the limit is {limit}", reason="PAYLOAD_TOO_LARGE"
        )
    try:
        parsed = build(json.loads(payload))
    except (InvalidArgumentError, TooLargeError):
        raise
    except (ValueError, RecursionError) as e:
        article = "an" if what[0] in "AEIOUS" else "a"  # "an SSH", "an OpenPGP"
        raise InvalidArgumentError(
            f"not {article} {what}: {str(e)[:200]}", reason="BAD_PAYLOAD"
        ) from None
    if parsed.to_bytes() != payload:
        raise InvalidArgumentError(
            f"the {what} is not in canonical JSON form", reason="BAD_PAYLOAD"
        )
    return parsed


def lower_hex(value: Any, size: int | None = None) -> bool:
    """Whether `value` is lowercase hex (of `size` characters)."""
    return (
        isinstance(value, str)
        and (size is None or len(value) == size)
        and len(value) % 2 == 0
        and all(c in "0123456789abcdef" for c in value)
    )


def artifact_items(
    items: Any, hash_name: str, limit: int, fields: Set[str]
) -> list[tuple[dict[str, Any], Digest]]:
    """Each artifact object of `items` with its (name, own digest); ValueError saying
    which one is wrong, TooLargeError past `limit`."""
    if not isinstance(items, list) or not items:
        raise ValueError("artifacts must be a non-empty list")
    if len(items) > limit:
        raise TooLargeError(
            f"{len(items)} artifacts; the limit is {limit}", reason="TOO_MANY_DIGESTS"
        )
    out: list[tuple[dict[str, Any], Digest]] = []
    names: set[str] = set()
    for i, a in enumerate(items):
        if not isinstance(a, dict) or set(a) != fields:
            raise ValueError(f"artifacts[{i}] must be exactly {{{', '.join(sorted(fields))}}}")
        name = a["name"]
        if not isinstance(name, str) or not is_artifact_name(name):
            raise ValueError(
                f"artifacts[{i}].name must be 1-{MAX_ARTIFACT} characters {DISPLAY_RULE}"
            )
        if name in names:
            raise ValueError(f"artifacts[{i}].name {name!r} is listed twice")
        names.add(name)
        if not lower_hex(a["digest"], 2 * HASH_SIZES[hash_name]):
            raise ValueError(f"artifacts[{i}].digest must be a lowercase hex {hash_name}")
        out.append((a, Digest(hash_name, bytes.fromhex(a["digest"]), name)))
    return out
