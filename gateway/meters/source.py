"""The daemon's meter component: one source for serial and Bluetooth meters, one lock map, one progress path.

:class:`MeterSource` (component ``meters``) serves desk downloads (:class:`~gateway.desk.SerialSyncRequest`,
:class:`~gateway.desk.BleSyncRequest`, each only while its transport is enabled) and runs the transports'
own work through two small strategies it owns:

- :class:`SerialHotplug` (``meters.serial``): polls for cables plugged in and pulled out
  (:class:`~gateway.meters.discovery.PortWatcher`, every ``poll_interval_s``); a port with a known cable (or a
  configured port) is probed for its meter family at once and again every ``reprobe_interval_s`` (meters come
  and go on a cable that stays plugged in); unknown devices are left alone. With ``auto_sync`` a meter
  identified after being plugged in is downloaded once.
- :class:`BleScanning` (``meters.ble``): with ``auto_sync``, scans every ``auto_sync_interval_s`` and downloads
  every glucose meter (Glucose Service 0x1808) and blood pressure cuff (Blood Pressure Service 0x1810) in
  range not downloaded in the last ``auto_sync_cooldown_s`` seconds; a desk request names either by address
  (or ``gls:`` / ``bps:`` id), and the device's services say which driver downloads it.

Whatever the transport, a download is one :class:`~gateway.meters.session.DownloadSession` under the lock of
its link (port or Bluetooth address: a second request for a meter already downloading waits), with live
progress (n of N, :class:`~gateway.desk.MeterProgress`) on ``runtime.progress`` under the request id and the
meter's state (:class:`~gateway.desk.DeviceEntry`) on ``runtime.devices``; the patient comes from the
request, else the desk's meter link or the registry.

Device and protocol trouble never stops the component: the boards say what happened (errors as data), and the
next request, plug-in or scan tries again. Logs carry ports, addresses, meter ids and counts only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, Protocol

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.desk import (
    BleSyncRequest,
    DeskProgress,
    DeskState,
    DeviceEntry,
    DeviceKind,
    DeviceState,
    MeterProgress,
    MeterSyncRequest,
    SerialSyncRequest,
)
from gateway.errors import DeviceNotFound, ErrorInfo, GatewayError
from gateway.meters import BLE_ADDRESS, MeterDriver
from gateway.meters.discovery import PortWatcher, SeenPort, identify, open_driver, timeouts_from
from gateway.meters.session import DownloadSession, Progress, ProgressCallback, SessionResult
from gateway.runtime import Component, Runtime
from gateway.store import Store
from gateway.store import sessions as store_sessions
from gateway.store.db import new_id
from gateway.store.readings import meter_address

_logger = logging.getLogger(__name__)


async def sync_meter(
    target: str,
    *,
    config: GatewayConfig,
    store: Store,
    clock: Clock,
    patient_id: str | None = None,
    operator: str | None = None,
    session_id: str | None = None,
    on_progress: ProgressCallback | None = None,
    cuff_user: int | None = None,
) -> SessionResult:
    """Open the meter (or cuff) at ``target`` (serial port or Bluetooth address) and download what is new into the
    store; ``cuff_user``: on a multi-user cuff, the user whose measurements are the patient's.

    For the CLI and the tests: no component, no boards. Connection failures (not found, timeout, pairing
    refused) raise DeviceError before a session exists; everything after is reported in the SessionResult.
    """
    driver = await open_driver(target, config)
    session = DownloadSession.from_config(
        store, clock, driver, config,
        patient_id=patient_id, operator=operator, session_id=session_id, on_progress=on_progress,
        set_meter_clock=config.meters.serial.set_meter_clock and not BLE_ADDRESS.match(target), cuff_user=cuff_user,
    )  # fmt: skip
    return await session.run()


class Transport(Protocol):
    """The transport-specific part of the meter source: how a target is found and opened, and the transport's
    own background work (hotplug polling, scanning)."""

    @property
    def name(self) -> str:
        """``serial`` or ``ble``: the meters' ``transport`` on the devices board."""
        ...

    @property
    def request_type(self) -> type[MeterSyncRequest]:
        """The desk request this transport serves."""
        ...

    @property
    def wake_s(self) -> float:
        """The longest the source may sleep between two calls of :meth:`tick`."""
        ...

    @property
    def set_meter_clock(self) -> bool:
        """Whether a download sets the meter's clock (when it is wrong and the gateway's is trusted)."""
        ...

    def resolve(self, target: str) -> str:
        """The link (port, Bluetooth address) to open for ``target``; DeviceError when there is none."""
        ...

    async def open(self, link: str) -> MeterDriver:
        """Open the meter on ``link``."""
        ...

    async def tick(self) -> None:
        """The transport's background work, when due (the source calls it at least every ``wake_s``)."""
        ...

    def unreachable(self, link: str, error: ErrorInfo) -> None:
        """Opening ``link`` failed (for the devices board)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The transport's part of the status snapshot (no patient data)."""
        ...


class MeterSource:
    """Component ``meters``: serial and Bluetooth meters, from plug-in, scan or desk request to stored readings."""

    name = "meters"

    def __init__(self, runtime: Runtime, *, watcher: PortWatcher | None = None) -> None:
        self.runtime = runtime
        self.config = runtime.config
        meters = self.config.meters
        self.serial = (
            SerialHotplug(self, watcher or PortWatcher(meters.serial.ports)) if meters.serial.enabled else None
        )
        self.ble = BleScanning(self) if meters.ble.enabled else None
        self.transports: tuple[Transport, ...] = tuple(t for t in (self.serial, self.ble) if t is not None)
        self._locks: dict[str, asyncio.Lock] = {}
        """link (port or Bluetooth address) -> the lock one download at a time holds."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._beat = runtime.clock.monotonic()
        self.completed = 0
        self.results: deque[SessionResult] = deque(maxlen=20)

    @property
    def serves(self) -> tuple[type[MeterSyncRequest], ...]:
        """The desk requests served: one per enabled transport."""
        return tuple(t.request_type for t in self.transports)

    # -- Component ----------------------------------------------------------------------------------------
    @property
    def wake_s(self) -> float:
        """The loop's longest sleep: the most frequent transport's."""
        return min((t.wake_s for t in self.transports), default=5.0)

    def healthy(self) -> bool:
        """The loop beats at least every :attr:`wake_s`; much longer silence means it is stuck."""
        return self.runtime.clock.monotonic() - self._beat < max(60.0, 10 * self.wake_s)

    def snapshot(self) -> dict[str, Any]:
        """State for the status page (ports, addresses and meter ids only)."""
        state: dict[str, Any] = {}
        for transport in self.transports:
            state.update(transport.snapshot())
        state["downloading"] = sorted(link for link, lock in self._locks.items() if lock.locked())
        state["completed"] = self.completed
        return state

    async def run(self) -> None:
        """Serve desk requests and run the transports' background work until cancelled."""
        queues = [self.runtime.desk.queue(t) for t in self.serves]
        try:
            while True:
                self._beat = self.runtime.clock.monotonic()
                for transport in self.transports:
                    await transport.tick()
                for queue in queues:
                    while not queue.empty():
                        self.spawn(self.sync(queue.get_nowait()))
                await self._wait_for_request(queues, self.wake_s)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _wait_for_request(self, queues: list[asyncio.Queue[MeterSyncRequest]], timeout: float) -> None:
        getters = [asyncio.ensure_future(q.get()) for q in queues]
        if not getters:
            await asyncio.sleep(timeout)
            return
        try:
            done, _ = await asyncio.wait(getters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for getter in getters:
                if not getter.done():
                    getter.cancel()
        for getter in done:
            self.spawn(self.sync(getter.result()))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as one of the component's tasks (cancelled with it)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def lock(self, link: str) -> asyncio.Lock:
        """The lock of ``link``: one download (or probe) per port or address at a time."""
        return self._locks.setdefault(link, asyncio.Lock())

    def busy(self, link: str) -> bool:
        """True while ``link`` is being downloaded or probed."""
        lock = self._locks.get(link)
        return lock is not None and lock.locked()

    # -- boards ---------------------------------------------------------------------------------------------
    def device(self, meter_id: str, transport: Transport, state: DeviceState, **fields: Any) -> None:
        """Set a meter's state on the devices board, keeping what was known of it."""

        def change(old: DeviceEntry | None) -> DeviceEntry:
            base = old or DeviceEntry(kind=DeviceKind.METER, state=state, transport=transport.name)
            return replace(base, state=state, **fields)

        self.runtime.devices.update(meter_id, change)

    def _progress(self, request_id: str, **fields: Any) -> None:
        def change(old: DeskProgress | None) -> MeterProgress:
            base = old if isinstance(old, MeterProgress) else MeterProgress(state=DeskState.QUEUED)
            return replace(base, **fields)

        self.runtime.progress.update(request_id, change)

    def _on_progress(self, request_id: str, transport: Transport, **device_fields: Any) -> Callable[[Progress], None]:
        def on_progress(p: Progress) -> None:
            # The end (done, interrupted, failed) is said once, by download(), together with the counts (added,
            # other cuff users): a page polling for "finished" never sees the end without them.
            state = {} if p.state.finished else {"state": p.state}
            self._progress(request_id, meter_id=p.meter_id, done=p.done, total=p.total, **state)
            if p.meter_id:
                self.device(p.meter_id, transport, DeviceState.of_download(p.state), **device_fields)

        return on_progress

    # -- downloads ------------------------------------------------------------------------------------------
    def _transport_for(self, request: MeterSyncRequest) -> Transport:
        return next(t for t in self.transports if isinstance(request, t.request_type))

    async def sync(self, request: MeterSyncRequest) -> SessionResult | None:
        """Serve one desk download. Never raises GatewayError: the boards say what happened."""
        transport = self._transport_for(request)
        key = request.request_id
        self._progress(key, target=request.target)
        try:
            link = transport.resolve(request.target)
        except GatewayError as exc:
            self._failed(request, ErrorInfo.of(exc))
            return None
        async with self.lock(link):
            self._progress(key, state=DeskState.CONNECTING, done=0, total=None)
            try:
                driver = await transport.open(link)
            except GatewayError as exc:
                _logger.warning("meter at %s: %s: %s", link, type(exc).__name__, exc)
                error = ErrorInfo.of(exc)
                self._failed(request, error)
                transport.unreachable(link, error)
                return None
            return await self.download(driver, transport, request=request)

    def _failed(self, request: MeterSyncRequest, error: ErrorInfo) -> None:
        """A desk download that failed before the meter answered: on the progress board, and stored as a failed
        session so that the nurse's "Today's downloads" lists it with its reason."""
        self._progress(request.request_id, state=DeskState.FAILED, error=error)
        try:
            store_sessions.record_failed(
                self.runtime.store,
                "meter",
                session_id=request.request_id,
                error=str(error),
                patient_id=request.patient_id,
                operator=request.operator,
            )
        except GatewayError as exc:  # the store's own trouble is reported by the store's health, not here
            _logger.warning("failed download %s not recorded: %s", request.request_id, type(exc).__name__)

    async def download(self, driver: MeterDriver, transport: Transport, *, request: MeterSyncRequest) -> SessionResult:
        """Download an opened meter (the caller holds its link's lock); the one progress path for every
        transport and every reason (desk request, plug-in, scan)."""
        device_fields = {"address": request.target} if isinstance(transport, BleScanning) else {}
        cuff_user = request.cuff_user if isinstance(request, BleSyncRequest) else None
        session = DownloadSession.from_config(
            self.runtime.store,
            self.runtime.clock,
            driver,
            self.config,
            patient_id=request.patient_id,
            operator=request.operator,
            set_meter_clock=transport.set_meter_clock,
            on_progress=self._on_progress(request.request_id, transport, **device_fields),
            session_id=request.request_id,
            cuff_user=cuff_user,
        )
        result = await session.run()
        self.completed += 1
        self.results.append(result)
        self._progress(
            request.request_id,
            state=result.state,
            error=result.error,
            added=result.added,
            duplicates=result.duplicates,
            other_users=result.other_users,
            shared_cuff=result.shared_cuff,
        )
        if result.meter is not None:
            self.device(
                result.meter.meter_id, transport, DeviceState.of_download(result.state), last_error=result.error,
                family=result.meter.family,
            )  # fmt: skip
        _logger.info(
            "meter %s download %s: %s, %d received, %d new",
            None if result.meter is None else result.meter.meter_id,
            result.session_id,
            result.state,
            result.received,
            result.added,
        )
        return result


class SerialHotplug:
    """USB-serial meters: hotplug polling, family probing, auto-sync after plug-in (``meters.serial``)."""

    name = "serial"
    request_type = SerialSyncRequest

    def __init__(self, source: MeterSource, watcher: PortWatcher) -> None:
        self.source = source
        self.section = source.config.meters.serial
        self.watcher = watcher
        self.wake_s = self.section.poll_interval_s
        self.set_meter_clock = self.section.set_meter_clock
        self._attached: dict[str, str] = {}
        """port -> meter_id of meters identified and still plugged in."""
        self._families: dict[str, str] = {}
        """port -> family last identified there (probed first next time)."""
        self._last_probe: dict[str, float] = {}
        self._ignored: set[str] = set()

    def snapshot(self) -> dict[str, Any]:
        """Ports present and the meters on them."""
        return {"ports": sorted(self.watcher.present), "meters": dict(sorted(self._attached.items()))}

    def resolve(self, target: str) -> str:
        """A port for ``target``: a port itself, or the meter id of a meter plugged in now."""
        for port, meter_id in self._attached.items():
            if target == meter_id:
                return port
        if target.startswith("/") or "://" in target:
            return target
        raise DeviceNotFound(f"meter {target} is not plugged in", device_id=target)

    async def open(self, link: str) -> MeterDriver:
        """The meter on ``link``: its known family first when it is still attached, else every candidate."""
        config = self.source.config
        family = self._families.get(link)
        if family is not None and link in self._attached:
            return await identify(link, (family,), timeouts_from(config))
        return await open_driver(link, config)

    def unreachable(self, link: str, error: ErrorInfo) -> None:
        """Nothing to note: the next poll says whether a meter is on the port."""

    async def tick(self) -> None:
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
        now = self.source.runtime.clock.monotonic()
        interval = self.section.reprobe_interval_s
        for path, port in self.watcher.present.items():
            if self.source.busy(path) or now - self._last_probe.get(path, -interval) < interval:
                continue
            self._last_probe[path] = now
            self.source.spawn(self._check(port))

    def _gone(self, path: str) -> None:
        meter_id = self._attached.pop(path, None)
        if meter_id:
            _logger.info("meter %s left %s", meter_id, path)
            self.source.device(meter_id, self, DeviceState.UNPLUGGED, port=None)

    async def _check(self, port: SeenPort) -> None:
        if not port.families:
            if port.path not in self._ignored:
                self._ignored.add(port.path)
                _logger.info("serial port %s (%s) is not a meter cable; left alone", port.path, port.description)
            return
        known = self._families.get(port.path)
        families = (known, *(f for f in port.families if f != known)) if known else port.families
        async with self.source.lock(port.path):
            try:
                driver = await identify(port.path, families, timeouts_from(self.source.config))
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
            self.source.device(info.meter_id, self, DeviceState.CONNECTED, family=info.family, port=port.path)
            _logger.info("meter %s on %s", info.meter_id, port.path)
            if not self.section.auto_sync:
                await driver.close()
                return
            await self.source.download(driver, self, request=SerialSyncRequest(request_id=new_id(), target=port.path))


class BleScanning:
    """Bluetooth LE meters and cuffs: addresses of known devices, and auto-sync by scanning (``meters.ble``)."""

    name = "ble"
    request_type = BleSyncRequest
    set_meter_clock = False  # a GLS meter's (and a cuff's) Current Time is read-only

    def __init__(self, source: MeterSource) -> None:
        self.source = source
        self.section = source.config.meters.ble
        self.wake_s = 5.0  # tick() itself decides when a scan is due
        self._last_sync: dict[str, float] = {}
        self._next_scan = source.runtime.clock.monotonic()
        self._scanning = False

    def snapshot(self) -> dict[str, Any]:
        """The adapter and whether auto-sync is on."""
        return {"adapter": self.section.adapter, "auto_sync": self.section.auto_sync}

    def resolve(self, target: str) -> str:
        """A Bluetooth address for ``target`` (an address, or a ``gls:`` / ``bps:`` id the store has seen)."""
        if BLE_ADDRESS.match(target):
            return target.upper()
        address = meter_address(self.source.runtime.store, target)
        if address is None or not BLE_ADDRESS.match(address):
            raise DeviceNotFound(f"meter {target} has no known Bluetooth address", device_id=target)
        return address

    async def open(self, link: str) -> MeterDriver:
        """Connect to the meter or cuff at address ``link`` (its services say which)."""
        from gateway.meters.drivers import bluetooth  # bleak only where a device is really opened

        driver = await bluetooth.open_driver(link, self.source.config)
        self._last_sync[link] = self.source.runtime.clock.monotonic()
        return driver

    def unreachable(self, link: str, error: ErrorInfo) -> None:
        """A meter that could not be connected is shown as such (by its address: its id is unknown)."""
        self.source.device(f"ble:{link}", self, DeviceState.UNREACHABLE, last_error=error)

    async def tick(self) -> None:
        """Start an auto-sync scan when one is due (in its own task: the loop keeps serving the desk)."""
        now = self.source.runtime.clock.monotonic()
        if not self.section.auto_sync or self._scanning or now < self._next_scan:
            return
        self._scanning = True
        self.source.spawn(self._auto_sync_once())

    async def _auto_sync_once(self) -> None:
        from gateway.meters.drivers import bluetooth

        try:
            found = await bluetooth.scan(self.source.config)
        except GatewayError as exc:
            _logger.warning("BLE auto-sync scan failed: %s: %s", type(exc).__name__, exc)
            found = []
        finally:
            self._scanning = False
            self._next_scan = self.source.runtime.clock.monotonic() + self.section.auto_sync_interval_s
        cooldown = self.section.auto_sync_cooldown_s
        now = self.source.runtime.clock.monotonic()
        for meter in found:
            last = self._last_sync.get(meter.address)
            if (last is not None and now - last < cooldown) or self.source.busy(meter.address):
                continue
            self.source.spawn(self.source.sync(BleSyncRequest(request_id=new_id(), target=meter.address)))


def components(runtime: Runtime) -> list[Component]:
    """The meter component when ``meters.serial`` or ``meters.ble`` is enabled."""
    meters = runtime.config.meters
    return [MeterSource(runtime)] if meters.serial.enabled or meters.ble.enabled else []


__all__ = ["BleScanning", "MeterSource", "SerialHotplug", "Transport", "components", "sync_meter"]
