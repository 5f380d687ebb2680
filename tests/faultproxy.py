"""A fault-injecting HTTP proxy in front of a real S3 server, for the fault tests.

Requests pass through to the server unchanged (the Host header too, so SigV4 signatures still
verify), except those a rule picks: those get a 503 SlowDown or a 500 InternalError answered by
the proxy itself, a dropped connection, or a delay before being forwarded. Rules match an HTTP
method and a path pattern and fire with a seeded probability, at most ``limit`` times, so every
fault test is repeatable. A rule with a ``window`` is an outage: it fails every matching request
for that many seconds, from the first one it fails (or the first one that also matches its
``trigger``, so that an outage can start at a chosen moment of a job). Everything listens on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_BODIES = {
    503: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
         b"<Message>Please reduce your request rate.</Message></Error>",
    500: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
         b"<Message>We encountered an internal error. Please try again.</Message></Error>",
}


@dataclass
class Rule:
    """Inject ``fault`` ("503", "500", "drop" or "delay") into matching requests."""

    fault: str
    method: str | None = None  # GET, PUT, HEAD, POST, DELETE; None: any
    path: str = ""  # a regex searched in the request path (with its query)
    rate: float = 1.0  # probability per matching request
    limit: int | None = None  # at most this many faults
    delay: float = 0.0  # seconds, for "delay"
    window: float | None = None  # an outage: fire on every match for this many seconds from the first
    trigger: str | None = None  # a regex: a window starts at the first matching request that also matches it
    fired: int = 0
    started: float | None = None  # when a window rule first fired (time.monotonic())

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and re.search(self.path, path) is not None


@dataclass
class FaultProxy:
    """A running proxy: its ``endpoint_url``, its rules (change them at any time) and a log."""

    endpoint_url: str
    rules: list[Rule] = field(default_factory=list)
    seed: int = 0
    injected: list[tuple[str, str, str]] = field(default_factory=list)  # (fault, method, path)
    injected_at: list[float] = field(default_factory=list)  # time.monotonic() of each injected fault
    forwarded: int = 0
    #: Every request as (time.monotonic(), method, path, the fault or "forwarded"), in order of arrival.
    requests: list[tuple[float, str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def pick(self, method: str, path: str) -> Rule | None:
        with self._lock:
            now = time.monotonic()
            for rule in self.rules:
                if rule.window is not None and rule.started is not None and now > rule.started + rule.window:
                    continue  # the outage is over
                if rule.started is None and rule.trigger is not None and re.search(rule.trigger, path) is None:
                    continue  # the outage has not begun
                if rule.matches(method, path) and (rule.limit is None or rule.fired < rule.limit) \
                        and self._random.random() < rule.rate:
                    rule.fired += 1
                    if rule.started is None:
                        rule.started = now
                    self.injected.append((rule.fault, method, path))
                    self.injected_at.append(now)
                    self.requests.append((now, method, path, rule.fault))
                    return rule
            self.requests.append((now, method, path, "forwarded"))
            return None

    def storage_options(self, base: dict) -> dict:
        """``base`` storage options pointed at the proxy instead of the server."""
        return {**base, "client_kwargs": {**base.get("client_kwargs", {}), "endpoint_url": self.endpoint_url}}


def _handler(proxy: FaultProxy, upstream: str) -> type[BaseHTTPRequestHandler]:
    target = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            rule = proxy.pick(self.command, self.path)
            if rule is not None and rule.fault == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if rule is not None and rule.fault in ("503", "500"):
                payload = _BODIES[int(rule.fault)]
                self.send_response(int(rule.fault))
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            if rule is not None and rule.fault == "delay":
                time.sleep(rule.delay)
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            try:
                connection.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                response = connection.getresponse()
                data = response.read()
            finally:
                connection.close()
            proxy.forwarded += 1
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@contextlib.contextmanager
def fault_proxy(upstream: str, seed: int = 0) -> Iterator[FaultProxy]:
    """A proxy to ``upstream`` (e.g. SeaweedFS's ``http://127.0.0.1:8333``) on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    proxy = FaultProxy(f"http://127.0.0.1:{server.server_address[1]}", seed=seed)
    server.RequestHandlerClass = _handler(proxy, upstream)
    server.daemon_threads = True
    # A 0.05 s poll: shutdown() waits for the loop's next poll, 0.5 s by default, at the end of every test.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True, name="fault-proxy")
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
