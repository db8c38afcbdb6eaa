"""A tiny fault-injecting HTTP reverse proxy for storage tests.

Put it in front of a real test server (moto, the GCS emulator, Azurite), point the SDK at
``proxy.url``, and tell it which requests to break::

    with FaultProxy("http://127.0.0.1:5000") as proxy:
        proxy.fail_next(2, status=503)                # the next two requests get a 503
        proxy.fail_next(1, mode="reset", method="PUT")  # the next PUT has its connection dropped
        ...
        assert proxy.injected == 3

Requests that are not broken are forwarded unchanged (Host header included, so signed
requests still verify) and the response is relayed. Bodies are buffered, which is fine
for tests. Used by the storage contract suite and the fault suite.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)

_DEFAULT_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>ServiceUnavailable</Code><Message>injected by faultproxy</Message></Error>"
)


@dataclass
class Fault:
    """``count`` requests matching ``method``/``path_contains``/``predicate`` get ``status`` (or a reset)."""

    count: int
    status: int = 503
    mode: str = "status"  # "status": answer with `status`; "reset": close the connection unanswered
    method: str | None = None
    path_contains: str | None = None
    predicate: Callable[[str, str], bool] | None = None
    body: bytes = _DEFAULT_BODY
    headers: dict[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        """Return True when this fault applies to a request with ``method`` and ``path``."""
        if self.method and method.upper() != self.method.upper():
            return False
        if self.path_contains and self.path_contains not in path:
            return False
        return not (self.predicate and not self.predicate(method, path))


@dataclass(frozen=True)
class Seen:
    """A request the proxy received, and what it did with it."""

    method: str
    path: str
    injected: str | None  # None when forwarded, else "503" / "reset"


class FaultProxy:
    """A threaded HTTP reverse proxy on a free loopback port that breaks requests on demand."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Return the proxy's base URL (``http://127.0.0.1:PORT``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def injected(self) -> int:
        """Return how many requests were broken so far."""
        with self._lock:
            return sum(1 for s in self.seen if s.injected)

    def fail_next(self, count: int, status: int = 503, mode: str = "status", **match: object) -> Fault:
        """Break the next ``count`` matching requests; return the fault (its ``count`` runs down)."""
        fault = Fault(count=count, status=status, mode=mode, **match)  # type: ignore[arg-type]
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and fault.matches(method, path):
                    fault.count -= 1
                    return fault
            return None

    def _record(self, method: str, path: str, injected: str | None) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, injected))

    def start(self) -> FaultProxy:
        """Start serving in a background thread; return self."""
        # A short poll interval makes stop() quick; the default of 0.5 s adds up over a suite.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = self._read_chunked()
                fault = proxy._take_fault(self.command, self.path)
                if fault is not None:
                    proxy._record(self.command, self.path, fault.mode if fault.mode == "reset" else str(fault.status))
                    if fault.mode == "reset":
                        # Drop the connection with no answer, as a crashed load balancer would.
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self.send_response(fault.status)
                    for name, value in fault.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(fault.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(fault.body)
                    return
                proxy._record(self.command, self.path, None)
                self._forward(body)

            def _read_chunked(self) -> bytes:
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    if body or self.command in ("PUT", "POST", "PATCH"):
                        headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response_only(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() in _HOP_BY_HOP or name.lower() == "content-length":
                            continue
                        self.send_header(name, value)
                    if self.command == "HEAD":
                        length = response.getheader("Content-Length")
                        if length is not None:
                            self.send_header("Content-Length", length)
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle

        return Handler
