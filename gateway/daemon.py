"""The gateway daemon: an asyncio supervisor of components, with systemd notify and watchdog.

Each area contributes components through a module-level ``components(runtime) -> list[Component]``
function listed in ``COMPONENT_FACTORIES`` (returning ``[]`` when its config section is disabled).
The runtime it builds them from is :func:`gateway.runtime.open_runtime`.
A component that fails with a GatewayError is logged, recorded as an event and restarted with backoff;
the daemon itself keeps running. SIGTERM/SIGINT cancel every component (each finishes or abandons its
in-flight work safely: everything is in SQLite before it is sent) and the daemon exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable

from gateway import __version__, health, notify, retention
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.forward import forwarder
from gateway.meters import source as meter_source
from gateway.retina import service as retina_service
from gateway.runtime import Component, ComponentFactory, DeskServer, Runtime, open_runtime
from gateway.store.events import add_event
from gateway.store.instance import exclusive_store
from gateway.store.outbox import Outbox
from gateway.web import component as web_component

_logger = logging.getLogger(__name__)

COMPONENT_FACTORIES: tuple[ComponentFactory, ...] = (
    forwarder.components,
    health.components,
    retention.components,
    meter_source.components,
    retina_service.components,
    web_component.components,
)
"""Each area's parts, in start order. Demo-only sources (``gateway.emulate.synthetic``) are added by whoever
runs the daemon for a demo or a test, through ``run_daemon(factories=...)``."""

RESTART_BACKOFF_MAX_S = 30.0


def build_components(runtime: Runtime, factories: Iterable[ComponentFactory] = COMPONENT_FACTORIES) -> list[Component]:
    """Ask each area's ``components(runtime)`` for its parts, and open the desk queue of every request type a
    part declares it serves (so the pages can ask from the first moment, before the part's loop runs)."""
    built: list[Component] = []
    for factory in factories:
        built.extend(factory(runtime))
    for component in built:
        if isinstance(component, DeskServer):
            for request_type in component.serves:
                runtime.desk.queue(request_type)
    return built


async def _supervise(component: Component, runtime: Runtime, stop: asyncio.Event) -> None:
    """Run a component; on GatewayError (or a bug) log, record it (event, status page) and restart with backoff.

    What a component had taken but not finished is not lost by the restart: everything is in SQLite before
    it is sent, and the forwarder acknowledges a downlink message to the broker only after storing it.
    """
    delay = 1.0
    while not stop.is_set():
        started = asyncio.get_running_loop().time()
        try:
            await component.run()
            return
        except asyncio.CancelledError:
            raise
        except GatewayError as exc:
            _logger.error("component %s failed: %s: %s", component.name, type(exc).__name__, exc)
            kind = "component_failed"
            message = f"{component.name} failed: {type(exc).__name__}"
            error: Exception = exc
        except Exception as exc:
            _logger.exception("component %s crashed (bug)", component.name)
            kind = "component_crashed"
            message = f"{component.name} crashed: {type(exc).__name__}"
            error = exc
        if asyncio.get_running_loop().time() - started > 60:
            delay = 1.0
        record = runtime.supervision.failed(
            component.name, error, runtime.clock.utc_now(), bug=kind == "component_crashed"
        )
        with contextlib.suppress(GatewayError):
            add_event(
                runtime.store,
                kind,
                message,
                level="error",
                detail={"component": component.name, "error": type(error).__name__, "restarts": record.restarts,
                        "restart_in_s": delay},
            )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(delay * 2, RESTART_BACKOFF_MAX_S)


async def _report_status(runtime: Runtime, notifier: notify.Notifier, stop: asyncio.Event) -> None:
    """Keep systemd's one-line STATUS current (outbox depth, unhealthy components)."""
    outbox = Outbox(runtime.store)
    last = ""
    while not stop.is_set():
        try:
            stats = outbox.stats()
            text = f"outbox {stats.total_unsent} unsent, {stats.parked} parked"
        except GatewayError as exc:
            text = f"store error: {type(exc).__name__}"
        unhealthy = [c.name for c in runtime.components if not c.healthy()]
        if unhealthy:
            text += "; unhealthy: " + ", ".join(unhealthy)
        if text != last:
            notifier.status(text)
            last = text
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=5.0)


async def run_daemon(
    config: GatewayConfig,
    *,
    runtime: Runtime | None = None,
    stop: asyncio.Event | None = None,
    factories: Iterable[ComponentFactory] = COMPONENT_FACTORIES,
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Returns the exit code.

    Holds the store's instance lock from before the store is opened until it is closed: a second daemon
    (or ``gateway import``) on the same store refuses with :class:`~gateway.store.instance.StoreInUse`.
    """
    with exclusive_store(config.db_path, "the gateway daemon"):
        return await _run(config, runtime or open_runtime(config), stop or asyncio.Event(), factories)


async def _run(
    config: GatewayConfig, runtime: Runtime, stop: asyncio.Event, factories: Iterable[ComponentFactory]
) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runtime.desk.bind(loop)
    runtime.components = build_components(runtime, factories)
    _logger.info(
        "gateway %s starting: site %s gateway %s, %d components (%s)",
        __version__, config.gateway.site_id, config.gateway.gateway_id, len(runtime.components),
        ", ".join(c.name for c in runtime.components),
    )  # fmt: skip
    tasks = [asyncio.create_task(_supervise(c, runtime, stop), name=c.name) for c in runtime.components]
    notifier = runtime.notifier = notify.Notifier()
    watchdog = notify.Watchdog(notifier, lambda: all(c.healthy() for c in runtime.components))
    tasks.append(asyncio.create_task(watchdog.run(), name="watchdog"))
    tasks.append(asyncio.create_task(_report_status(runtime, notifier, stop), name="status"))
    notifier.ready(f"running {len(runtime.components)} components")
    try:
        await stop.wait()
    finally:
        _logger.info("gateway stopping")
        notifier.stopping()
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                _logger.error("component %s ended with %s", task.get_name(), type(result).__name__)
        runtime.store.close()
        _logger.info("gateway stopped")
    return 0
