"""The daemon's USB-serial meter component: hotplug, identification, download through DownloadSession.

Supports:

- polling for cables plugged in and pulled out (:class:`~gateway.meters.discovery.PortWatcher`, every
  ``meters.serial.poll_interval_s``); a port with a known cable (or a configured port) is probed for its meter
  family at once and again every ``reprobe_interval_s`` (meters come and go on a cable that stays plugged
  in); unknown devices are left alone; each meter's state goes to ``runtime.devices``;
- ``meters.serial.auto_sync``: a meter identified after being plugged in is downloaded once (patient from
  the desk's meter link or the registry);
- desk requests of kind :data:`SERIAL_SYNC_KIND` (and the generic ``meter_sync``) on the DeskBus, ``params`` =
  ``target`` (a port, a serial meter id, or a Bluetooth address, dispatched by
  :func:`~gateway.meters.discovery.open_driver`), ``patient_id``, ``session_id``; live progress (n of N) on
  ``runtime.progress`` under the session id.

One download per port at a time. Device and protocol trouble never stops the component: the session result
says what happened, and the next plug-in or request tries again. Logs carry ports, meter ids and counts only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.errors import DeviceNotFound, GatewayError
from gateway.meters import BLE_ADDRESS, MeterDriver
from gateway.meters.discovery import PortWatcher, SeenPort, identify, open_driver, timeouts_from
from gateway.meters.drivers import SerialDriver
from gateway.meters.session import DownloadSession, SessionResult, board_progress, post_result
from gateway.runtime import Component, DeskRequest, Runtime

_logger = logging.getLogger(__name__)

SERIAL_SYNC_KIND = "meter_sync.serial"
"""DeskBus request kind served here."""


class SerialMeterSource:
    """Component: USB-serial meters, from plug-in to stored readings."""

    name = "serial-meters"

    def __init__(self, runtime: Runtime, *, watcher: PortWatcher | None = None) -> None:
        self.runtime = runtime
        self.config = runtime.config
        section = self.config.meters.serial
        self.watcher = watcher or PortWatcher(section.ports)
        self._beat = runtime.clock.monotonic()
        self._locks: dict[str, asyncio.Lock] = {}
        self._attached: dict[str, str] = {}
        """port -> meter_id of meters identified and still plugged in."""
        self._families: dict[str, str] = {}
        """port -> family last identified there (probed first next time)."""
        self._last_probe: dict[str, float] = {}
        self._ignored: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.completed = 0
        self.results: list[SessionResult] = []

    # -- Component ----------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """The poll loop beats every ``poll_interval_s``; much longer silence means it is stuck."""
        slack = max(30.0, 10 * self.config.meters.serial.poll_interval_s)
        return self.runtime.clock.monotonic() - self._beat < slack

    def snapshot(self) -> dict[str, Any]:
        """State for the status page (ports and meter ids only)."""
        return {
            "ports": sorted(self.watcher.present),
            "meters": dict(sorted(self._attached.items())),
            "downloading": sorted(p for p, lock in self._locks.items() if lock.locked()),
            "completed": self.completed,
        }

    async def run(self) -> None:
        queues = [self.runtime.desk.queue(SERIAL_SYNC_KIND)]
        interval = self.config.meters.serial.poll_interval_s
        try:
            while True:
                self._beat = self.runtime.clock.monotonic()
                await self.poll_once()
                for queue in queues:
                    while not queue.empty():
                        self._spawn(self._serve(queue.get_nowait()))
                await self._wait_for_request(queues, interval)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _wait_for_request(self, queues: list[asyncio.Queue[DeskRequest]], timeout: float) -> None:
        getters = [asyncio.ensure_future(q.get()) for q in queues]
        try:
            done, _ = await asyncio.wait(getters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for getter in getters:
                if not getter.done():
                    getter.cancel()
        for getter in done:
            self._spawn(self._serve(getter.result()))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- hotplug ----------------------------------------------------------------------------------------------
    async def poll_once(self) -> None:
        """One hotplug poll: note cables pulled out, and ask each meter cable which meter is on it.

        A meter cable often stays in the gateway while meters are plugged into its jack and taken away, so
        a port present for a while is probed again every ``reprobe_interval_s``: a new meter is identified
        (and downloaded with auto-sync), a meter that stopped answering is marked gone.
        """
        try:
            _, removed = await asyncio.to_thread(self.watcher.poll)
        except OSError as exc:  # listing /sys failed: try again next poll
            _logger.warning("listing serial ports failed: %s", exc)
            return
        for path in removed:
            self._last_probe.pop(path, None)
            self._gone(path)
        now = self.runtime.clock.monotonic()
        interval = self.config.meters.serial.reprobe_interval_s
        for path, port in self.watcher.present.items():
            lock = self._locks.get(path)
            if (lock is not None and lock.locked()) or now - self._last_probe.get(path, -interval) < interval:
                continue
            self._last_probe[path] = now
            self._spawn(self._check(port))

    def _gone(self, path: str) -> None:
        meter_id = self._attached.pop(path, None)
        if meter_id:
            _logger.info("meter %s left %s", meter_id, path)
            self.runtime.devices.put(meter_id, kind="meter", transport="serial", state="unplugged", port=None)

    async def _check(self, port: SeenPort) -> None:
        if not port.families:
            if port.path not in self._ignored:
                self._ignored.add(port.path)
                _logger.info("serial port %s (%s) is not a meter cable; left alone", port.path, port.description)
            return
        known = self._families.get(port.path)
        families = (known, *(f for f in port.families if f != known)) if known else port.families
        lock = self._locks.setdefault(port.path, asyncio.Lock())
        async with lock:
            try:
                driver = await identify(port.path, families, timeouts_from(self.config))
            except GatewayError as exc:
                _logger.debug("serial port %s: no meter identified: %s", port.path, exc)
                self._gone(port.path)
                return
            info = await driver.read_info()
            if self._attached.get(port.path) == info.meter_id:
                await driver.close()  # the same meter, still there: already handled
                return
            self._attached[port.path] = info.meter_id
            self._families[port.path] = info.family
            self.runtime.devices.put(
                info.meter_id, kind="meter", transport="serial", family=info.family, state="connected", port=port.path
            )
            _logger.info("meter %s on %s", info.meter_id, port.path)
            if not self.config.meters.serial.auto_sync:
                await driver.close()
                return
            await self._download(driver, target=port.path, patient_id=None, operator=None, session_id=None)

    # -- downloads ----------------------------------------------------------------------------------------------
    async def _serve(self, request: DeskRequest) -> None:
        params = request.params
        await self.sync(
            str(params.get("target", "")),
            patient_id=params.get("patient_id"),
            operator=request.operator,
            session_id=str(params.get("session_id") or request.request_id),
        )

    def resolve_target(self, target: str) -> str:
        """A port or Bluetooth address for ``target`` (also accepts the meter id of a plugged-in meter)."""
        for port, meter_id in self._attached.items():
            if target == meter_id:
                return port
        if BLE_ADDRESS.match(target) or target.startswith("/"):
            return target
        address = self.runtime.store.scalar("SELECT address FROM meters WHERE meter_id = ?", [target])
        if address and BLE_ADDRESS.match(str(address)):
            return str(address)
        raise DeviceNotFound(f"meter {target} is not plugged in", device_id=target)

    async def sync(
        self,
        target: str,
        *,
        patient_id: str | None = None,
        operator: str | None = None,
        session_id: str | None = None,
    ) -> SessionResult | None:
        """Desk request: download the meter at ``target``. Never raises GatewayError (the boards say why)."""
        progress = self.runtime.progress
        key = session_id or f"serial:{target}"
        try:
            resolved = self.resolve_target(target)
        except GatewayError as exc:
            progress.put(key, kind="meter", target=target, state="failed", error=f"{type(exc).__name__}: {exc}")
            return None
        lock = self._locks.setdefault(resolved, asyncio.Lock())
        async with lock:
            progress.put(key, kind="meter", target=target, state="connecting", done=0, total=None)
            try:
                family = self._families.get(resolved)
                if family is not None and resolved in self._attached:
                    driver: MeterDriver = await identify(resolved, (family,), timeouts_from(self.config))
                else:
                    driver = await open_driver(resolved, self.config)
            except GatewayError as exc:
                _logger.warning("meter at %s: %s: %s", resolved, type(exc).__name__, exc)
                progress.put(key, kind="meter", target=target, state="failed", error=f"{type(exc).__name__}: {exc}")
                return None
            return await self._download(
                driver, target=target, patient_id=patient_id, operator=operator, session_id=session_id
            )

    async def _download(
        self,
        driver: MeterDriver,
        *,
        target: str,
        patient_id: str | None,
        operator: str | None,
        session_id: str | None,
    ) -> SessionResult:
        transport = "serial" if isinstance(driver, SerialDriver) else "ble"
        session = DownloadSession.from_config(
            self.runtime.store,
            self.runtime.clock,
            driver,
            self.config,
            patient_id=patient_id,
            operator=operator,
            set_meter_clock=self.config.meters.serial.set_meter_clock,
            on_progress=board_progress(self.runtime, target=target, transport=transport),
            session_id=session_id,
        )
        result = await session.run()
        self.completed += 1
        self.results.append(result)
        del self.results[:-20]
        post_result(self.runtime, result, target=target)
        if result.meter is not None:
            self.runtime.devices.put(result.meter.meter_id, kind="meter", transport=transport, state=result.state,
                        last_error=None if result.error is None else result.error.split(":")[0])  # fmt: skip
        _logger.info(
            "meter %s download %s: %s, %d received, %d new",
            None if result.meter is None else result.meter.meter_id,
            result.session_id,
            result.state,
            result.received,
            result.added,
        )
        return result


def components(runtime: Runtime) -> list[Component]:
    """The serial meter component when ``meters.serial.enabled``."""
    return [SerialMeterSource(runtime)] if runtime.config.meters.serial.enabled else []


__all__ = ["SERIAL_SYNC_KIND", "SerialMeterSource", "components"]
