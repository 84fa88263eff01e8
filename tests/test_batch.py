"""Batches: one request carrying a release manifest of up to 10,000 digests.

Officers approve it once, with the `approver` CLI as they would: `approver show`
gives the count, the manifest hash (computed by the client from the digests it
received) and the digests a page at a time; the approval statement binds the
manifest (count and SHA-256 of the canonical digest list), so the envelope stays
small. The server signs every digest in one token loop; each signature verifies;
the audit log verifies offline (binding checked against the logged digests); and a
bundle proves one artifact of the batch offline. An approval naming another
manifest, count or order is refused; listing the digests instead is accepted.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from signer import model
from signer.dsse import Statement
from signer.encoding import canonical_json
from signer.errors import EnvelopeError
from signer.model import Digest, Manifest
from signer.v1 import signing_pb2, types_pb2
from signer.verify import verify_digest
from testbed.clients import Clients, sha256_digest
from testbed.commands import APPROVER, SIGNER, run
from testbed.process import Running
from tests.harness import audit_events, rpc_error

N = 10_000
SIGNED = types_pb2.REQUEST_STATE_SIGNED


def _content(i: int) -> bytes:
    return f"package {i}\n".encode()


def _approver(r: Running, who: str, *args: str, check: bool = True) -> str:
    p = run([*APPROVER, *args, "--profile", str(r.env.profile_path(who))], check=check)
    return p.stdout if check else f"{p.returncode}\n{p.stderr}"


def _manifest(digests: list[types_pb2.Digest]) -> Manifest:
    return Manifest.of([Digest("sha256", d.value, d.artifact_name) for d in digests])


def test_a_release_manifest_of_10000_digests(fresh: Running, tmp_path: Path) -> None:
    """10,000 digests are shown a page at a time, approved by manifest hash and signed;
    the log verifies offline and the bundle proves one artifact, and no other file."""
    digests = [sha256_digest(_content(i), f"pkg-{i}.tar.gz") for i in range(N)]
    request = fresh.clients.create(digests=digests)
    assert len(request.digests) == N
    expected = _manifest(digests)

    shown = json.loads(_approver(fresh, "alice", "show", request.id, "--json"))
    assert (shown["digest_count"], shown["manifest_sha256"]) == (N, expected.sha256)
    table = _approver(fresh, "alice", "show", request.id)
    assert expected.sha256 in table and "your approval signs this hash" in table
    assert "page" in table and "1 of 200: digests 0..49 of 10000" in table
    assert "pkg-49.tar.gz" in table and "pkg-50.tar.gz" not in table
    last = _approver(fresh, "alice", "show", request.id, "--page", "200")
    assert "pkg-9999.tar.gz" in last and "digest 9999" in last
    refused = _approver(fresh, "alice", "show", request.id, "--page", "201", check=False)
    assert refused.startswith("2\n") and "--page must be between 1 and 200" in refused

    _approver(fresh, "alice", "approve", request.id, "--yes")
    _approver(fresh, "bob", "approve", request.id, "--yes")
    final = fresh.clients.get(request.id)
    assert final.state == SIGNED and len(final.signatures) == N

    info = fresh.clients.signing().GetPublicKey(
        signing_pb2.GetPublicKeyRequest(key_name="release"), timeout=30
    )
    public = serialization.load_pem_public_key(info.key.public_key_pem.encode())
    for d, sig in zip(final.digests, final.signatures, strict=True):
        verify_digest(public, "sha256", d.value, sig)

    approvals = [
        e
        for e in audit_events(fresh.env)
        if e["request_id"] == request.id and e["event"] == "request.approved"
    ]
    assert [e["actor"] for e in approvals] == ["alice", "bob"]
    for e in approvals:
        envelope = str(e["details"]["envelope"])
        assert len(envelope) < 2048  # the manifest, not 10,000 digests
        statement = json.loads(base64.b64decode(json.loads(envelope)["payload"]))
        assert statement["manifest"] == expected.as_dict() and "digests" not in statement

    auditor = str(fresh.env.profile_path("auditor"))
    log = tmp_path / "audit"
    run([*SIGNER, "audit", "fetch", "--profile", auditor, "--out", str(log)], timeout=120)
    verifier = fresh.env.profile("ci").audit_verifier
    ok = run([*SIGNER, "audit", "verify", str(log), "--verifier", str(verifier)], timeout=120)
    assert "OK" in ok.stdout

    ci = str(fresh.env.profile_path("ci"))
    bundle = tmp_path / "release.bundle.json"
    run(
        [*SIGNER, "status", request.id, "--format", "bundle", "--out", str(bundle), "--profile", ci]
    )
    artifact = tmp_path / "pkg-1234.tar.gz"
    artifact.write_bytes(_content(1234))
    trust = fresh.env.root / "trust" / "release.toml"
    check = [*SIGNER, "verify", "--bundle", str(bundle), "--file", str(artifact), "--trust"]
    verified = run([*check, str(trust)])
    assert "bundle OK: pkg-1234.tar.gz" in verified.stdout
    artifact.write_bytes(b"not in the release\n")
    outside = run(
        [
            *SIGNER,
            "verify",
            "--bundle",
            str(bundle),
            "--file",
            str(artifact),
            "--trust",
            str(trust),
        ],
        check=False,
    )
    assert outside.returncode == 1


def _batch(c: Clients, n: int = 20) -> tuple[types_pb2.SigningRequest, list[types_pb2.Digest]]:
    digests = [sha256_digest(_content(i) + b"x", f"lib-{i}.so") for i in range(n)]
    return c.create(digests=digests), digests


@pytest.mark.parametrize(
    "change",
    ["other digest", "other count", "other order", "truncated list"],
)
def test_an_approval_of_another_manifest_is_refused(clients: Clients, change: str) -> None:
    """An approval of another digest, count or order, or of a shortened list, is
    STATEMENT_MISMATCH; the request stays pending."""
    request, digests = _batch(clients)
    as_model = [Digest("sha256", d.value, d.artifact_name) for d in digests]
    if change == "other digest":
        as_model[7] = Digest("sha256", bytes(32), as_model[7].artifact)
        fields = {"manifest": Manifest.of(as_model), "digests": ()}
    elif change == "other count":
        fields = {"manifest": Manifest(len(as_model) + 1, Manifest.of(as_model).sha256)}
        fields["digests"] = ()
    elif change == "other order":
        fields = {"manifest": Manifest.of(as_model[::-1]), "digests": ()}
    else:
        fields = {"digests": tuple(as_model[:-1]), "manifest": None}
    e = rpc_error(lambda: clients.approve("alice", request, **fields))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.reason == "STATEMENT_MISMATCH" and "digests differ" in e.message
    assert clients.get(request.id).state == types_pb2.REQUEST_STATE_PENDING


def test_listing_every_digest_instead_of_the_manifest_binds_too(clients: Clients) -> None:
    """Both forms name exactly one digest list: an officer's tool may send either."""
    request, digests = _batch(clients)
    listed = tuple(Digest("sha256", d.value, d.artifact_name) for d in digests)
    clients.approve("alice", request, digests=listed, manifest=None)
    done = clients.approve("bob", request)  # the manifest form
    assert done.state == SIGNED and len(done.signatures) == len(digests)


@pytest.mark.parametrize(
    ("manifest", "phrase"),
    [
        ({"count": True, "sha256": "00" * 32}, "count must be a positive integer"),
        ({"count": 0, "sha256": "00" * 32}, "count must be a positive integer"),
        ({"count": 20, "sha256": "AB" * 32}, "64 lowercase hex digits"),
        ({"count": 20, "sha256": "zz" * 32}, "malformed"),
        ({"count": 20, "sha256": "00" * 32, "extra": 1}, "must be {count, sha256}"),
        ("00" * 32, "must be {count, sha256}"),
    ],
)
def test_a_malformed_manifest_is_refused(manifest: object, phrase: str) -> None:
    """A manifest other than {count, sha256}, a positive count and 64 lowercase hex
    digits, is an EnvelopeError."""
    good = Statement.from_bytes(
        canonical_json(
            {
                "request_id": "r",
                "key_name": "release",
                "key_id": "k",
                "manifest": {"count": 20, "sha256": "00" * 32},
                "decision": "approve",
                "approver": "alice",
                "issued_at": "2026-01-01T00:00:00.000000Z",
            }
        )
    )
    assert good.manifest == Manifest(20, "00" * 32) and good.digests == ()
    bad = {**good.as_dict(), "manifest": manifest}
    with pytest.raises(EnvelopeError, match=phrase):
        Statement.from_bytes(canonical_json(bad))


def test_both_forms_at_once_are_refused() -> None:
    """A statement carrying both a manifest and a digest list is an EnvelopeError."""
    d = Digest("sha256", bytes(32), "a")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    st = Statement("r", "release", "k", (), "approve", "alice", now, manifest=Manifest.of([d]))
    both = {**st.as_dict(), "digests": [d.as_dict()]}
    with pytest.raises(EnvelopeError, match="fields must be exactly"):
        Statement.from_bytes(canonical_json(both))


def test_manifest_cache_holds_a_bounded_number_of_digests() -> None:
    """Hashing many large batches keeps at most 20,000 of their digests alive (not 32
    batches of 10,000 with 512-character names), and a batch held is hashed once."""
    name = "n" * 512
    for i in range(8):
        batch = tuple(Digest("sha256", bytes([i]) * 32, f"{name}{j}") for j in range(10_000))
        assert Manifest.of(batch) == Manifest.of(batch)
        held = sum(len(d) for d, _ in model._BY_IDENTITY.values())
        assert held <= 20_000
    small = (Digest("sha256", b"\x01" * 32, "a.bin"),)
    first = Manifest.of(small)
    assert model._BY_IDENTITY[id(small)] == (small, first)
