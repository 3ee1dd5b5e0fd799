"""The daemon's Bluetooth LE meter component: desk sync requests (and optional auto-sync) through DownloadSession.

Supports:

- desk requests of kind :data:`BLE_SYNC_KIND` on the runtime's DeskBus, ``params`` = ``target`` (a Bluetooth
  address, or a known ``gls:<serial>`` meter id), ``patient_id``, ``session_id``; live progress (n of N) on
  ``runtime.progress`` under the session id, the meter's state on ``runtime.devices``;
- several meters at once (one task per meter; a second request for a meter already downloading waits);
- ``meters.ble.auto_sync``: scan every ``auto_sync_interval_s`` and download every GLS meter in range that was
  not downloaded in the last ``auto_sync_cooldown_s`` seconds (patient from the meter registry / desk link).

Device and protocol trouble never stops the component: the session result says what happened, and the next
request (or scan) tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.errors import DeviceError, GatewayError
from gateway.meters import BLE_ADDRESS, SYNC_KIND_BLE, is_ble_target
from gateway.meters.session import DownloadSession, Progress, SessionResult, board_progress, post_result
from gateway.runtime import Component, DeskRequest, Runtime
from gateway.store import Store

_logger = logging.getLogger(__name__)

BLE_SYNC_KIND = SYNC_KIND_BLE
"""DeskBus request kind served here (``services.request_meter_sync`` routes Bluetooth targets to it)."""

__all__ = ["BLE_SYNC_KIND", "BleMeterSource", "components", "is_ble_target", "resolve_address", "sync_ble_meter"]


def resolve_address(store: Store, target: str) -> str:
    """A Bluetooth address for ``target`` (an address, or a ``gls:`` meter id the store has seen)."""
    if BLE_ADDRESS.match(target):
        return target.upper()
    address = store.scalar("SELECT address FROM meters WHERE meter_id = ?", [target])
    if not address:
        raise DeviceError(f"meter {target} has no known Bluetooth address", device_id=target)
    return str(address)


async def sync_ble_meter(
    address: str,
    *,
    config: GatewayConfig,
    store: Store,
    clock: Clock,
    patient_id: str | None = None,
    operator: str | None = None,
    session_id: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> SessionResult:
    """Connect to the meter at ``address`` and download what is new into the store.

    Connection failures (not found, timeout, pairing refused) raise DeviceError before a session exists;
    everything after the connection is reported in the returned SessionResult.
    """
    from gateway.meters.transport.ble import open_driver  # bleak only where a meter is really opened

    driver = await open_driver(address, config)
    session = DownloadSession.from_config(
        store, clock, driver, config,
        patient_id=patient_id, operator=operator, on_progress=on_progress, session_id=session_id,
    )  # fmt: skip
    return await session.run()


class BleMeterSource:
    """Component: serves desk sync requests for BLE meters and, when configured, auto-syncs meters in range."""

    name = "ble-meters"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.config = runtime.config
        self._beat = runtime.clock.monotonic()
        self._busy: dict[str, asyncio.Lock] = {}
        self._last_sync: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.completed = 0

    def healthy(self) -> bool:
        # The request loop wakes at least every few seconds; silence for much longer means it is stuck.
        slack = max(60.0, 3 * self.config.meters.ble.auto_sync_interval_s)
        return self.runtime.clock.monotonic() - self._beat < slack

    def snapshot(self) -> dict[str, Any]:
        """State for the status page (no patient data)."""
        return {
            "adapter": self.config.meters.ble.adapter,
            "auto_sync": self.config.meters.ble.auto_sync,
            "downloading": sorted(a for a, lock in self._busy.items() if lock.locked()),
            "completed": self.completed,
        }

    async def run(self) -> None:
        queue = self.runtime.desk.queue(BLE_SYNC_KIND)
        auto = self.config.meters.ble.auto_sync
        next_scan = self.runtime.clock.monotonic()
        try:
            while True:
                self._beat = self.runtime.clock.monotonic()
                if auto and self._beat >= next_scan:
                    await self._auto_sync_once()
                    next_scan = self.runtime.clock.monotonic() + self.config.meters.ble.auto_sync_interval_s
                try:
                    request = await asyncio.wait_for(queue.get(), timeout=5.0)
                except TimeoutError:
                    continue
                self._spawn(self._serve(request))
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: DeskRequest) -> None:
        params = request.params
        session_id = str(params.get("session_id") or request.request_id)
        target = str(params.get("target", ""))
        await self.sync(target, patient_id=params.get("patient_id"), operator=request.operator, session_id=session_id)

    async def sync(
        self,
        target: str,
        *,
        patient_id: str | None = None,
        operator: str | None = None,
        session_id: str | None = None,
    ) -> SessionResult | None:
        """Download one meter; progress and outcome go to the runtime boards. Never raises GatewayError."""
        progress, devices = self.runtime.progress, self.runtime.devices
        key = session_id or f"ble:{target}"
        on_progress = board_progress(self.runtime, target=target, transport="ble", address=target)

        try:
            address = resolve_address(self.runtime.store, target)
        except GatewayError as exc:
            progress.put(key, kind="meter", target=target, state="failed", error=f"{type(exc).__name__}: {exc}")
            return None
        lock = self._busy.setdefault(address, asyncio.Lock())
        async with lock:
            progress.put(key, kind="meter", target=target, state="connecting", done=0, total=None)
            try:
                result = await sync_ble_meter(
                    address,
                    config=self.config,
                    store=self.runtime.store,
                    clock=self.runtime.clock,
                    patient_id=patient_id,
                    operator=operator,
                    session_id=session_id,
                    on_progress=on_progress,
                )
            except GatewayError as exc:
                _logger.warning("BLE meter %s: %s: %s", address, type(exc).__name__, exc)
                progress.put(key, kind="meter", target=target, state="failed", error=f"{type(exc).__name__}: {exc}")
                devices.put(f"ble:{address}", kind="meter", transport="ble", state="unreachable",
                            last_error=type(exc).__name__)  # fmt: skip
                return None
            self._last_sync[address] = self.runtime.clock.monotonic()
            self.completed += 1
            _logger.info(
                "BLE meter %s download %s: %s, %d received, %d new",
                result.meter.meter_id if result.meter else address, result.session_id, result.state,
                result.received, result.added,
            )  # fmt: skip
            post_result(self.runtime, result, target=target)
            return result

    async def _auto_sync_once(self) -> None:
        from gateway.meters.transport.ble import scan

        try:
            found = await scan(self.config)
        except GatewayError as exc:
            _logger.warning("BLE auto-sync scan failed: %s: %s", type(exc).__name__, exc)
            return
        cooldown = self.config.meters.ble.auto_sync_cooldown_s
        now = self.runtime.clock.monotonic()
        for meter in found:
            last = self._last_sync.get(meter.address)
            lock = self._busy.get(meter.address)
            if (last is not None and now - last < cooldown) or (lock is not None and lock.locked()):
                continue
            self._spawn(self._auto(meter.address))

    async def _auto(self, address: str) -> None:
        await self.sync(address)


def components(runtime: Runtime) -> list[Component]:
    """The BLE meter component when ``meters.ble.enabled``."""
    return [BleMeterSource(runtime)] if runtime.config.meters.ble.enabled else []
