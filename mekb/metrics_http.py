"""/metrics and /healthz of the processes that run no web framework (stream worker,
trainer): a stdlib HTTP server on a daemon thread, so a scrape is answered even while
the event loop or a training step holds the CPU."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[int, bytes]]


def serve(
    host: str, port: int, registry: CollectorRegistry, health: HealthCheck, *, name: str
) -> ThreadingHTTPServer:
    """Serve GET /metrics (Prometheus text format) and GET /healthz (alias /health, the
    JSON body and status of `health()`) on host:port; port 0 picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
            elif path in ("/healthz", "/health"):
                status, body = health()
                ctype = "application/json"
            else:
                status, body, ctype = 404, b"not found\n", "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            logger.debug(format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=f"{name}-http", daemon=True).start()
    return server
