"""What an output format is: the one interface every `signer sign --format` kind implements.

A format says, for its kind of output:

(a) what a request carries (`carry`): the digests sent and, for a format whose
    signed structure is built from a payload, its payload type and payload;
(b) the server's check that a carried payload is what the format says
    (`check_payload`), found by payload type (`signer.formats.registry`);
(c) what officers are shown of that payload (`describe`, `rows`, `problems`);
    an approval is refused while `problems` names anything;
(d) where its file(s) go (`suffix`, `per_artifact`, `out_problem`, `targets`)
    and how they are assembled and written (`write`) from a `SignedRequest`
    whose signatures and audit proof the client has already verified;
(e) how `signer verify` checks them, offline, against what the verifier pins
    (`verify`).

Nothing here talks to a server, a terminal or a token: the core and the
offline verifiers load these modules (tests/test_imports.py).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from signer.algorithms import HASH_SIZES
from signer.audit.proofs import SignedProof
from signer.errors import ConfigError, InvalidArgumentError
from signer.model import Digest

__all__ = [
    "Carried",
    "Evidence",
    "OutputFormat",
    "PayloadKey",
    "Row",
    "SignedRequest",
    "Verdict",
    "file_digests",
    "write_json",
]

# A row officers are shown: a label and one line, or several shown one under another.
Row = tuple[str, str | tuple[str, ...]]


@dataclass(frozen=True)
class Carried:
    """What a request for a format sends: its digests and, if any, its payload."""

    digests: tuple[Digest, ...]
    payload_type: str = ""
    payload: bytes = b""


@dataclass(frozen=True)
class PayloadKey:
    """What a payload check knows of the signing key, and at the server of the time."""

    algorithm: str
    public_key_pem: str = ""
    openpgp_created: int | None = None  # the key's stored OpenPGP creation time (server)
    now: int | None = None  # the server's clock, in seconds; None offline


@dataclass(frozen=True)
class SignedRequest:
    """A SIGNED request whose signatures and audit proof the client has verified."""

    request_id: str
    key_name: str
    key_id: str
    algorithm: str
    public_key_pem: str
    digests: tuple[Digest, ...]
    signatures: tuple[bytes, ...]
    threshold: int
    approvals: tuple[bytes, ...]  # the approving officers' DSSE envelopes, verbatim
    proof: SignedProof
    payload_type: str = ""
    payload: bytes = b""
    files: tuple[Path, ...] = ()  # the --file paths, in request order, if they were named
    # The policy versions from 1 to the one it was signed under (`policy.adopted` details).
    policy_chain: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Evidence:
    """What `signer verify` was given: the output file, the artifact, and what is pinned."""

    path: Path  # the signature, or the bundle
    file: Path | None = None
    digest: Digest | None = None  # instead of `file`, where the format allows it
    public_key: Path | None = None  # the signing key's PEM
    trust: Path | None = None  # a trust file (signer.formats.bundle.Trust)
    scheme: str = "auto"
    namespace: str = ""  # an SSH signature's namespace, which the verifier demands
    chain: Path | None = None  # a newer bundle, whose policy chain tells of revocations since


@dataclass(frozen=True)
class Verdict:
    """A valid output: the line people read and, where the format has one, its JSON form."""

    text: str
    fields: Mapping[str, Any] | None = None


class OutputFormat(ABC):
    """One kind of output of `signer sign --format NAME`.

    The payload methods' defaults are those of a format that carries no
    payload; a format with a `payload_type` overrides them.
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # for `--format`'s help, e.g. "raw signatures"
    suffix: ClassVar[str]  # appended to the artifact's name when no --out is given
    per_artifact: ClassVar[bool] = False  # one file per signed digest, not one per request
    payload_type: ClassVar[str] = ""  # the DSSE payload type a request carries ("" for none)
    payload_description: ClassVar[str] = ""  # what that payload is, e.g. "an in-toto Statement v1"

    key_bound: ClassVar[bool] = False  # whether `carry` needs the signing key's algorithm
    default_hash: ClassVar[str] = ""  # the files' hash unless --hash says; "" = the key's own
    hashes_files: ClassVar[bool] = False  # whether `carry_files`, not `carry`, makes a request

    # (a) What the request carries.
    def carry(
        self,
        digests: Sequence[Digest],
        context: Mapping[str, str],
        hash_name: str,
        params: Mapping[str, str],
        algorithm: str = "",
    ) -> Carried:
        """What to send for the artifacts' `digests`: by default the digests themselves.

        `params` are the format's own options (`--namespace`...); `algorithm` is the
        signing key's, given when `key_bound`."""
        return Carried(tuple(digests))

    def carry_files(
        self, files: Sequence[Path], params: Mapping[str, str], key: PayloadKey, hash_name: str
    ) -> Carried:
        """For a format whose signed digests the requester computes over each file's bytes
        (`hashes_files`): what to send for `files`, signed by `key` at `key.now`."""
        raise InvalidArgumentError(f"the {self.name} format signs the files' digests")

    # (b) The server's check of a carried payload.
    def check_payload(
        self, payload: bytes, digests: Sequence[Digest], max_subjects: int, key: PayloadKey
    ) -> None:
        """Raise InvalidArgumentError (or TooLargeError) unless `payload` is this format's
        and the digests are those `key` signs for it. Offline (`key.now` None) the checks
        that need the server's clock or stored key facts are left out."""
        raise InvalidArgumentError(
            f"the {self.name} format carries no payload", reason="BAD_PAYLOAD_TYPE"
        )

    def check_file(self, payload: bytes, digests: Sequence[Digest], data: bytes, name: str) -> None:
        """Offline, for `signer verify --bundle`: raise VerificationError unless the digest
        signed for artifact `name` is the one its file `data` gives. By default nothing: a
        format whose signed digests are derived from the artifacts' own needs no more."""
        return

    def artifacts(self, payload: bytes) -> tuple[Digest, ...] | None:
        """The files' own digests a typed request's payload lists (what `signer status
        --file` checks the files against), or None if its payload does not list them."""
        return None

    def local_files(
        self, payload: bytes, digests: Sequence[Digest], paths: Sequence[Path]
    ) -> list[list[str]]:
        """For an officer checking a request against their own copies of the files: for
        each path, the names of the artifacts whose digest is that file's (the payload's
        list of files, else the digests to sign), in the request's order; [] for a file
        the request does not sign. The payload is read once, each file once."""
        listed = (self.artifacts(payload) if payload else tuple(digests)) or ()
        by_digest: dict[tuple[str, bytes], list[str]] = {}
        for d in listed:
            by_digest.setdefault((d.algorithm, d.value), []).append(d.artifact)
        algorithms = {d.algorithm for d in listed}
        out = []
        for path in paths:
            own = file_digests(path, algorithms)
            found = [n for alg, v in own.items() for n in by_digest.get((alg, v), [])]
            out.append(list(dict.fromkeys(found)))
        return out

    def signed_names(self, payload: bytes, digests: Sequence[Digest]) -> list[str]:
        """The names of the artifacts the request signs, in order, a name given twice
        listed twice (what an officer's own files must cover, each once)."""
        listed = self.artifacts(payload) if payload else tuple(digests)
        return [d.artifact for d in listed or ()]

    # (c) What officers are shown of a payload.
    def describe(
        self, payload_type: str, payload: bytes, digests: Sequence[Digest], algorithm: str
    ) -> dict[str, Any]:
        """The JSON fields that show the payload (beside payload_type and payload)."""
        return {}

    def rows(self, described: Mapping[str, Any]) -> list[Row]:
        """The table rows that show the payload, from `describe`'s fields."""
        return []

    def problems(self, described: Mapping[str, Any]) -> list[str]:
        """Why an officer must not approve this payload, from `describe`'s fields."""
        return []

    # (d) Where the files go and how they are written.
    def out_problem(self, out: Path | None, files: int, digests: int, wait: bool) -> str | None:
        """Why `--out` and the `--file`s given cannot name where the output goes, or None."""
        if self.per_artifact:
            if out is not None and digests != 1:
                return "--out needs exactly one --file or --digest"
            if wait and out is None and files != digests:
                return "with --digest, give --out (or use --no-wait)"
            return None
        if wait and out is None and not files:
            return f"with --format {self.name} and only --digest, give --out"
        return None

    def targets(
        self, out: Path | None, files: Sequence[Path], payload: bytes = b""
    ) -> tuple[Path, ...]:
        """The paths written: `--out`, else beside the (first) artifact with `suffix`
        (`payload`, the request's, for a format whose suffix it decides)."""
        if out is not None:
            return (out,)
        named = files if self.per_artifact else files[:1]
        if not named:
            raise InvalidArgumentError("no --out and no --file to write beside")
        return tuple(f.with_name(f.name + self.suffix) for f in named)

    @abstractmethod
    def write(self, signed: SignedRequest, targets: Sequence[Path]) -> list[str]:
        """Assemble and write the output at `targets`; return what to tell the user."""

    # (e) Offline verification.
    @abstractmethod
    def verify(self, evidence: Evidence) -> Verdict:
        """Check the output offline; raise VerificationError (or ConfigError) if it fails."""


def file_digests(path: Path, hash_names: Iterable[str]) -> dict[str, bytes]:
    """The file's digest with each of `hash_names`, read once; ConfigError if unreadable."""
    hashes = {name: hashlib.new(name) for name in hash_names if name in HASH_SIZES}
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                for h in hashes.values():
                    h.update(chunk)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return {name: h.digest() for name, h in hashes.items()}


def write_json(path: Path, value: Any) -> None:
    """A JSON output file: indented, keys sorted, one trailing newline."""
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
