"""in-toto Statement v1 payloads for DSSE signatures (`signer sign --format dsse`).

The pipeline sends the statement itself; officers see its subjects before they
approve; the one digest signed is over the statement's DSSE PAE, so an
approval binds exactly the statement that is signed. Parsing is strict:
duplicate keys, a wrong `_type`, no subjects, or a subject without a valid
sha256/sha384/sha512 digest are refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signer.algorithms import HASH_SIZES
from signer.dsse import pae
from signer.errors import InvalidArgumentError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "InTotoStatement",
    "Subject",
    "build_statement",
    "pae_digest",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://in-toto.io/attestation/release/v0.1"
MAX_PAYLOAD_BYTES = 64 * 1024
_HEX = re.compile(r"^[0-9a-f]+\Z")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Subject:
    name: str
    digest: Mapping[str, str]  # algorithm -> lowercase hex


@dataclass(frozen=True)
class InTotoStatement:
    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: Mapping[str, Any]

    @classmethod
    def parse(cls, payload: bytes, max_subjects: int = 10_000) -> InTotoStatement:
        def bad(why: str) -> InvalidArgumentError:
            return InvalidArgumentError(
                f"payload is not an in-toto Statement v1: {why}", reason="BAD_STATEMENT"
            )

        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            out = dict(pairs)
            if len(out) != len(pairs):
                raise bad("a JSON key appears twice")
            return out

        try:
            doc = json.loads(payload.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            if isinstance(e, InvalidArgumentError):
                raise
            raise bad(f"not UTF-8 JSON ({e})") from None
        except RecursionError:
            raise bad("JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if doc.get("_type") != STATEMENT_TYPE:
            raise bad(f"_type must be {STATEMENT_TYPE}")
        subjects = doc.get("subject")
        if not isinstance(subjects, list) or not subjects:
            raise bad("subject must be a non-empty list")
        if len(subjects) > max_subjects:
            raise bad(f"{len(subjects)} subjects; the limit is {max_subjects}")
        parsed = []
        for i, s in enumerate(subjects):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str):
                raise bad(f"subject {i} needs a name")
            name = s["name"]
            if not name or len(name) > 512 or _UNSAFE.search(name):
                raise bad(f"subject {i}: name must be 1-512 characters without control characters")
            digest = s.get("digest")
            if not isinstance(digest, dict) or not digest:
                raise bad(f"subject {i} ({name}) needs a digest")
            for alg, value in digest.items():
                if not isinstance(value, str) or not _HEX.match(value):
                    raise bad(f"subject {i} ({name}): digest {alg} must be lowercase hex")
                if alg in HASH_SIZES and len(value) != 2 * HASH_SIZES[alg]:
                    raise bad(f"subject {i} ({name}): a {alg} digest is {HASH_SIZES[alg]} bytes")
            if not any(alg in HASH_SIZES for alg in digest):
                raise bad(f"subject {i} ({name}) has no sha256, sha384 or sha512 digest")
            parsed.append(Subject(name, dict(digest)))
        predicate_type = doc.get("predicateType")
        if not isinstance(predicate_type, str) or not predicate_type:
            raise bad("predicateType must be a non-empty string")
        predicate = doc.get("predicate", {})
        if not isinstance(predicate, dict):
            raise bad("predicate must be an object")
        return cls(tuple(parsed), predicate_type, predicate)

    def covers(self, name: str | None, digests: Mapping[str, bytes]) -> Subject | None:
        """The subject whose digest equals one of `digests` (and named `name`, if given)."""
        for s in self.subjects:
            if name is not None and s.name != name:
                continue
            if any(s.digest.get(alg) == value.hex() for alg, value in digests.items()):
                return s
        return None


def build_statement(
    subjects: Sequence[tuple[str, str, bytes]], predicate: Mapping[str, Any]
) -> bytes:
    """A Statement v1 over (name, hash algorithm, digest) subjects, as compact sorted JSON."""
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {alg: d.hex()}} for n, alg, d in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": dict(predicate),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pae_digest(payload_type: str, payload: bytes, hash_name: str) -> bytes:
    """The digest a DSSE signature over (payload_type, payload) signs."""
    return hashlib.new(hash_name, pae(payload_type, payload)).digest()
