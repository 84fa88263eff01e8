"""A webhook receiver on 127.0.0.1 for the notification tests and benchmark.

Records every POST (headers and body) in a queue; `fail_next(n)` answers the next
`n` with HTTP 503, `hold()` keeps answers back until `release()`, and `stop()` /
`start()` take the listener down and bring it back on the same port, as a
receiver's outage would.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Received", "WebhookSink"]


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookSink:
    def __init__(self) -> None:
        self.received: queue.Queue[Received] = queue.Queue()
        self.refused = 0  # deliveries answered 503
        self._fail = 0
        self._lock = threading.Lock()
        self._open = threading.Event()
        self._open.set()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink._open.wait(30)
                with sink._lock:
                    failing = sink._fail > 0
                    if failing:
                        sink._fail -= 1
                        sink.refused += 1
                if failing:
                    self.send_response(503)
                else:
                    sink.received.put(Received(dict(self.headers.items()), body, time.time()))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._fail = n

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def take(self, timeout: float = 15) -> Received:
        """The next delivery (fails the test if none comes within `timeout` seconds)."""
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no notification within {timeout} s") from None

    def events(self, count: int, timeout: float = 15) -> list[str]:
        return [self.take(timeout).json["event"] for _ in range(count)]

    def nothing_more(self) -> bool:
        return self.received.empty()

    def close(self) -> None:
        self.release()
        self.stop()
