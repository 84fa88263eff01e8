"""`--format dsse`: a DSSE envelope over an in-toto Statement of the artifacts.

The request carries the statement itself (built by `carry` over the artifacts'
digests, the CI context as its predicate) and one digest: that of the
statement's DSSE PAE, so an approval binds exactly the statement signed. The
server refuses a payload that is not a strict Statement v1 (`signer.formats.intoto`)
or whose PAE is not the one digest; officers are shown its subjects, predicate
type and predicate, and whether the digest is its PAE, and may not approve
otherwise. The envelope is written only if the signed digest is that of its
payload, with an evidence bundle beside it (`signer verify --bundle`);
securesystemslib, or any DSSE verifier, checks the envelope with the public
key alone.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from signer.algorithms import HASH_SIZES
from signer.errors import InvalidArgumentError, TooLargeError, VerificationError
from signer.formats.base import (
    Carried,
    Evidence,
    OutputFormat,
    PayloadKey,
    Row,
    SignedRequest,
    Verdict,
    file_digests,
    write_json,
)
from signer.formats.bundle import Bundle, BundleFormat, verify_bundle_file
from signer.formats.intoto import (
    MAX_PAYLOAD_BYTES,
    PAYLOAD_TYPE,
    InTotoStatement,
    build_statement,
    pae_digest,
    predicate_json,
    unchecked,
)
from signer.model import Digest

__all__ = ["DsseFormat", "dsse_envelope"]

_MAX_ARTIFACT_NAME = 512


class DsseFormat(OutputFormat):
    name: ClassVar[str] = "dsse"
    summary: ClassVar[str] = "a DSSE envelope over an in-toto statement"
    suffix: ClassVar[str] = ".intoto.json"
    payload_type: ClassVar[str] = PAYLOAD_TYPE
    payload_description: ClassVar[str] = "an in-toto Statement v1"

    def carry(
        self,
        digests: Sequence[Digest],
        context: Mapping[str, str],
        hash_name: str,
        params: Mapping[str, str],
        algorithm: str = "",
    ) -> Carried:
        """A statement over the artifacts (the context its predicate) and its PAE digest."""
        payload = build_statement(
            [(d.artifact, d.algorithm, d.value) for d in digests],
            {"context": dict(context)} if context else {},
        )
        names = [d.artifact for d in digests]
        label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
        signed = Digest(
            hash_name,
            pae_digest(PAYLOAD_TYPE, payload, hash_name),
            f"in-toto statement: {label}"[:_MAX_ARTIFACT_NAME],
        )
        return Carried((signed,), PAYLOAD_TYPE, payload)

    def check_payload(
        self, payload: bytes, digests: Sequence[Digest], max_subjects: int, key: PayloadKey
    ) -> None:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise TooLargeError(
                f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                reason="PAYLOAD_TOO_LARGE",
            )
        InTotoStatement.parse(payload, max_subjects)
        if len(digests) != 1:
            raise InvalidArgumentError(
                "with a payload, send exactly one digest: of the payload's DSSE PAE",
                reason="PAYLOAD_DIGEST_MISMATCH",
            )
        d = digests[0]
        if pae_digest(PAYLOAD_TYPE, payload, d.algorithm) != d.value:
            raise InvalidArgumentError(
                f"the digest is not the {d.algorithm} of the payload's DSSE PAE",
                reason="PAYLOAD_DIGEST_MISMATCH",
            )

    def local_files(
        self, payload: bytes, digests: Sequence[Digest], paths: Sequence[Path]
    ) -> list[list[str]]:
        """For each path, the statement's subjects that are that file (each of their
        sha256, sha384 and sha512 digests the file's); InvalidArgumentError if such a
        subject also carries a digest of a kind a file cannot check (a gitCommit that is
        some other commit)."""
        statement = InTotoStatement.parse(payload)
        algorithms = {alg for s in statement.subjects for alg in s.digest}
        out = []
        for path in paths:
            own = file_digests(path, algorithms)
            found = statement.covering(own)
            for subject in found:
                if other := unchecked(subject):
                    raise InvalidArgumentError(
                        f"subject {subject.name} also has a {', '.join(other)} digest, which "
                        f"your file {path.name} cannot check"
                    )
            out.append([s.name for s in found])
        return out

    def signed_names(self, payload: bytes, digests: Sequence[Digest]) -> list[str]:
        return [s.name for s in InTotoStatement.parse(payload).subjects]

    def describe(
        self, payload_type: str, payload: bytes, digests: Sequence[Digest], algorithm: str
    ) -> dict[str, Any]:
        """The statement (or why it does not parse), and whether the digest is its PAE."""
        out: dict[str, Any] = {}
        try:
            st = InTotoStatement.parse(payload)
            out["statement"] = {
                "predicate_type": st.predicate_type,
                "subjects": [{"name": x.name, "digest": dict(x.digest)} for x in st.subjects],
                "predicate": dict(st.predicate),
            }
        except InvalidArgumentError as e:
            out["statement_error"] = str(e)
        out["payload_matches_digest"] = bool(
            len(digests) == 1
            and digests[0].algorithm in HASH_SIZES
            and pae_digest(payload_type, payload, digests[0].algorithm) == digests[0].value
        )
        return out

    def rows(self, described: Mapping[str, Any]) -> list[Row]:
        rows: list[Row] = []
        if "statement" in described:
            st = described["statement"]
            rows.append(("predicate type", st["predicate_type"]))
            rows += [
                (f"subject {i}", (x["name"], *(f"{a}:{v}" for a, v in x["digest"].items())))
                for i, x in enumerate(st["subjects"])
            ]
            rows.append(("predicate", tuple(predicate_json(st["predicate"]).splitlines())))
        else:
            rows.append(
                ("statement", f"UNREADABLE: {described['statement_error']}; do not approve")
            )
        rows.append(
            (
                "payload check",
                "the digest is the payload's DSSE PAE"
                if described["payload_matches_digest"]
                else "MISMATCH: the digest is NOT of this payload; do not approve",
            )
        )
        return rows

    def problems(self, described: Mapping[str, Any]) -> list[str]:
        problems = []
        if "statement" not in described:
            problems.append(f"the statement cannot be shown: {described['statement_error']}")
        if not described["payload_matches_digest"]:
            problems.append("the digest to sign is not that of the statement shown")
        return problems

    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        """The envelope, only if the signed digest is its payload's PAE, and its bundle."""
        if not signed.payload or len(signed.signatures) != 1:
            raise InvalidArgumentError(
                f"request {signed.request_id} has no DSSE payload; use --format raw or bundle"
            )
        d = signed.digests[0]
        if pae_digest(signed.payload_type, signed.payload, d.algorithm) != d.value:
            raise VerificationError(
                f"request {signed.request_id}: the signed digest is not that of its payload; "
                "not written"
            )
        envelope = dsse_envelope(
            signed.payload_type, signed.payload, signed.key_id, signed.signatures[0]
        )
        (path,) = targets
        write_json(path, envelope)
        bundle_path = path.with_name(path.name + BundleFormat.suffix)
        write_json(bundle_path, Bundle.of(signed, envelope).to_json())
        return [f"DSSE envelope written to {path} (bundle: {bundle_path})"]

    def verify(self, evidence: Evidence) -> Verdict:
        """The bundle beside the envelope: its statement must name the file as a subject."""
        return verify_bundle_file(evidence)


def dsse_envelope(
    payload_type: str, payload: bytes, key_id: str, signature: bytes
) -> dict[str, Any]:
    """A DSSE envelope (JSON form) with one signature."""
    return {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [{"keyid": key_id, "sig": base64.b64encode(signature).decode()}],
    }
