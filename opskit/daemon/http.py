"""The daemon's HTTP endpoints: ``/livez``, ``/readyz`` and ``/metrics``.

- ``/livez``: the process answers and the scheduler loop is alive. No external calls, so
  a slow database never gets the container restarted.
- ``/readyz``: configuration loaded, secrets resolvable, control database and storages
  reachable. A stale backup is an alert (see deploy/prometheus-alerts.yml), not a
  readiness failure: restarting the daemon would not make a backup newer.
- ``/metrics``: Prometheus text format: the catalog's metrics, then this process's own
  ``process_*`` metrics (CPU, memory, open files, start time; Linux only, as in every
  Prometheus client), which only the long-running daemon has a reason to export.

Every route answers ``HEAD`` with the headers ``GET`` would send and no body (load balancers
and uptime checkers probe with it). The standard library's threading HTTP server is enough for
three probes and a scrape.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

from opskit.core.errors import ConfigError
from opskit.core.log import get_logger

log = get_logger(__name__)

Check = Callable[[], tuple[bool, dict[str, Any]]]
Route = Callable[[], tuple[int, str, bytes]]

# Kept apart from the catalog's registry: `opskit metrics --textfile` must not write the CLI
# process's CPU and memory, which node_exporter would then serve as if they were the daemon's.
_PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=_PROCESS_REGISTRY)


def process_metrics() -> bytes:
    """Return this process's ``process_*`` metrics in the Prometheus text format (empty off Linux)."""
    return generate_latest(_PROCESS_REGISTRY)


class HealthServer:
    """Serves the three endpoints from a background thread."""

    def __init__(self, host: str, port: int, livez: Check, readyz: Check, metrics: Callable[[], bytes]) -> None:
        self.routes: dict[str, Route] = {
            "/livez": lambda: _json_check(livez),
            "/readyz": lambda: _json_check(readyz),
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics() + process_metrics()),
        }
        handler = _handler_for(self.routes)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="choose another address with --listen or daemon.listen",
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="opskit-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """Return the (host, port) actually bound (useful with port 0)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start serving in a daemon thread."""
        self._thread.start()
        host, port = self.address
        log.info("http listening", host=host, port=port, endpoints=sorted(self.routes))

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()


def _json_check(check: Check) -> tuple[int, str, bytes]:
    try:
        ok, detail = check()
    except Exception as exc:  # a failing probe is a 503 with a reason, never a crash
        ok, detail = False, {"error": f"{type(exc).__name__}: {exc}"}
    body = json.dumps({"ok": ok, **detail}, default=str).encode("utf-8") + b"\n"
    return (200 if ok else 503), "application/json", body


def _handler_for(routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "opskit"

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            # The same status and headers as GET (Content-Length included, RFC 9110 9.3.2), no body.
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                status, content_type, body = 404, "text/plain; charset=utf-8", b"not found\n"
            else:
                status, content_type, body = route()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes every few seconds would drown the job logs; errors still reach log_error.
            return

    return Handler
