"""The gateway daemon: an asyncio supervisor of components, with systemd notify and watchdog.

Each area contributes components through a module-level ``components(runtime) -> list[Component]``
function listed in ``COMPONENT_FACTORIES`` (returning ``[]`` when its config section is disabled).
A component that fails with a GatewayError is logged, recorded as an event and restarted with backoff;
the daemon itself keeps running. SIGTERM/SIGINT cancel every component (each finishes or abandons its
in-flight work safely: everything is in SQLite before it is sent) and the daemon exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import signal
from collections.abc import Iterable

from gateway import __version__, notify
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.records import GlucoseReading, Unit
from gateway.runtime import Component, Runtime
from gateway.store import open_store
from gateway.store.db import Origin
from gateway.store.events import add_event
from gateway.store.instance import exclusive_store
from gateway.store.outbox import Outbox
from gateway.store.readings import add_readings, upsert_meter

_logger = logging.getLogger(__name__)

COMPONENT_FACTORIES: tuple[str, ...] = (
    "gateway.forward.forwarder",
    "gateway.health",
    "gateway.meters.serial_source",
    "gateway.meters.ble_source",
    "gateway.retina.service",
    "gateway.web.component",
    "gateway.daemon",  # the demo's synthetic reading source, below
)

RESTART_BACKOFF_MAX_S = 30.0


def open_runtime(config: GatewayConfig, clock: Clock | None = None) -> Runtime:
    """Open the store and build the Runtime context for ``config``."""
    clock = clock or SystemClock(config.clock.sync_check, config.clock.sync_file)
    store = open_store(
        config.db_path,
        config.image_dir,
        clock=clock,
        origin=Origin(config.gateway.site_id, config.gateway.gateway_id, config.forward.payload_format),
        min_free_mb=config.store.min_free_mb,
        low_disk_warn_mb=config.store.low_disk_warn_mb,
        max_page_count=config.store.max_page_count,
    )
    return Runtime(
        config=config, store=store, clock=clock, started_at=clock.utc_now(), started_monotonic=clock.monotonic()
    )


def build_components(runtime: Runtime, factories: Iterable[str] = COMPONENT_FACTORIES) -> list[Component]:
    """Ask each area's ``components(runtime)`` for its parts."""
    built: list[Component] = []
    for module_name in factories:
        module = importlib.import_module(module_name)
        built.extend(module.components(runtime))
    return built


class SyntheticReadings:
    """Demo source: a pretend meter that takes a reading every ``interval`` seconds.

    Stands in for real meters in the demo and drives the crash tests' ingest. Values follow a plausible
    daily curve with noise; the meter numbers its records, so identity is ``(meter_id, sequence)``.
    """

    name = "synthetic-readings"

    def __init__(self, runtime: Runtime, interval_s: float, meter_id: str = "synthetic:demo-0001") -> None:
        self.runtime = runtime
        self.interval_s = interval_s
        self.meter_id = meter_id
        self._beat = runtime.clock.monotonic()
        self._rng = random.Random(7)

    def healthy(self) -> bool:
        return self.runtime.clock.monotonic() - self._beat < max(30.0, 10 * self.interval_s)

    async def run(self) -> None:
        from gateway.records import MeterInfo
        from gateway.store.readings import last_sequence

        store = self.runtime.store
        upsert_meter(store, MeterInfo(meter_id=self.meter_id, family="synthetic", transport="none", serial="demo-0001"))
        seq = last_sequence(store, self.meter_id) or 0
        while True:
            self._beat = self.runtime.clock.monotonic()
            seq += 1
            now = self.runtime.clock.utc_now()
            value = round(max(2.5, self._rng.gauss(7.5, 2.5)), 1)
            reading = GlucoseReading(
                meter_id=self.meter_id,
                sequence=seq,
                meter_time=now.replace(tzinfo=None),
                clock_offset_s=0.0,
                corrected_time=now,
                time_trusted=self.runtime.clock.is_synchronised(),
                value=value,
                unit=Unit.MMOL_L,
                patient_id=f"DEMO-{(seq % 5) + 1:04d}",
            )
            add_readings(store, [reading])
            await asyncio.sleep(self.interval_s)


def components(runtime: Runtime) -> list[Component]:
    """The daemon's own components (the demo's synthetic source when configured)."""
    demo = runtime.config.demo
    return [SyntheticReadings(runtime, demo.synthetic_interval_s)] if demo.synthetic_readings else []


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
    factories: Iterable[str] = COMPONENT_FACTORIES,
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set). Returns the exit code.

    Holds the store's instance lock from before the store is opened until it is closed: a second daemon
    (or ``gateway import``) on the same store refuses with :class:`~gateway.store.instance.StoreInUse`.
    """
    with exclusive_store(config.db_path, "the gateway daemon"):
        return await _run(config, runtime or open_runtime(config), stop or asyncio.Event(), factories)


async def _run(config: GatewayConfig, runtime: Runtime, stop: asyncio.Event, factories: Iterable[str]) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    runtime.desk.bind(loop)
    requeued = Outbox(runtime.store).requeue_all_sent()
    runtime.components = build_components(runtime, factories)
    _logger.info(
        "gateway %s starting: site %s gateway %s, %d components (%s), %d messages requeued",
        __version__, config.gateway.site_id, config.gateway.gateway_id, len(runtime.components),
        ", ".join(c.name for c in runtime.components), requeued,
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
