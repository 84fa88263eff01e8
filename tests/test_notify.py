"""Notifications (docs/architecture.md §12): webhooks told of every transition from the
store's outbox.

The dispatcher runs beside a core on a real store of each backend and posts to a
listener on 127.0.0.1: officers are told a request waits and who must decide,
every later transition follows, an outage is retried until delivered, a server
that dies while posting leaves its deliveries to another, signing never waits
on a sink, and three replicas on one PostgreSQL database deliver each
notification once. What a notification says is bounded and, in the Slack form,
escaped; its HMAC signature verifies.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signer.audit.entry import AuditEntry
from signer.model import State
from signer.notify import webhook
from signer.notify.dispatcher import Dispatcher
from signer.notify.messages import notification, slack_message
from signer.notify.webhook import Sink
from testbed.commands import wait_until
from testbed.env import Db
from testbed.pg import PgServer
from testbed.webhook_sink import WebhookSink
from tests.core_world import world
from tests.fakes import World, make_world, sha256_digest

__all__ = ["world"]

SECRET = b"0123456789abcdef0123456789abcdef"
FAST = dt.timedelta(milliseconds=100)


@pytest.fixture
def sink() -> Iterator[WebhookSink]:
    s = WebhookSink()
    yield s
    s.close()


def dispatcher(w: World, sink: WebhookSink, **kw: Any) -> Dispatcher:
    """A started dispatcher for `w`'s store, woken by its core's events."""
    hook = Sink("oncall", sink.url, secret=SECRET, timeout=5)
    d = Dispatcher(w.store, [hook], "test.example/signer", retry_min=FAST, retry_max=FAST, **kw)
    w.core.events.subscribe(d.poke)
    d.start()
    return d


def outbox(w: World) -> dict[str, tuple[int, int]]:
    with w.store.transaction() as tx:
        return tx.outbox_counts()


# -- told, in order, signed -----------------------------------------------------------------


def test_officers_are_told_a_request_waits_and_who_must_decide(
    world: World, sink: WebhookSink
) -> None:
    """A new request reaches the webhook as request.waiting, naming the officers who may
    decide (not the requester) and how many must, signed with the sink's HMAC key."""
    d = dispatcher(world, sink)
    try:
        r = world.create("carol", context={"repository": "org/app"})
        got = sink.take()
    finally:
        d.stop()
    body = got.json
    assert body["event"] == "request.waiting"
    assert body["request_id"] == r.id and body["key"] == "release"
    assert body["waiting_for"] == {"approvers": ["alice", "bob"], "threshold": 2}
    assert body["context"] == {"repository": "org/app"} and body["digest_count"] == 1
    assert (
        got.headers["X-Signer-Delivery"]
        == body["id"]
        == f"test.example/signer/{body['audit_index']}"
    )
    assert got.headers["X-Signer-Event"] == "request.waiting"
    assert webhook.verify(SECRET, got.headers["X-Signer-Signature"], got.body)
    assert not webhook.verify(
        b"another key, just as long as the one", got.headers["X-Signer-Signature"], got.body
    )
    assert not webhook.verify(SECRET, got.headers["X-Signer-Signature"], got.body + b" ")


def test_every_transition_follows_in_the_order_it_happened(world: World, sink: WebhookSink) -> None:
    """Decisions, the quorum and the signature are told as they happen; a denial too."""
    d = dispatcher(world, sink)
    try:
        r = world.create()
        assert sink.events(1) == ["request.waiting"]
        world.approve("alice", r)
        assert sink.events(1) == ["request.decision"]
        assert world.approve("bob", r).state is State.SIGNED
        got = [sink.take().json for _ in range(3)]
        assert [g["event"] for g in got] == ["request.decision", "request.quorum", "request.signed"]
        assert got[2]["signatures"] == 1 and got[1]["approvers"] == ["alice", "bob"]
        denied = world.create(digests=[sha256_digest(b"build 2")])
        world.deny("carol", denied, reason="not from the release branch")
        waiting, deny = sink.take().json, sink.take().json
        wait_until(lambda: outbox(world) == {})  # nothing left to deliver
    finally:
        d.stop()
    assert waiting["request_id"] == denied.id
    assert deny["event"] == "request.denied" and deny["reason"] == "not from the release branch"
    assert deny["alert"] == "denied"


def test_a_new_sink_is_told_what_happens_from_then_on(world: World, sink: WebhookSink) -> None:
    """A sink seen for the first time starts at the end of the log: no history flood."""
    world.create()
    d = dispatcher(world, sink)
    try:
        later = world.create(digests=[sha256_digest(b"later")])
        assert sink.take().json["request_id"] == later.id
        wait_until(lambda: d.idle() and d.round() == 0 and outbox(world) == {})
    finally:
        d.stop()
    assert sink.nothing_more()


# -- failures ----------------------------------------------------------------------------------


def test_a_sink_outage_is_retried_until_delivered_once(world: World, sink: WebhookSink) -> None:
    """503 answers and then a listener that is gone: each is retried with backoff, the
    notification arrives once the sink is back, and only once."""
    sink.fail_next(3)
    d = dispatcher(world, sink)
    try:
        r = world.create()
        assert sink.take().json["request_id"] == r.id
        assert sink.refused == 3
        sink.stop()
        second = world.create(digests=[sha256_digest(b"while down")])

        def tried_and_waiting() -> bool:
            rows = world.db.rows("SELECT attempts, last_error FROM outbox")
            return bool(rows) and int(rows[0][0]) >= 2 and "Connection" in str(rows[0][1])

        wait_until(tried_and_waiting)
        sink.start()
        assert sink.take().json["request_id"] == second.id
        wait_until(lambda: outbox(world) == {})
    finally:
        d.stop()
    assert sink.nothing_more()


def test_a_notification_failing_past_give_up_after_is_kept_given_up(
    world: World, sink: WebhookSink
) -> None:
    """A sink that never recovers: the item is given up, kept (and counted), not retried."""
    sink.fail_next(10_000)
    d = dispatcher(world, sink, give_up_after=dt.timedelta(0))
    try:
        world.create()
        wait_until(lambda: outbox(world) == {"oncall": (0, 1)})
        refused = sink.refused
        d.poke()
        d.round()
    finally:
        d.stop()
    assert sink.refused == refused == 1


def test_a_server_that_dies_while_posting_leaves_the_delivery_to_another(
    world: World, sink: WebhookSink
) -> None:
    """Items taken by a server that then died are delivered by another once its lease ends."""
    d = dispatcher(world, sink)
    d.stop()  # primed: the sink's cursor is at the end of the log
    world.create()
    with world.store.transaction() as tx:  # what a dying server did: took, never posted
        tx.enqueue(
            "oncall", [i.index for i in tx.audit_heads(tx.tree_size() - 2, 1)], world.clock()
        )
    now = dt.datetime.now(dt.UTC)
    with world.store.transaction() as tx:
        taken = tx.claim("dead-server", now, now + dt.timedelta(seconds=1), 10, "oncall")
    assert len(taken) == 1
    other = dispatcher(world, sink, owner="live-server")
    try:
        got = sink.take()
        wait_until(lambda: outbox(world) == {})
    finally:
        other.stop()
    assert got.json["event"] == "request.waiting"


def test_a_receiver_that_does_not_answer_holds_up_only_itself(
    world: World, sink: WebhookSink
) -> None:
    """Two webhooks, one silent: the other hears every notification meanwhile; the silent
    one's delivery is cut off at its timeout, tried again, and arrives once it answers."""
    silent = WebhookSink()
    silent.hold()
    hooks = [
        Sink("oncall", sink.url, secret=SECRET, timeout=5),
        Sink("silent", silent.url, secret=SECRET, timeout=1),
    ]
    d = Dispatcher(world.store, hooks, "o", retry_min=FAST, retry_max=FAST)
    world.core.events.subscribe(d.poke)
    d.start()
    try:
        r = world.create()
        world.approve("alice", r)
        assert sink.events(2) == ["request.waiting", "request.decision"]

        def cut_off() -> bool:
            rows = world.db.rows("SELECT attempts, last_error FROM outbox WHERE sink = 'silent'")
            return any(int(a) >= 1 and "no answer in time" in str(e) for a, e in rows)

        wait_until(cut_off)
        silent.release()
        got = {silent.take().json["event"] for _ in range(2)}
        assert {"request.waiting", "request.decision"} <= got
    finally:
        d.stop()
        silent.close()


def test_signing_never_waits_on_a_sink(world: World, sink: WebhookSink) -> None:
    """A sink that does not answer holds no transition: the request is signed meanwhile."""
    sink.hold()
    d = dispatcher(world, sink)
    try:
        r = world.create()
        world.approve("alice", r)
        assert world.approve("bob", r).state is State.SIGNED
        sink.release()
        assert sink.events(5) == [
            "request.waiting",
            "request.decision",
            "request.decision",
            "request.quorum",
            "request.signed",
        ]
    finally:
        d.stop()


def test_three_replicas_deliver_each_notification_once(
    tmp_path: Path, pg: PgServer, sink: WebhookSink
) -> None:
    """Three dispatchers on one PostgreSQL database, each polling: every notification of
    twenty requests arrives once, none twice."""
    db = Db(pg.database("notify_replicas"), pg.password_file)
    w = make_world(tmp_path, db=db)
    others = [db.open(), db.open()]
    hook = Sink("oncall", sink.url, secret=SECRET, timeout=5)
    ds = [
        Dispatcher(s, [hook], "o", poll=0.02, owner=f"replica-{i}", retry_min=FAST)
        for i, s in enumerate([w.store, *others])
    ]
    for d in ds:
        d.prime()
    for d in ds:
        d.start()
    try:
        made = {w.create(digests=[sha256_digest(f"build {i}".encode())]).id for i in range(20)}
        got = [sink.take().json for _ in range(20)]
        wait_until(lambda: outbox(w) == {})
        for d in ds:
            d.round()
    finally:
        for d in ds:
            d.stop()
        for s in others:
            s.close()
        w.close()
    assert sorted(g["request_id"] for g in got) == sorted(made)
    assert len({g["id"] for g in got}) == 20
    assert sink.nothing_more()


# -- what a notification says ----------------------------------------------------------------


def _created(**details: object) -> AuditEntry:
    base = {"requester": "ci", "approvers": ["alice", "bob"], "threshold": 1, "digests": []}
    return AuditEntry(
        7,
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "request.created",
        "ci",
        "r-1",
        {**base, **details},
    )


def test_a_notification_is_bounded_whatever_the_request_carried() -> None:
    """Ten thousand digests are counted and five named; long texts are cut."""
    digests = [
        {"algorithm": "sha256", "digest": "ab" * 32, "artifact": f"f{i}"} for i in range(10_000)
    ]
    n = notification(_created(digests=digests, context={"note": "x" * 5000}), "release", "o")
    assert n.body["digest_count"] == 10_000 and len(n.body["digests"]) == 5
    assert len(n.body["context"]["note"]) == 512
    assert len(json.dumps(n.body)) < 8_000


def test_the_slack_form_escapes_what_requesters_and_officers_write() -> None:
    """A context value cannot ping a channel or make a link in Slack."""
    n = notification(
        _created(context={"note": "<!channel> <https://evil.example|click> & co"}), "release", "o"
    )
    text = slack_message(n)["text"]
    assert "<!channel>" not in text and "<https://" not in text
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; co" in text
    message = slack_message(n)
    assert message["blocks"][0]["text"]["verbatim"] is True and message["unfurl_links"] is False


def test_a_signature_header_is_checked_in_full() -> None:
    """Old, future, malformed and forged headers are all refused."""
    body = b'{"event": "request.waiting"}'
    now = time.time()
    good = webhook.signature(SECRET, int(now), body)
    assert webhook.verify(SECRET, good, body, now)
    assert not webhook.verify(SECRET, webhook.signature(SECRET, int(now) - 301, body), body, now)
    assert not webhook.verify(SECRET, webhook.signature(SECRET, int(now) + 301, body), body, now)
    for bad in (
        "",
        "t=abc,v1=00",
        f"t={int(now)}",
        f"v1={good.split('v1=')[1]}",
        good.upper(),
        good + "é",
        f"t=\uff11\uff12{int(now)},v1=00",  # digits of another script
    ):
        assert not webhook.verify(SECRET, bad, body, now), bad


def test_a_key_filter_leaves_other_keys_out_but_policy_events_in() -> None:
    """`keys` narrows key events; `events` narrows all of them."""
    s = Sink("s", "http://127.0.0.1:1/", keys=frozenset({"release"}))
    assert s.wants("request.waiting", "release") and not s.wants("request.waiting", "nightly")
    assert s.wants("policy.pending", "")
    e = Sink("e", "http://127.0.0.1:1/", events=frozenset({"alert"}))
    assert e.wants("alert", "release") and not e.wants("request.waiting", "release")
