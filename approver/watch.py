"""`approver watch`: the requests waiting for you, live.

The server streams every request an officer may decide on as it changes
(`WatchRequests`); what is shown is what waits for *you*: PENDING, not made by
you, not decided by you yet. In a terminal it is a table redrawn on each change;
elsewhere (a pipe, a log) one line per change, or one JSON object per line with
`--json`. A stream the server ends (its time bound) is opened again; a server
that cannot be reached is retried with a growing pause, and said so. What the
server sends is checked as any listing is: bounded in count, every text shown
escaped.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from approver.review import summary_dict
from signer.cli.kit import say
from signer.client.profile import Profile, remote_error
from signer.text import shown
from signer.v1 import approval_pb2, approval_pb2_grpc, types_pb2

__all__ = ["Board", "watch"]

MAX_SHOWN = 10_000  # requests a watch keeps in view (the server's listing bound)
_RETRY_MAX = 10.0  # seconds between attempts to reach a server that is down


@dataclass
class Board:
    """The requests waiting for one officer, and what changed with each update."""

    me: str
    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)
    gone: dict[str, str] = field(default_factory=dict)  # shown, then left: the state last said

    def update(self, d: dict[str, Any]) -> str | None:
        """Take in one request as the server sent it; a line saying what changed for
        this officer, or None when nothing did."""
        rid = d["id"]
        mine = any(a["approver"] == self.me for a in d["approvals"])
        if d["state"] == "PENDING" and not mine and d["requester"] != self.me:
            before = self.waiting.get(rid)
            if before is not None and _count(before) == _count(d):
                return None
            if before is None and len(self.waiting) >= MAX_SHOWN:
                return None  # past the bound: shown once others leave
            self.waiting[rid] = d
            return f"waiting {rid} key={d['key_name']} requester={d['requester']} " + (
                f"approvals={_count(d)}/{d['threshold']} digests={d['digest_count']}"
                + "".join(f" {k}={v}" for k, v in d["context"].items())
            )
        said = "decided" if mine and d["state"] == "PENDING" else d["state"].lower()
        if self.waiting.pop(rid, None) is None and self.gone.get(rid, said) == said:
            return None  # never shown, or nothing new since it left
        self.gone[rid] = said  # its end is said too (approved, then signed)
        while len(self.gone) > MAX_SHOWN:
            del self.gone[next(iter(self.gone))]
        return f"{said} {rid}"

    def table(self) -> Table:
        table = Table(
            title=escape(f"{len(self.waiting)} waiting for {shown(self.me)}"), expand=False
        )
        for column, wrap in (("id", False), ("key", False), ("requester", True)):
            table.add_column(column, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis")
        table.add_column("approvals", no_wrap=True)
        table.add_column("expires", no_wrap=True)
        table.add_column("context", overflow="fold")
        for d in self.waiting.values():
            # What the server sent, made visible and never read as markup.
            table.add_row(
                *(
                    escape(shown(text))
                    for text in (
                        d["id"],
                        d["key_name"],
                        d["requester"],
                        f"{_count(d)}/{d['threshold']}",
                        d["expire_time"],
                        " ".join(f"{k}={v}" for k, v in d["context"].items()),
                    )
                )
            )
        return table


def _count(d: dict[str, Any]) -> int:
    return sum(a["decision"] == "approve" for a in d["approvals"])


def _stream(profile: Profile, stop: threading.Event) -> Iterator[types_pb2.SigningRequest | None]:
    """Every request the server streams, for as long as it lets the stream run, again and
    again; None after each stream ends (the view starts over). `stop` ends it, at once."""
    pause = 0.5
    while not stop.is_set():
        try:
            with profile.channel() as channel:
                stub = approval_pb2_grpc.ApprovalServiceStub(channel)
                call = stub.WatchRequests(approval_pb2.WatchRequestsRequest())
                cancel = threading.Thread(target=_cancel_on, args=(stop, call), daemon=True)
                cancel.start()
                for r in call:
                    pause = 0.5
                    yield r.request
            yield None
        except grpc.RpcError as e:
            if stop.is_set():
                return
            error = remote_error(e, profile)
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise error from None
            say(f"{profile.server}: {error}; trying again in {pause:.0f} s", style="yellow")
            yield None
            if stop.wait(pause):
                return
            pause = min(pause * 2, _RETRY_MAX)


def _cancel_on(stop: threading.Event, call: Any) -> None:
    """Cancel `call` once `stop` is set or the call is over, whichever comes first."""
    while not stop.wait(0.5):
        if not call.is_active():
            return
    call.cancel()


def watch(profile: Profile, as_json: bool, stop: threading.Event | None = None) -> None:
    """Show the requests waiting for the profile's officer until `stop` is set, or an
    interrupt or a SIGTERM comes (both end it cleanly)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    board = Board(profile.identity)
    if sys.stdout.isatty() and not as_json:
        console = Console(emoji=False, highlight=False)
        with Live(board.table(), console=console, auto_refresh=False) as live:
            _follow(
                profile,
                board,
                stop,
                lambda _line, _d: live.update(board.table(), refresh=True),
                fresh=True,
            )
        return

    def line(text: str, d: dict[str, Any]) -> None:
        if as_json:
            print(
                json.dumps({"change": text.split(" ", 1)[0], "request": d}, sort_keys=True),
                flush=True,
            )
        else:
            print(shown(text), flush=True)

    _follow(profile, board, stop, line)


def _follow(
    profile: Profile,
    board: Board,
    stop: threading.Event,
    changed: Callable[[str, dict[str, Any]], None],
    fresh: bool = False,
) -> None:
    """Feed `board` from the server's streams; `fresh`: start the view over with each
    stream (a table), rather than keep what was shown (lines already printed)."""
    for r in _stream(profile, stop):
        if r is None:  # the next stream sends every waiting request again
            if fresh:
                board.waiting.clear()
            continue
        d = summary_dict(r)
        text = board.update(d)
        if text is not None:
            changed(text, d)
