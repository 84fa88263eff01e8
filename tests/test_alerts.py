"""Alerts on the unusual (docs/architecture.md §12): off-hours, first seen, bursts;
denials and freezes.

The alert watch looks at each new request once (across servers on one store), and
records what it finds as `alert.*` audit entries that webhooks and metrics hear of;
history from before the watch started raises nothing, and nothing is refused.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from signer.core.alerts import AlertRules
from signer.core.events import Event, Kind
from signer.core.machine import Core
from signer.core.windows import Window
from signer.errors import ConfigError
from signer.model import State
from signer.notify.messages import alert_of
from signer.notify.webhook import Sink
from signer.server.config import load_config
from signer.server.metrics import Metrics
from tests.config_files import root as root  # a fixture
from tests.config_files import valid_config, write_config
from tests.core_world import world
from tests.fakes import World, sha256_digest

__all__ = ["world"]


def watching(w: World, **rules: Any) -> AlertRules:
    r = AlertRules(**rules)
    w.core.alert_rules = r
    w.core.prime_alerts()
    return r


def alerts(w: World) -> list[tuple[str, str]]:
    """(kind, message) of each alert entry, in log order."""
    return [
        (e.event.removeprefix("alert."), e.details["message"])
        for e in w.audit()
        if e.event.startswith("alert.")
    ]


def make(w: World, who: str = "ci", n: int = 0, **context: str) -> None:
    w.create(
        who, [sha256_digest(f"{who} {n}".encode())], context=context or {"repository": "org/app"}
    )


def test_a_requester_and_a_repository_seen_first_are_flagged_once(world: World) -> None:
    """ci from org/app is new; ci again is not; carol is; org/other is."""
    watching(world)
    make(world)
    make(world, n=1)
    assert world.core.raise_alerts() == 2
    make(world, "carol", 2)
    make(world, "carol", 3, repository="org/other", workflow="release.yml")
    assert world.core.raise_alerts() == 3
    assert [m for _, m in alerts(world)] == [
        "requester ci on key release for the first time",
        "repository org/app (the request's context) on key release for the first time",
        "requester carol on key release for the first time",
        "repository org/other (the request's context) on key release for the first time",
        "workflow release.yml (the request's context) on key release for the first time",
    ]
    assert world.core.raise_alerts() == 0
    assert world.count(State.PENDING) == 4  # nothing refused


def test_history_before_the_watch_raises_nothing(world: World) -> None:
    """Requests made before the watch started are not alerted on, later ones are."""
    make(world)
    watching(world, first_seen=frozenset({"requester"}))
    assert world.core.raise_alerts() == 0
    make(world, "carol")
    assert world.core.raise_alerts() == 1


def test_a_request_outside_the_usual_hours_is_flagged(world: World) -> None:
    """04:04 in Berlin on a Friday is outside Mon-Fri 09:00-17:00 Europe/Berlin."""
    hours = (Window.parse("Mon-Fri 09:00-17:00 Europe/Berlin"),)
    watching(world, usual_hours={"release": hours}, first_seen=frozenset())
    make(world)
    assert world.core.raise_alerts() == 1
    assert alerts(world) == [
        (
            "off_hours",
            "a request on release outside its usual hours (Mon-Fri 09:00-17:00 Europe/Berlin)",
        )
    ]


def test_a_burst_is_flagged_by_the_request_that_crosses_it(world: World) -> None:
    """Three requests in ten minutes is the limit: the fourth alerts, the fifth does not."""
    watching(world, first_seen=frozenset(), burst_count=3)
    for n in range(5):
        make(world, n=n)
    assert world.core.raise_alerts() == 1
    [(kind, message)] = alerts(world)
    assert kind == "burst" and message.startswith("4 requests on release in 0:10:00")


def test_two_servers_on_one_store_alert_on_each_request_once(world: World) -> None:
    """Both watches run at once over the same new requests: one set of alerts."""
    rules = watching(world, first_seen=frozenset({"requester", "repository"}))
    other_store = world.db.open()
    other = Core(
        other_store,
        world.token,
        world.keys,
        world.policies,
        {n: k.public_key() for n, k in world.officers.items()},
        clock=world.clock,
        alert_rules=rules,
    )
    for n in range(6):
        make(world, "ci" if n % 2 else "carol", n, repository=f"org/app{n % 3}")
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c: counts.append(c.raise_alerts()))
        for c in (world.core, other)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        other_store.close()
    assert sum(counts) == 5 == len(alerts(world))  # ci, carol, org/app0, org/app1, org/app2


def test_alerts_reach_webhooks_and_metrics_with_denials_and_freezes(world: World) -> None:
    """An `alert` sink hears the alert entries, denials and freezes; the metric counts
    each kind."""
    sink = Sink("a", "http://127.0.0.1:1/", events=frozenset({"alert"}))
    for event, kind in [
        ("alert.burst", "burst"),
        ("request.denied", "denied"),
        ("key.frozen", "frozen"),
    ]:
        assert alert_of(event) == kind
        assert sink.wants("x", "release", alert=True)
    assert not sink.wants("request.waiting", "release", alert_of("request.created") is not None)

    class Counts:
        errors = resets = 0

    metrics = Metrics(world.store, Counts())
    metrics.on_event(Event(Kind.ALERT, "r", "release", "signer", {"alert": "first_seen"}))
    metrics.on_event(Event(Kind.DENIED, "r", "release", "alice"))
    for kind in ("first_seen", "denied"):
        assert metrics.registry.get_sample_value("signer_alerts_total", {"kind": kind}) == 1


@pytest.mark.parametrize(
    ("alerts_table", "message"),
    [
        ({"usual_hours": {"relase": ["Mon 09:00-17:00 UTC"]}}, "did you mean 'release'"),
        ({"usual_hours": {"release": ["Mon 9-17 UTC"]}}, "is not a window"),
        ({"first_seen": ["branch"]}, "'branch' is not one of requester"),
        ({"burst_factor": True}, "burst_factor: must be a number"),
        ({"burst_count": 0}, "burst_count: must be from 1"),
        ({"burst": 3}, "unknown setting"),
    ],
)
def test_an_alert_setting_that_cannot_work_stops_the_load(
    root: Path, alerts_table: dict[str, Any], message: str
) -> None:
    """Each mistake in `[alerts]` is named with its setting."""
    cfg = valid_config()
    cfg["alerts"] = alerts_table
    with pytest.raises(ConfigError, match="alerts") as e:
        load_config(write_config(root, cfg))
    assert message in str(e.value)
