"""DSSE envelopes and approval statements (docs/architecture.md §4, invariant 6).

An approval is the canonical JSON statement below, wrapped in a DSSE envelope
(payloadType `application/vnd.signer.approval.v1+json`) and signed with the
approver's own key (an `ApprovalKey` of any kind, `signer.approval`) over the
DSSE pre-authentication encoding. The server stores the envelope bytes
verbatim, so anyone can re-verify it later.

Statement fields: request_id, key_name, key_id, decision (approve|deny),
approver, issued_at, for a denial the reason, and exactly one of
- `digests`: the request's digests (algorithm, hex digest, artifact), in
  order; what approvals of up to 16 digests carry, so the officer's signed
  statement names each artifact;
- `manifest`: {count, sha256} of the canonical JSON list of those digests;
  what approvals of a batch (a release manifest of up to 10,000 digests)
  carry, so an approval stays small and binds every digest all the same.
Either form binds exactly one digest list; the server and the offline
verifiers accept both. An approval of a typed request (one that carries a
format's payload: its parameters and the artifacts' own digests, from which
the signed digests are derived) also names `payload`: {type, sha256} of that
payload, so the officer's statement binds the format, its parameters and the
artifact digests as well as what the token signs. Approvals of DSSE in-toto
payloads made before this field existed omit it; their signed digest (the
payload's PAE) binds the payload all the same.

Two rules of invariant 2 live here once, and the core, bundle verification and
the offline audit verifier all call them: `Binding.check` (a statement is this
officer's decision on exactly this request: id, key, key id, digests or their
manifest) and `distinct_approvers` (each person once and each approval key once).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from signer.approval.keys import ApprovalKey, ApprovalSigner
from signer.encoding import canonical_json, format_time, parse_time
from signer.errors import EnvelopeError, StatementMismatchError, VerificationError
from signer.model import INLINE_DIGESTS, Digest, Manifest, Request

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "PAYLOAD_TYPE",
    "Binding",
    "Envelope",
    "PayloadBinding",
    "Statement",
    "distinct_approvers",
    "key_id_of",
    "pae",
    "sign_payload",
    "sign_statement",
]

PAYLOAD_TYPE = "application/vnd.signer.approval.v1+json"
MAX_ENVELOPE_BYTES = 256 * 1024
DECISIONS = ("approve", "deny")
# Payload types an approval may leave unnamed: their one signed digest is the payload's
# own DSSE PAE, so the digest binds it (approvals made before statements named payloads).
_BOUND_BY_DIGEST = frozenset({"application/vnd.in-toto+json"})


@dataclass(frozen=True)
class PayloadBinding:
    """What an approval of a typed request names of its payload: type and SHA-256."""

    type: str
    sha256: str  # hex

    @classmethod
    def of(cls, payload_type: str, payload: bytes) -> PayloadBinding | None:
        if not payload_type and not payload:
            return None
        return cls(payload_type, hashlib.sha256(payload).hexdigest())

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "sha256": self.sha256}


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id_of(public_key: ApprovalKey) -> str:
    """The keyid an envelope signed by this key names: hex SHA-256 of its SPKI DER."""
    return public_key.key_id


@dataclass(frozen=True)
class Statement:
    """What an officer signs: a decision bound to one exact request."""

    request_id: str
    key_name: str
    key_id: str
    digests: tuple[Digest, ...]  # empty when `manifest` is set
    decision: str
    approver: str
    issued_at: dt.datetime
    reason: str = ""
    manifest: Manifest | None = None
    payload: PayloadBinding | None = None

    @staticmethod
    def binding(
        digests: tuple[Digest, ...], payload_type: str = "", payload: bytes = b""
    ) -> dict[str, Any]:
        """The `digests`/`manifest` (and `payload`) fields an approval of these digests
        (and this carried payload) carries."""
        bound = PayloadBinding.of(payload_type, payload)
        if len(digests) <= INLINE_DIGESTS:
            return {"digests": digests, "manifest": None, "payload": bound}
        return {"digests": (), "manifest": Manifest.of(digests), "payload": bound}

    def binds(self, digests: Sequence[Digest]) -> bool:
        """True if this statement names exactly these digests, in this order."""
        if self.manifest is not None:
            return self.manifest == Manifest.of(digests)
        return self.digests == tuple(digests)

    @classmethod
    def for_request(
        cls,
        request: Request,
        decision: str,
        approver: str,
        issued_at: dt.datetime,
        reason: str = "",
    ) -> Statement:
        return cls(
            request_id=request.id,
            key_name=request.key_name,
            key_id=request.key_id,
            decision=decision,
            approver=approver,
            issued_at=issued_at,
            reason=reason,
            **cls.binding(request.digests, request.payload_type, request.payload),
        )

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "request_id": self.request_id,
            "key_name": self.key_name,
            "key_id": self.key_id,
            "decision": self.decision,
            "approver": self.approver,
            "issued_at": format_time(self.issued_at),
        }
        if self.manifest is not None:
            d["manifest"] = self.manifest.as_dict()
        else:
            d["digests"] = [x.as_dict() for x in self.digests]
        if self.payload is not None:
            d["payload"] = self.payload.as_dict()
        if self.decision == "deny":
            d["reason"] = self.reason
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.as_dict())

    @classmethod
    def from_bytes(cls, payload: bytes) -> Statement:
        try:
            d = json.loads(payload, object_pairs_hook=_no_duplicates)
            if not isinstance(d, dict):
                raise EnvelopeError("approval statement must be a JSON object")
            expected = {
                "request_id",
                "key_name",
                "key_id",
                "manifest" if "manifest" in d else "digests",
                "decision",
                "approver",
                "issued_at",
            } | ({"reason"} if d.get("decision") == "deny" else set())
            expected |= {"payload"} & set(d)
            if set(d) != expected:
                raise EnvelopeError(
                    f"approval statement fields must be exactly {sorted(expected)}, got {sorted(d)}"
                )
            if d["decision"] not in DECISIONS:
                raise EnvelopeError(f"decision must be approve or deny, got {d['decision']!r}")
            st = cls(
                request_id=_str(d, "request_id"),
                key_name=_str(d, "key_name"),
                key_id=_str(d, "key_id"),
                digests=tuple(Digest.from_dict(x) for x in d.get("digests", ())),
                manifest=_manifest(d["manifest"]) if "manifest" in d else None,
                decision=d["decision"],
                approver=_str(d, "approver"),
                issued_at=parse_time(_str(d, "issued_at")),
                reason=_str(d, "reason") if "reason" in d else "",
                payload=_payload(d["payload"]) if "payload" in d else None,
            )
            canonical = st.to_bytes()
        except EnvelopeError:
            raise
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise EnvelopeError(f"approval statement is malformed: {e}") from None
        if canonical != payload:
            raise EnvelopeError("approval statement is not in canonical JSON form")
        return st


@dataclass(frozen=True)
class Binding:
    """The request an approval must name: its id, key name, key id, digests and payload."""

    request_id: str
    key_name: str
    key_id: str
    digests: Sequence[Digest]
    payload: PayloadBinding | None = None

    @classmethod
    def of(cls, request: Request) -> Binding:
        return cls(
            request.id,
            request.key_name,
            request.key_id,
            request.digests,
            PayloadBinding.of(request.payload_type, request.payload),
        )

    def _binds_payload(self, statement: Statement) -> bool:
        if statement.payload == self.payload:
            return True
        return (
            statement.payload is None
            and self.payload is not None
            and self.payload.type in _BOUND_BY_DIGEST
        )

    def check(self, statement: Statement, approver: str, decision: str) -> Statement:
        """`statement` if it is `approver`'s `decision` on exactly this request;
        otherwise `StatementMismatchError` naming the fields that differ.

        The one binding rule: the core before it records or counts a decision,
        bundle verification and the offline audit verifier all apply it.
        """
        mismatches = tuple(
            name
            for name, ok in (
                ("approver", statement.approver == approver),
                ("decision", statement.decision == decision),
                ("request_id", statement.request_id == self.request_id),
                ("key_name", statement.key_name == self.key_name),
                ("key_id", statement.key_id == self.key_id),
                ("digests", statement.binds(self.digests)),
                ("payload", self._binds_payload(statement)),
            )
            if not ok
        )
        if mismatches:
            raise StatementMismatchError(
                f"the signed statement does not match request {self.request_id}: "
                f"{', '.join(mismatches)} differ; re-fetch the request and sign again",
                mismatches,
            )
        return statement


def distinct_approvers(
    approvals: Iterable[tuple[str, ApprovalKey]],
) -> list[str]:
    """The approvers of valid approvals that count toward a quorum, in order: each person
    once, and each approval key once (a key registered under two names counts for the
    first; one key is one key id, whatever its kind). `approvals` are (approver, the
    public key their approval verified with).
    """
    people: list[str] = []
    keys: set[str] = set()
    for approver, public_key in approvals:
        key = public_key.key_id
        if approver in people or key in keys:
            continue
        people.append(approver)
        keys.add(key)
    return people


def _manifest(m: Any) -> Manifest:
    if not isinstance(m, dict) or set(m) != {"count", "sha256"}:
        raise EnvelopeError("approval statement manifest must be {count, sha256}")
    count, sha = m["count"], m["sha256"]
    if type(count) is not int or count < 1:
        raise EnvelopeError("approval statement manifest count must be a positive integer")
    if not isinstance(sha, str) or len(sha) != 64 or sha != sha.lower():
        raise EnvelopeError("approval statement manifest sha256 must be 64 lowercase hex digits")
    bytes.fromhex(sha)  # ValueError if not hex: reported as malformed
    return Manifest(count, sha)


def _payload(p: Any) -> PayloadBinding:
    if not isinstance(p, dict) or set(p) != {"type", "sha256"}:
        raise EnvelopeError("approval statement payload must be {type, sha256}")
    kind, sha = p["type"], p["sha256"]
    if not isinstance(kind, str) or not kind:
        raise EnvelopeError("approval statement payload type must be a non-empty string")
    if not isinstance(sha, str) or len(sha) != 64 or sha != sha.lower():
        raise EnvelopeError("approval statement payload sha256 must be 64 lowercase hex digits")
    bytes.fromhex(sha)
    return PayloadBinding(kind, sha)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key read differently to different parsers: refuse."""
    d = dict(pairs)
    if len(d) != len(pairs):
        raise EnvelopeError("a JSON object in the approval repeats a key")
    return d


def _str(d: dict[str, Any], key: str) -> str:
    v = d[key]
    if not isinstance(v, str):
        raise EnvelopeError(f"approval statement field {key} must be a string")
    return v


@dataclass(frozen=True)
class Envelope:
    """A parsed DSSE envelope with exactly one signature."""

    payload_type: str
    payload: bytes
    keyid: str
    sig: bytes
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes, payload_type: str = PAYLOAD_TYPE) -> Envelope:
        """An envelope of `payload_type` (an approval statement unless said otherwise)."""
        if not raw:
            raise EnvelopeError("the approval envelope is empty")
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise EnvelopeError(f"the approval envelope is over {MAX_ENVELOPE_BYTES} bytes")
        try:
            d = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
            sigs = d["signatures"]
            if not isinstance(sigs, list) or len(sigs) != 1:
                raise EnvelopeError("the approval envelope must carry exactly one signature")
            env = cls(
                payload_type=d["payloadType"],
                payload=base64.b64decode(d["payload"], validate=True),
                keyid=str(sigs[0].get("keyid", "")),
                sig=base64.b64decode(sigs[0]["sig"], validate=True),
                raw=raw,
            )
        except EnvelopeError:
            raise
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
            binascii.Error,
        ) as e:
            raise EnvelopeError(f"the approval envelope is not valid DSSE JSON: {e}") from None
        if env.payload_type != payload_type:
            raise EnvelopeError(f"payloadType must be {payload_type}, got {env.payload_type!r}")
        return env

    def verify(self, public_key: ApprovalKey) -> Statement:
        """Check the signature with `public_key`, then parse the statement."""
        return Statement.from_bytes(self.verified_payload(public_key))

    def verified_payload(self, public_key: ApprovalKey) -> bytes:
        """The payload, once the signature verifies with `public_key`."""
        try:
            public_key.verify(self.sig, pae(self.payload_type, self.payload))
        except VerificationError:
            raise EnvelopeError(
                "the envelope signature does not verify with the approver's registered key",
                reason="BAD_APPROVAL_SIGNATURE",
            ) from None
        return self.payload


def sign_statement(statement: Statement, signer: ApprovalSigner) -> bytes:
    """Make the DSSE envelope (JSON bytes) for a statement, signed by `signer`."""
    return sign_payload(PAYLOAD_TYPE, statement.to_bytes(), signer)


def sign_payload(payload_type: str, payload: bytes, signer: ApprovalSigner) -> bytes:
    """The DSSE envelope (canonical JSON bytes) of `payload`, signed by `signer`."""
    sig = signer.sign(pae(payload_type, payload))
    env = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": payload_type,
        "signatures": [
            {"keyid": key_id_of(signer.public_key()), "sig": base64.b64encode(sig).decode()}
        ],
    }
    return canonical_json(env)
