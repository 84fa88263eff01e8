"""Evidence bundles that are not well-formed are refused, saying what is wrong.

Not JSON, another mediaType, a part missing or of the wrong type, nested too
deeply, an unknown algorithm: copies of the real bundle (tests/bundle_env.py),
through the CLI (exit 1, no traceback) or in process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from signer.audit.entry import AuditEntry
from signer.core.policy import Revocation
from signer.encoding import canonical_json
from signer.errors import ConfigError, VerificationError
from signer.formats.bundle import MEDIA_TYPE, Bundle, verify_bundle
from signer.formats.trust import Trust, check_signed_under, pins_for
from tests.bundle_env import Signed, cli_rejects, edited, rejects


def test_not_json_cli(signed: Signed) -> None:
    """A truncated bundle file makes `signer verify` exit 1: it is not JSON."""
    cli_rejects(signed, "not-json.json", signed.bundle_path.read_text()[:-20], "is not JSON")


def test_wrong_media_type_cli(signed: Signed) -> None:
    """A bundle of another mediaType is refused by `signer verify`: not a bundle."""

    def edit(d: dict[str, Any]) -> None:
        d["mediaType"] = "application/vnd.signer.bundle.v2+json"

    cli_rejects(
        signed,
        "media-type.json",
        edited(signed, edit),
        f"not a bundle: mediaType is not {MEDIA_TYPE}",
    )


@pytest.mark.parametrize(
    ("what", "edit", "match"),
    [
        ("no mediaType", lambda d: d.pop("mediaType"), "not a bundle"),
        ("a JSON list", None, "not a bundle"),
        ("no key", lambda d: d.pop("key"), "malformed bundle"),
        ("no audit", lambda d: d.pop("audit"), "malformed bundle"),
        ("signature not base64", lambda d: d.update(signatures=["*!*"]), "malformed bundle"),
        ("digest not hex", lambda d: d["digests"][0].update(digest="zz"), "malformed bundle"),
        ("digests not a list", lambda d: d.update(digests=7), "malformed bundle"),
        ("threshold not a number", lambda d: d.update(threshold="two"), "malformed bundle"),
        ("dsse not an object", lambda d: d.update(dsse="x"), "malformed bundle"),
        ("audit entry not base64", lambda d: d["audit"].update(entry="*"), "malformed audit"),
        ("audit index not a number", lambda d: d["audit"].update(index="x"), "malformed audit"),
        ("digest not an object", lambda d: d.update(digests=["x"]), "malformed bundle"),
        ("digest algorithm a list", lambda d: d["digests"][0].update(algorithm=[1]), "malformed"),
        ("digest algorithm md5", lambda d: d["digests"][0].update(algorithm="md5"), "not one of"),
        ("digest too short", lambda d: d["digests"][0].update(digest="ab" * 20), "32 bytes"),
        ("artifact not a string", lambda d: d["digests"][0].update(artifact=7), "artifact"),
    ],
)
def test_malformed_bundle(
    signed: Signed, what: str, edit: Callable[[dict[str, Any]], Any] | None, match: str
) -> None:
    """A bundle missing a part, with a field of the wrong type or form, or a JSON list,
    is refused, saying what is wrong."""
    doc: Any = [signed.doc] if edit is None else edited(signed, edit)
    with pytest.raises(VerificationError, match=match):
        verify_bundle(Bundle.from_json(doc), signed.trust, signed.artifact)


def test_deeply_nested_bundle_cli(signed: Signed) -> None:
    """A bundle nested 100,000 deep is refused as too nested, with no traceback."""
    cli_rejects(signed, "deep.json", "[" * 100_000 + "]" * 100_000, "nested")


def test_unknown_algorithm(signed: Signed) -> None:
    """A bundle naming a signing algorithm the verifier does not know is refused."""

    def edit(d: dict[str, Any]) -> None:
        d["key"]["algorithm"] = "ed25519"

    rejects(signed, edited(signed, edit), "unknown signing algorithm 'ed25519'")


def _pinned(signed: Signed) -> Trust:
    """The trust of `signed` pinning its policy version 1 alone."""
    first = signed.doc["policy"]["versions"][0]["sha256"]
    return dataclasses.replace(
        signed.trust, public_key=None, approvers={}, threshold=0, policy_sha256=first
    )


def _last(d: dict[str, Any]) -> dict[str, Any]:
    last: dict[str, Any] = d["policy"]["versions"][-1]
    return last


@pytest.mark.parametrize(
    ("what", "edit", "match"),
    [
        ("policy not an object", lambda d: d.update(policy=7), "malformed bundle"),
        ("policy with more", lambda d: d["policy"].update(more=1), "malformed bundle"),
        ("versions not a list", lambda d: d["policy"].update(versions={}), "malformed bundle"),
        ("a version not an object", lambda d: d["policy"].update(versions=["x"]), "malformed"),
        ("no versions", lambda d: d["policy"].update(versions=[]), "carries no policy chain"),
        ("no document", lambda d: _last(d).pop("document"), "not a policy version"),
        ("number a string", lambda d: _last(d).update(version="1"), "not a policy version"),
        ("approval not base64", lambda d: _last(d).update(approvals=["*"]), "not a policy"),
        ("document edited", lambda d: _last(d)["document"].update(x=1), "policy hash"),
        ("sha256 a list", lambda d: _last(d).update(sha256=[1]), "policy hash"),
        ("a float in it", lambda d: _last(d)["document"].update(x=1.5), "canonical JSON"),
        ("a lone surrogate", lambda d: _last(d)["document"].update(x="\ud800"), "canonical"),
    ],
)
def test_malformed_policy_chain(
    signed: Signed, what: str, edit: Callable[[dict[str, Any]], Any], match: str
) -> None:
    """A bundle's policy chain of the wrong form is refused, saying what is wrong, by a
    verifier who pinned a policy version (never an exception of another kind)."""
    with pytest.raises(VerificationError, match=match):
        verify_bundle(Bundle.from_json(edited(signed, edit)), _pinned(signed), signed.artifact)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('policy = "ab"\n', "SHA-256 of a policy version"),
        ("policy = 7\n", "SHA-256 of a policy version"),
        (f'policy = "{"a" * 64}"\nthreshold = 2\n', "pins nothing else"),
    ],
    ids=["short", "not a string", "and a threshold"],
)
def test_a_bad_policy_pin_is_a_config_error(
    signed: Signed, tmp_path: Path, text: str, match: str
) -> None:
    """A trust file's policy pin that is not a version hash, or beside other pins, is
    refused naming it."""
    path = tmp_path / "trust.toml"
    verifier = signed.r.env.profile("ci").audit_verifier
    path.write_text(f'{text}audit_verifier = "{verifier}"\n')
    with pytest.raises(ConfigError, match=match):
        Trust.load(path)


def test_a_signature_approved_after_its_keys_revocation_fails_whatever_the_log_says(
    signed: Signed,
) -> None:
    """A revocation from a time after the log entry (as a server that backdates its
    entries would make it look) still fails the bundle when an officer approved after
    that time: their statements carry their own clock's time."""
    bundle = Bundle.from_json(signed.doc)
    entry = AuditEntry.from_bytes(bundle.audit.entry)
    pins = pins_for(bundle, _pinned(signed), None)
    at = entry.time + dt.timedelta(microseconds=1)
    revoked = Revocation(bundle.key_id, at, "backdated")
    pins = dataclasses.replace(pins, revoked={bundle.key_id: revoked})
    check_signed_under(pins, bundle, at - dt.timedelta(seconds=1))  # all before: valid
    with pytest.raises(VerificationError, match="an officer approved this signature after"):
        check_signed_under(pins, bundle, at)
    with pytest.raises(VerificationError, match="this signature was logged after"):
        later = Revocation(bundle.key_id, entry.time, "at the entry's time")
        check_signed_under(dataclasses.replace(pins, revoked={bundle.key_id: later}), bundle, at)


def test_a_newer_chain_of_another_history_is_refused(signed: Signed) -> None:
    """`--chain` must begin with the bundle's own chain: one that holds the pinned version
    after other versions is another history, refused."""
    first = signed.doc["policy"]["versions"][0]
    other = {**first, "document": {"x": 1}}
    other["sha256"] = hashlib.sha256(canonical_json(other["document"])).hexdigest()

    def edit(d: dict[str, Any]) -> None:
        d["policy"]["versions"].insert(0, other)

    newer = Bundle.from_json(edited(signed, edit))
    with pytest.raises(VerificationError, match="two histories"):
        verify_bundle(Bundle.from_json(signed.doc), _pinned(signed), signed.artifact, newer)
    same = Bundle.from_json(signed.doc)  # the same chain is a newer chain of no news
    verify_bundle(Bundle.from_json(signed.doc), _pinned(signed), signed.artifact, same)
