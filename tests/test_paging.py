"""No caller can make a listing or a fetch too large for others: pages are bounded by bytes.

A server that accepts 64 MiB messages holds a mix of the largest requests the
limits allow (10,000 SHA-512 digests with 512-character names of 4-byte
characters, 32 context entries of 1,024 such characters, a 128-character
idempotency key: about 21 MB each; together far over the 64 MiB a response may
be) and small ones, cancelled with the longest reason, signed and pending. The
real CLIs then list, show, approve, list the audit log and fetch and verify it;
every page of every listing RPC stays under 1 MiB (or holds one item, no item
being over its documented bound).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from signer.model import Digest, Manifest
from signer.store.base import MAX_AUDIT_ENTRY_BYTES, PAGE_BYTES
from signer.v1 import approval_pb2, audit_pb2, signing_pb2, types_pb2
from testbed.clients import Clients, sha256_digest
from testbed.commands import APPROVER, SIGNER, run
from testbed.env import Db, Env, make_env
from testbed.process import ServerProcess
from tests.harness import audit_events, rpc_error

WIDE = "\U0001d538"  # MATHEMATICAL DOUBLE-STRUCK CAPITAL A: 4 bytes in UTF-8
BIG = 4  # largest requests: ~21 MB each, ~85 MB together
SUMMARY_BOUND = 300 * 1024  # documented in approval.proto
DIGEST_BOUND = 2200  # a SHA-512 digest with a 512-character name of 4-byte characters
TIMEOUT = 120.0
PENDING = types_pb2.REQUEST_STATE_PENDING


def _name(tag: str, i: int) -> str:
    return (f"{tag}-{i}-" + WIDE * 512)[:512]


def _big_digests(tag: str) -> list[types_pb2.Digest]:
    return [
        types_pb2.Digest(
            algorithm=types_pb2.HASH_ALGORITHM_SHA512,
            value=hashlib.sha512(f"{tag}/{i}".encode()).digest(),
            artifact_name=_name(tag, i),
        )
        for i in range(10_000)
    ]


def _max_context() -> dict[str, str]:
    return {f"k{i:02d}".ljust(64, "x"): WIDE * 1024 for i in range(32)}


@dataclass
class World:
    env: Env
    clients: Clients
    big: list[types_pb2.SigningRequest]  # pending, cancelled, then one signed
    digests: dict[str, list[types_pb2.Digest]]
    small: list[types_pb2.SigningRequest]


def _create(clients: Clients, **fields: Any) -> types_pb2.SigningRequest:
    req = signing_pb2.CreateSigningRequestRequest(key_name="release", **fields)
    resp = clients.signing("ci").CreateSigningRequest(req, timeout=TIMEOUT)
    return resp.request


@pytest.fixture(scope="module")
def world(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    root = tmp_path_factory.mktemp(f"paging-{backend}")
    db: Db | None = None
    if backend == "postgresql":
        pg = request.getfixturevalue("pg")
        db = Db(pg.database(), pg.password_file)
    env = make_env(root / "env", db)
    cfg = env.read_config()
    cfg["server"]["max_message_bytes"] = 64 * 1024 * 1024
    env.write_config(cfg)
    server = ServerProcess(env).start()
    clients = Clients(env)
    try:
        big, digests = [], {}
        for k in range(BIG):
            tag = f"batch{k}"
            digests[tag] = _big_digests(tag)
            r = _create(
                clients,
                digests=digests[tag],
                context=_max_context(),
                idempotency_key=f"{tag}-".ljust(128, "i"),
            )
            assert r.digest_count == 10_000 and len(r.digests) == 10_000  # the requester's
            big.append(r)
        small = [clients.create() for _ in range(3)]
        for r in big[1:3]:  # cancelled with the longest reason there is
            clients.signing("ci").CancelSigningRequest(
                signing_pb2.CancelSigningRequestRequest(id=r.id, reason=WIDE * 1024),
                timeout=TIMEOUT,
            )
        yield World(env, clients, big, digests, small)
    finally:
        clients.close()
        server.stop()


def _cli(world: World, tool: list[str], who: str, *args: str) -> str:
    return run([*tool, *args, "--profile", str(world.env.profile_path(who))], timeout=300).stdout


def _approver(world: World, who: str, *args: str) -> str:
    return _cli(world, APPROVER, who, *args)


def _signer(world: World, who: str, *args: str) -> str:
    return _cli(world, SIGNER, who, *args)


def _page_ok(resp: Any, items: Any) -> None:
    """A page stays under the byte budget, or is one item."""
    assert len(items) == 1 or resp.ByteSize() <= PAGE_BYTES, (resp.ByteSize(), len(items))


# -- the officers' CLI --------------------------------------------------------------------


def test_approver_list_pages_through_the_largest_requests(world: World) -> None:
    """`approver list` lists every pending and cancelled batch, with its digest count."""
    pending = json.loads(_approver(world, "alice", "list", "--json"))
    by_id = {d["id"]: d for d in pending}
    for r in (world.big[0], world.big[3], *world.small):
        assert r.id in by_id
    assert by_id[world.big[0].id]["digest_count"] == 10_000
    assert by_id[world.big[0].id]["manifest_sha256"] is None  # a summary: see `show`
    assert len(by_id[world.big[0].id]["digests"]) <= 16
    assert by_id[world.small[0].id]["digest_count"] == 1
    cancelled = json.loads(_approver(world, "alice", "list", "--state", "cancelled", "--json"))
    assert {world.big[1].id, world.big[2].id} <= {d["id"] for d in cancelled}
    table = _approver(world, "alice", "list")
    assert world.big[0].id in table and "10000" in table


def test_approver_show_gives_every_digest_of_a_batch(world: World) -> None:
    """`approver show --json` pages through all 10,000 digests; its manifest is theirs."""
    r = world.big[0]
    shown = json.loads(_approver(world, "alice", "show", r.id, "--json"))
    sent = world.digests["batch0"]
    assert shown["digest_count"] == 10_000
    assert [x["artifact"] for x in shown["digests"]] == [d.artifact_name for d in sent]
    assert [x["digest"] for x in shown["digests"]] == [d.value.hex() for d in sent]
    want = Manifest.of([Digest("sha512", d.value, d.artifact_name) for d in sent])
    assert shown["manifest_sha256"] == want.sha256
    last = _approver(world, "alice", "show", r.id, "--page", "200", "--page-size", "50")
    assert "digest 9999" in last and "200 of 200" in last


def test_approver_approves_the_largest_batch_and_it_is_signed(world: World) -> None:
    """Two officers approve a 10,000-digest batch through the CLI; it is signed."""
    r = world.big[3]
    _approver(world, "alice", "approve", r.id, "--yes")
    _approver(world, "bob", "approve", r.id, "--yes")
    signed = world.clients.get(r.id)
    assert signed.state == types_pb2.REQUEST_STATE_SIGNED
    assert len(signed.signatures) == 10_000 and signed.digest_count == 10_000
    listed = json.loads(_approver(world, "alice", "list", "--state", "signed", "--json"))
    assert [d["digest_count"] for d in listed if d["id"] == r.id] == [10_000]


# -- the auditor's CLI ----------------------------------------------------------------------


def test_audit_list_fetch_and_verify_page_through_the_largest_entries(
    world: World, tmp_path: Path
) -> None:
    """`signer audit list`, `fetch` and `verify` go through a log of ~21 MB entries."""
    size = len(audit_events(world.env))
    table = _signer(world, "auditor", "audit", "list")
    for r in world.big:
        assert r.id in table
    cancels = json.loads(
        _signer(world, "auditor", "audit", "list", "--event", "request.cancelled", "--json")
    )
    assert {e["request_id"] for e in cancels} >= {world.big[1].id, world.big[2].id}
    out = tmp_path / "log"
    fetched = _signer(world, "auditor", "audit", "fetch", "--out", str(out))
    assert "fetched" in fetched
    verifier = str(world.env.profile("auditor").audit_verifier)
    ok = run([*SIGNER, "audit", "verify", str(out), "--verifier", verifier], timeout=300).stdout
    assert ok.startswith("OK: ") and int(ok.split()[1]) >= size


# -- every page, RPC by RPC --------------------------------------------------------------------


def test_every_listing_page_is_bounded_by_bytes(world: World) -> None:
    """ListRequests, ListRequestDigests, ListAuditEvents and GetEntries pages stay under 1 MiB."""
    approval = world.clients.approval("alice")
    token, listed = "", 0
    while True:
        resp = approval.ListRequests(
            approval_pb2.ListRequestsRequest(state=PENDING, page_size=50, page_token=token),
            timeout=TIMEOUT,
        )
        _page_ok(resp, resp.requests)
        for r in resp.requests:
            assert r.ByteSize() <= SUMMARY_BOUND
            assert len(r.digests) == min(r.digest_count, 16)
            assert not r.signatures and all(not a.envelope for a in r.approvals)
        listed += len(resp.requests)
        if not (token := resp.next_page_token):
            break
    assert listed >= 1 + len(world.small)

    r = world.big[0]
    got = approval.GetRequest(approval_pb2.GetRequestRequest(id=r.id), timeout=TIMEOUT).request
    assert got.digest_count == 10_000 and len(got.digests) == 16
    token, digests = "", []
    while True:
        page = approval.ListRequestDigests(
            approval_pb2.ListRequestDigestsRequest(id=r.id, page_size=10_000, page_token=token),
            timeout=TIMEOUT,
        )
        assert page.ByteSize() <= PAGE_BYTES and page.digest_count == 10_000
        assert all(d.ByteSize() <= DIGEST_BOUND for d in page.digests)
        digests += page.digests
        if not (token := page.next_page_token):
            break
    assert digests == world.digests["batch0"]

    audit = world.clients.audit()
    token, events = "", 0
    while True:
        listing = audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_size=1000, page_token=token), timeout=TIMEOUT
        )
        _page_ok(listing, listing.events)
        events += len(listing.events)
        if not (token := listing.next_page_token):
            break
    size = audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=TIMEOUT).tree_size
    assert events >= size
    start = 0
    while start < size:
        entries = audit.GetEntries(
            audit_pb2.GetEntriesRequest(start=start, end=size), timeout=TIMEOUT
        ).events
        assert entries and [e.index for e in entries] == list(range(start, start + len(entries)))
        assert len(entries) == 1 or sum(len(e.entry) for e in entries) <= PAGE_BYTES
        assert all(len(e.entry) <= MAX_AUDIT_ENTRY_BYTES for e in entries)
        start += len(entries)


def test_a_summary_at_the_limits_stays_under_its_bound(world: World) -> None:
    """A request at every limit a summary shows (17 wide names, context, a denial's reason)
    is under 300 KiB listed."""
    c = world.clients
    wide = [
        types_pb2.Digest(
            algorithm=types_pb2.HASH_ALGORITHM_SHA512,
            value=hashlib.sha512(bytes([i])).digest(),
            artifact_name=_name("wide", i),
        )
        for i in range(17)
    ]
    r = _create(c, digests=wide, context=_max_context())
    c.approve("alice", r)
    c.deny("carol", r, reason=WIDE * 1024)
    resp = c.approval("bob").ListRequests(
        approval_pb2.ListRequestsRequest(
            state=types_pb2.REQUEST_STATE_DENIED, page_size=50, page_token=""
        ),
        timeout=TIMEOUT,
    )
    [summary] = [x for x in resp.requests if x.id == r.id]
    assert len(summary.approvals) == 2 and summary.digest_count == 17
    assert summary.ByteSize() <= SUMMARY_BOUND


def test_small_requests_still_come_whole(world: World) -> None:
    """A request of at most 16 digests is listed and fetched with all of them."""
    r = world.clients.create(digests=[sha256_digest(b"one", "one.bin")])
    got = (
        world.clients.approval("alice")
        .GetRequest(approval_pb2.GetRequestRequest(id=r.id), timeout=TIMEOUT)
        .request
    )
    assert got.digest_count == 1 and [d.artifact_name for d in got.digests] == ["one.bin"]


def test_digest_page_token_must_be_one_the_server_issued(world: World) -> None:
    """A digest page token past the request's digests is INVALID_ARGUMENT."""
    r = world.small[0]
    approval = world.clients.approval("alice")

    def page(token: str) -> Any:
        req = approval_pb2.ListRequestDigestsRequest(id=r.id, page_token=token)
        return approval.ListRequestDigests(req, timeout=TIMEOUT)

    assert [d.value for d in page("").digests] == [d.value for d in r.digests]
    for token in ("5", "x", "-7"):
        err = rpc_error(lambda t=token: page(t))  # type: ignore[misc]
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, token
