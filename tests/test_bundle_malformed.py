"""Evidence bundles that are not well-formed are refused, saying what is wrong.

Not JSON, another mediaType, a part missing or of the wrong type, nested too
deeply, an unknown algorithm: copies of the real bundle (tests/bundle_env.py),
through the CLI (exit 1, no traceback) or in process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from signer.errors import VerificationError
from signer.formats.bundle import MEDIA_TYPE, Bundle, verify_bundle
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
