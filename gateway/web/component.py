"""The pages inside the daemon: waitress in a thread (DESIGN §4), and the queue-depth sampler for the chart.

``components(runtime)`` returns both, or nothing when ``web.enabled`` is false. The web component builds
the app when it starts (a bad secret file is then a component failure the supervisor reports and
retries, not a daemon crash), serves on ``web.host:web.port`` (port 0: any free port, see ``port``), and
closes the server when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server

from gateway.errors import GatewayError
from gateway.runtime import Component, Runtime
from gateway.services import GatewayServices

_logger = logging.getLogger(__name__)

WEB_THREADS = 8
"""Waitress worker threads: a few desks, each with a preview stream and a polling script."""
LOOP_TIMEOUT_S = 1
"""Waitress's select() timeout, in whole seconds: waitress reads it as an int, so 0.5 became 0 and its loop
polled ~30,000 times a second (a whole core). New connections and the close trigger wake the loop at once;
the timeout only bounds how late idle-channel housekeeping runs."""
SAMPLE_INTERVAL_S = 60.0
SAMPLE_KEEP_HOURS = 24.0


class WebServer:
    """Component ``web``: the Flask app served by waitress in a thread."""

    name = "web"

    def __init__(self, runtime: Runtime, services: GatewayServices | None = None) -> None:
        self.runtime = runtime
        self.services = services or GatewayServices(runtime)
        self.port: int | None = None
        """The bound port once serving (useful with ``web.port = 0``)."""
        self.started = threading.Event()
        self.app: Flask | None = None
        """The app being served (tests adjust its config)."""
        self._thread: threading.Thread | None = None
        self._server: BaseWSGIServer | MultiSocketServer | None = None

    def healthy(self) -> bool:
        """True while the server thread runs (and before the first start)."""
        return self._thread is None or self._thread.is_alive()

    def snapshot(self) -> dict[str, Any]:
        """Where the pages are served (no patient data)."""
        web = self.runtime.config.web
        return {"host": web.host, "port": self.port, "serving": self._thread is not None and self._thread.is_alive()}

    async def run(self) -> None:
        """Serve until cancelled."""
        from gateway.web.app import create_app

        web = self.runtime.config.web
        app = self.app = create_app(self.services, self.runtime.config)
        try:
            server = create_server(
                app,
                host=web.host,
                port=web.port,
                threads=WEB_THREADS,
                ident="clinic-gateway",
                asyncore_loop_timeout=LOOP_TIMEOUT_S,
                # Read ahead on a connection while its request runs: a closed tab is noticed at once, and an
                # event stream (gateway.web.push) sees it through ``waitress.client_disconnected``.
                channel_request_lookahead=1,
                clear_untrusted_proxy_headers=True,
                **proxy_settings(web.trusted_proxy),
            )
        except OSError as exc:
            raise GatewayError(f"web: cannot listen on {web.host}:{web.port}: {exc.strerror}") from exc
        self._server = server
        raw: Any = server  # the types-waitress stubs lack effective_port, _map and the trigger's methods
        self.port = int(raw.effective_port) if isinstance(server, BaseWSGIServer) else web.port
        thread = threading.Thread(target=server.run, name="web-waitress", daemon=True)
        self._thread = thread
        thread.start()
        self.started.set()
        _logger.info("pages served on http://%s:%s/", web.host, self.port)
        try:
            while thread.is_alive():
                await asyncio.sleep(1.0)
            raise GatewayError("web: the server thread stopped")
        finally:
            _stop(server)
            await asyncio.to_thread(thread.join, 5.0)
            self.started.clear()


PROXY_HEADERS = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
"""What config/nginx/clinic-gateway.conf sets (the host carries the port the browser used)."""


def proxy_settings(trusted_proxy: str | None) -> dict[str, Any]:
    """Waitress settings that believe the ``X-Forwarded-*`` headers of one reverse proxy (and nobody else's).

    Behind the installed nginx (docs/operations.md), the client's address then reaches the login limits
    and ``https`` reaches Flask, so secure cookies and redirects work; from any other peer the headers are
    removed (``clear_untrusted_proxy_headers``) so a client cannot claim another address or scheme.
    """
    if trusted_proxy is None:
        return {}
    return {"trusted_proxy": trusted_proxy, "trusted_proxy_count": 1, "trusted_proxy_headers": set(PROXY_HEADERS)}


def _stop(server: BaseWSGIServer | MultiSocketServer) -> None:
    """Close the listening socket(s) and connections, and stop the worker threads."""
    if isinstance(server, MultiSocketServer):
        server.close()
        return
    raw: Any = server  # see WebServer.run about the stubs
    channels = raw._map  # the loop ends when its map is empty

    def close_all() -> None:
        wasyncore.close_all(channels)

    # Close from inside the loop's own thread (the trigger runs the call there), so the loop never
    # polls a half-closed map; then stop the task threads.
    with contextlib.suppress(OSError):  # the trigger is already closed: the loop is gone
        raw.trigger.pull_trigger(close_all)
    raw.task_dispatcher.shutdown(timeout=2)


class QueueSampler:
    """Component ``web-sampler``: outbox depth once a minute, for the status page's chart and drain rate."""

    name = "web-sampler"

    def __init__(self, runtime: Runtime, services: GatewayServices, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.runtime = runtime
        self.services = services
        self.interval_s = interval_s
        self._beat = runtime.clock.monotonic()

    def healthy(self) -> bool:
        return self.runtime.clock.monotonic() - self._beat < max(5 * self.interval_s, 300.0)

    async def run(self) -> None:
        while True:
            self._beat = self.runtime.clock.monotonic()
            try:
                self.services.sample_queue(keep_hours=SAMPLE_KEEP_HOURS)
            except GatewayError as exc:  # a busy or full store only costs a point on the chart
                _logger.warning("queue sample skipped: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.interval_s)


def components(runtime: Runtime) -> list[Component]:
    """The pages and their sampler, or nothing when ``web.enabled`` is false."""
    if not runtime.config.web.enabled:
        return []
    services = GatewayServices(runtime)
    return [WebServer(runtime, services), QueueSampler(runtime, services)]
