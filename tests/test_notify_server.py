"""Notifications from a running server, and the `[notify]` table's errors at load time.

The dispatcher and the outbox are tested on both backends in tests/test_notify.py;
here a real server posts to listeners on 127.0.0.1: the generic JSON form, signed,
and a Slack form whose URL is a secret in a file, told only of signatures.
"""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from approver.watch import Board
from signer.errors import ConfigError
from signer.notify import webhook
from signer.server.config import load_config
from signer.tls import write_private
from testbed.commands import APPROVER
from testbed.env import Env
from testbed.process import serving
from testbed.webhook_sink import WebhookSink
from tests.config_files import root as root  # a fixture
from tests.config_files import set_value, valid_config, write_config

SECRET = "s" * 40
REQUESTS = ["request.waiting", "request.decision", "request.quorum", "request.signed"]


@pytest.mark.sqlite_only("the server's wiring is tested; the outbox on both backends elsewhere")
def test_a_running_server_tells_its_webhooks(fresh_env: Env) -> None:
    """Waiting, decisions, quorum and signature reach the JSON hook, HMAC-signed; the
    Slack hook, whose URL is read from a file, hears only of the signature; the security
    hook hears the alert raised by a requester new to the key."""
    generic, slack, alerts = WebhookSink(), WebhookSink(), WebhookSink()
    root = fresh_env.config.parent
    write_private(root / "hook.key", SECRET.encode())
    write_private(root / "slack.url", slack.url.encode())
    cfg = fresh_env.read_config()
    cfg["notify"] = {
        "retry_min": "1s",
        "webhooks": {
            "oncall": {"url": generic.url, "secret_file": "hook.key", "events": REQUESTS},
            "chat": {"url_file": "slack.url", "form": "slack", "events": ["request.signed"]},
            "security": {"url": alerts.url, "secret_file": "hook.key", "events": ["alert"]},
        },
    }
    cfg["alerts"] = {"first_seen": ["requester"]}
    fresh_env.write_config(cfg, adopt=False)  # no part of the policy: no version to adopt
    try:
        with serving(fresh_env) as r:
            request = r.clients.create()
            waiting = generic.take()
            r.clients.approve("alice", request)
            r.clients.approve("bob", request)
            rest = [generic.take().json["event"] for _ in range(4)]
            told = slack.take()
            alert = alerts.take().json
    finally:
        generic.close()
        slack.close()
        alerts.close()
    assert alert["event"] == "alert" and alert["alert"] == "first_seen"
    assert alert["message"] == "requester ci on key release for the first time"
    assert alert["request_id"] == request.id and alerts.nothing_more()
    assert waiting.json["event"] == "request.waiting"
    assert waiting.json["request_id"] == request.id
    assert webhook.verify(SECRET.encode(), waiting.headers["X-Signer-Signature"], waiting.body)
    assert rest == ["request.decision", "request.decision", "request.quorum", "request.signed"]
    assert "was signed" in told.json["text"] and "X-Signer-Signature" not in told.headers
    assert slack.nothing_more()


def _secret(root: Path, name: str = "hook.key", text: str = SECRET, mode: int = 0o600) -> str:
    write_private(root / name, text.encode())
    os.chmod(root / name, mode)
    return name


def _hook(**settings: Any) -> Callable[[dict[str, Any]], None]:
    return set_value("notify", value={"webhooks": {"oncall": settings}})


K = {"secret_file": "hook.key"}  # a valid key, written by the test
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("http-remote", {"url": "http://hooks.example.com/x", **K}, "plain http:// to another host"),
    ("ftp", {"url": "ftp://127.0.0.1/x", **K}, "must be an https:// URL"),
    ("space", {"url": "https://h.example/a b", **K}, "without spaces or control characters"),
    ("non-ascii", {"url": "https://h.example/é", **K}, "must be ASCII"),
    ("password", {"url": "https://u:p@h.example/x", **K}, "carries a user or password"),
    ("no-url", K, "set exactly one of url or url_file"),
    ("bad-port", {"url": "https://h.example:99999/", **K}, "not a URL"),
    ("form", {"url": "https://h.example/x", "form": "xml", **K}, "must be json or slack"),
    ("unsigned-json", {"url": "https://h.example/x"}, "a JSON webhook is always signed"),
    ("unknown-key", {"url": "https://h.example/x", "keys": ["relase"], **K}, "'release'?"),
    (
        "unknown-event",
        {"url": "https://h.example/x", "events": ["request.wating"], **K},
        "'request.waiting'?",
    ),
    ("typo", {"url": "https://h.example/x", "secrt_file": "x", **K}, "did you mean 'secret_file'"),
    ("timeout", {"url": "https://h.example/x", "timeout": "2h", **K}, "from 1s to 1m"),
]


@pytest.mark.parametrize(("settings", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_webhook_that_cannot_work_stops_the_load(
    root: Path, settings: dict[str, Any], message: str
) -> None:
    """Each mistake names the setting and the fix; nothing starts."""
    _secret(root)
    cfg = valid_config()
    _hook(**settings)(cfg)
    with pytest.raises(ConfigError, match=r"notify\.webhooks") as e:
        load_config(write_config(root, cfg))
    assert message in str(e.value)


def test_a_notify_table_without_webhooks_is_refused(root: Path) -> None:
    """`[notify]` alone, or with an empty `webhooks` table, says what to add."""
    cfg = valid_config()
    set_value("notify", value={"retry_min": "1s"})(cfg)
    with pytest.raises(ConfigError, match=r"notify\.webhooks: missing table"):
        load_config(write_config(root, cfg))
    set_value("notify", value={"webhooks": {}})(cfg)
    with pytest.raises(ConfigError, match=r"add a \[notify.webhooks.NAME\] table"):
        load_config(write_config(root, cfg))


def test_webhook_secrets_are_read_from_private_files(root: Path) -> None:
    """A short key, a key file others can read, and a URL file: each said clearly; the
    URL read from a file is never shown in an error."""
    cfg = valid_config()
    _hook(url="https://h.example/x", secret_file=_secret(root, text="short"))(cfg)
    with pytest.raises(ConfigError, match="use 32 or more"):
        load_config(write_config(root, cfg))
    _hook(url="https://h.example/x", secret_file=_secret(root, mode=0o644))(cfg)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(write_config(root, cfg))
    write_private(root / "slack.url", b"http://hooks.slack.example/services/T0/B0/very-secret")
    _hook(url_file="slack.url", form="slack")(cfg)
    with pytest.raises(ConfigError, match="plain http") as e:
        load_config(write_config(root, cfg))
    assert "very-secret" not in str(e.value)
    write_private(root / "slack.url", b"https://hooks.slack.example/services/T0/B0/very-secret\n")
    sinks = load_config(write_config(root, cfg)).notify
    assert sinks is not None and sinks.sinks[0].url.endswith("very-secret")
    assert "very-secret" not in repr(sinks)


# -- approver watch ----------------------------------------------------------------------------


class Lines:
    """The stdout lines of a running command, read as they come."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 20) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no line within the time") from None

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=20)


@pytest.mark.sqlite_only("the stream and the client are tested; the store plays no part")
def test_approver_watch_shows_what_waits_for_you(fresh_env: Env) -> None:
    """bob's watch prints a request the moment it waits, again when alice approves, and
    its end once bob's own approval completes it (approved and signed, or signed when
    both came at once); Ctrl-C ends the watch
    with exit 0 (the stream has no deadline: the server's own bound ends it)."""
    with serving(fresh_env) as r:
        args = [*APPROVER, "watch", "--profile", str(fresh_env.profile_path("bob"))]
        out = Lines(args)
        try:
            request = r.clients.create()
            first = out.next()
            r.clients.approve("alice", request)
            second = out.next()
            r.clients.approve("bob", request)
            ends = [out.next()]
            while ends[-1] != f"signed {request.id}" and len(ends) < 2:
                ends.append(out.next())
        finally:
            code = out.interrupt()
    assert first.startswith(f"waiting {request.id} key=release requester=ci approvals=0/2")
    assert second.startswith(f"waiting {request.id} key=release requester=ci approvals=1/2")
    # Its end as the watch saw it: APPROVED then SIGNED, or SIGNED alone when the server
    # signed before the watch read the change (both come in one notification then).
    assert ends in ([f"approved {request.id}", f"signed {request.id}"], [f"signed {request.id}"])
    assert code == 0


def _summary(
    rid: str, state: str = "PENDING", requester: str = "ci", *approvers: str
) -> dict[str, Any]:
    return {
        "id": rid,
        "state": state,
        "key_name": "release",
        "requester": requester,
        "threshold": 2,
        "digest_count": 1,
        "context": {"repository": "org/app"},
        "expire_time": "2026-01-01T00:00:00Z",
        "approvals": [{"approver": a, "decision": "approve"} for a in approvers],
    }


def test_a_watch_shows_only_what_waits_for_this_officer() -> None:
    """Not a request bob made, not one he decided (said once, "decided"), and a request
    that did not change says nothing."""
    board = Board("bob")
    assert board.update(_summary("r1")) is not None
    assert board.update(_summary("r1")) is None
    assert board.update(_summary("r2", "PENDING", "bob")) is None
    assert board.update(_summary("r1", "PENDING", "ci", "bob")) == "decided r1"
    assert board.update(_summary("r1", "PENDING", "ci", "bob")) is None
    assert board.update(_summary("r1", "SIGNED", "ci", "bob", "alice")) == "signed r1"
    assert board.update(_summary("r3", "SIGNED")) is None
    assert list(board.waiting) == []
    hostile = {**_summary("r4"), "context": {"note": "[/] [link=https://evil.example]x[/link]"}}
    board.update(hostile)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(board.table())
    assert "[/] [link=https://evil.example]x[/link]" in console.export_text()
