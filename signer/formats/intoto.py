"""in-toto Statement v1 payloads for DSSE signatures (`signer sign --format dsse`).

The pipeline sends the statement itself; officers see its subjects before they
approve; the one digest signed is over the statement's DSSE PAE, so an
approval binds exactly the statement that is signed. Parsing is strict, so that
what officers are shown is the whole statement (docs/architecture.md §14): duplicate keys, a
wrong `_type`, no subjects, a subject without a valid sha256/sha384/sha512
digest, any field officers are not shown (only `_type`, `subject`,
`predicateType` and `predicate` at the top, `name` and `digest` in a subject),
a digest-set key or predicate type outside its syntax, any string anywhere
in the statement (keys of the predicate included) that breaks the displayable
text rule (`signer.text`), and any number officers would be shown otherwise
than sent (NaN and Infinity, a float with no exact double value such as
1.00000000000000001 or 1e400, an integer past 2^53-1) are refused.
"""

from __future__ import annotations

import decimal
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from signer.algorithms import HASH_SIZES
from signer.dsse import pae
from signer.errors import InvalidArgumentError
from signer.text import DISPLAY_RULE, MAX_ARTIFACT, is_artifact_name, is_displayable, shown

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "InTotoStatement",
    "Subject",
    "build_statement",
    "pae_digest",
    "predicate_json",
    "unchecked",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://in-toto.io/attestation/release/v0.1"
MAX_PAYLOAD_BYTES = 64 * 1024
_HEX = re.compile(r"^[0-9a-f]+\Z")
# in-toto digest-set keys (sha256, gitCommit, dirHash, ...) and predicate types (URIs).
_DIGEST_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_PREDICATE_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[\x21-\x7e]{1,1024}\Z")
_MAX_EXACT_INT = 2**53 - 1  # every JSON reader holds integers up to this exactly
_TOP_FIELDS = frozenset({"_type", "subject", "predicateType", "predicate"})
_SUBJECT_FIELDS = frozenset({"name", "digest"})


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

        def exact_float(text: str) -> float:
            value = float(text)
            # Shown re-serialised: the number shown must be the number sent.
            try:
                exact = math.isfinite(value) and decimal.Decimal(repr(value)) == decimal.Decimal(
                    text
                )
            except decimal.InvalidOperation:  # an exponent past what Decimal compares
                exact = False
            if not exact:
                raise bad(f"the number {_quoted(text[:40])} has no exact double value")
            return value

        def exact_int(text: str) -> int:
            if len(text) > 17 or abs(int(text)) > _MAX_EXACT_INT:
                raise bad(f"the integer {_quoted(text[:40])} is past 2^53-1 (I-JSON)")
            return int(text)

        def no_constant(text: str) -> Any:
            raise bad(f"{text} is not JSON")

        try:
            doc = json.loads(
                payload.decode("utf-8"),
                object_pairs_hook=no_duplicates,
                parse_float=exact_float,
                parse_int=exact_int,
                parse_constant=no_constant,
            )
        except (UnicodeDecodeError, ValueError) as e:
            if isinstance(e, InvalidArgumentError):
                raise
            raise bad(f"not UTF-8 JSON ({e})") from None
        except RecursionError:
            raise bad("JSON nested too deeply") from None
        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        extra = sorted(set(doc) - _TOP_FIELDS)
        if extra:
            raise bad(
                f"unknown field {_quoted(extra[0])}; a statement has only {_fields(_TOP_FIELDS)}"
            )
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
            extra = sorted(set(s) - _SUBJECT_FIELDS)
            if extra:
                raise bad(
                    f"subject {i}: unknown field {_quoted(extra[0])}; a subject has only "
                    f"{_fields(_SUBJECT_FIELDS)}"
                )
            name = s["name"]
            if not is_artifact_name(name):
                raise bad(f"subject {i}: name must be 1-{MAX_ARTIFACT} characters {DISPLAY_RULE}")
            digest = s.get("digest")
            if not isinstance(digest, dict) or not digest:
                raise bad(f"subject {i} ({name}) needs a digest")
            for alg, value in digest.items():
                if not _DIGEST_KEY.match(alg):
                    raise bad(
                        f"subject {i} ({name}): digest algorithm {_quoted(alg)} must be 1-64 "
                        "of A-Z a-z 0-9 _ . - (e.g. sha256)"
                    )
                if not isinstance(value, str) or not _HEX.match(value):
                    raise bad(f"subject {i} ({name}): digest {alg} must be lowercase hex")
                if alg in HASH_SIZES and len(value) != 2 * HASH_SIZES[alg]:
                    raise bad(f"subject {i} ({name}): a {alg} digest is {HASH_SIZES[alg]} bytes")
            if not any(alg in HASH_SIZES for alg in digest):
                raise bad(f"subject {i} ({name}) has no sha256, sha384 or sha512 digest")
            parsed.append(Subject(name, dict(digest)))
        predicate_type = doc.get("predicateType")
        if not isinstance(predicate_type, str) or not _PREDICATE_TYPE.match(predicate_type):
            raise bad("predicateType must be a URI of printable ASCII, e.g. " + PREDICATE_TYPE)
        predicate = doc.get("predicate", {})
        if not isinstance(predicate, dict):
            raise bad("predicate must be an object")
        where = _undisplayable(predicate, "predicate")
        if where:
            raise bad(f"{where} must be {DISPLAY_RULE}")
        return cls(tuple(parsed), predicate_type, predicate)

    def covers(self, name: str | None, digests: Mapping[str, bytes]) -> Subject | None:
        """The first subject (named `name`, if given) that is the file with these
        `digests` (see `covering`)."""
        return next((s for s in self.covering(digests) if name in (None, s.name)), None)

    def covering(self, digests: Mapping[str, bytes]) -> list[Subject]:
        """The subjects that are the file with these `digests`: each of its sha256, sha384
        and sha512 digests is the file's. One that matches on one hash and not on another
        is not the file; digests of other kinds (gitCommit, ...) cannot be checked here and
        are left to `unchecked`."""
        found = []
        for s in self.subjects:
            known = {alg: v for alg, v in s.digest.items() if alg in HASH_SIZES}
            if known and all(
                alg in digests and digests[alg].hex() == v for alg, v in known.items()
            ):
                found.append(s)
        return found


def unchecked(subject: Subject) -> list[str]:
    """The kinds of digest of `subject` that a file's own hashes cannot check."""
    return sorted(alg for alg in subject.digest if alg not in HASH_SIZES)


def _undisplayable(value: Any, path: str) -> str:
    """Where the first string (key or value) under `value` breaking the rule is, or ""."""
    if isinstance(value, str):
        return "" if is_displayable(value) else f"the string at {path}"
    if isinstance(value, dict):
        for k, v in value.items():
            if not is_displayable(k):
                return f"a key in {path}"
            found = _undisplayable(v, f"{path}.{k}")
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _undisplayable(v, f"{path}[{i}]")
            if found:
                return found
    return ""


def _quoted(value: str) -> str:
    """A field name from the payload, safe to echo: escaped and cut short."""
    return repr(shown(value[:64]) + ("..." if len(value) > 64 else ""))


def _fields(names: frozenset[str]) -> str:
    return ", ".join(sorted(names))


def predicate_json(predicate: Mapping[str, Any]) -> str:
    """The predicate as officers are shown it: sorted, indented JSON, nothing left out."""
    return json.dumps(predicate, sort_keys=True, indent=2, ensure_ascii=False)


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
