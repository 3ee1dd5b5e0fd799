"""Appliance health: the clock's sync state, free disk space and whether the store's disk takes writes.

:class:`HealthMonitor` is a daemon component. Every ``store.health_interval_s`` it probes, in a thread of
its own (a failing SD card can block a system call for minutes):

- the clock: synchronised or not (``clock.sync_check``). Readings taken while it is not are stored with
  ``time_trusted = false`` by the download session; nothing is corrected silently;
- free space on the store's file system against ``store.low_disk_warn_mb`` (warning) and
  ``store.min_free_mb`` (intake stops, see :meth:`gateway.store.Store.check_intake`);
- that the state directory still opens for writing (a card that went read-only, EROFS).

Each **change** of state becomes one event (status page and the ``events`` topic): ``clock_untrusted`` /
``clock_synchronised``, ``disk_low`` / ``disk_full`` / ``disk_ok``, ``store_unwritable`` / ``store_writable``.
The last clock and disk states are kept in the store, so a restart does not repeat an event. A probe that
does not come back makes :meth:`HealthMonitor.healthy` false, so the systemd watchdog restarts the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.clock import Clock
from gateway.errors import GatewayError
from gateway.runtime import Component, Runtime
from gateway.store import Store
from gateway.store.db import iso
from gateway.store.events import Level, add_event

_logger = logging.getLogger(__name__)

DiskState = Literal["ok", "low", "full"]
MB = 1024 * 1024
PROBE_NAME = ".health-probe"
KV_CLOCK = "health.clock"
KV_DISK = "health.disk"
HYSTERESIS = 0.05
"""A better disk state is reported only once free space is 5 % (at least 8 MB) above its threshold."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe's result."""

    synchronised: bool
    free_bytes: int | None
    writable: bool
    error: str | None = None


def disk_state(free_bytes: int, *, warn_mb: int, floor_mb: int, previous: DiskState | None = None) -> DiskState:
    """Classify free space; leaving a worse state needs a margin so that the events do not flap."""

    def below(threshold_mb: int, state: DiskState) -> bool:
        if not threshold_mb:
            return False
        margin = max(8 * MB, int(threshold_mb * MB * HYSTERESIS)) if previous == state else 0
        return free_bytes < threshold_mb * MB + margin

    if below(floor_mb, "full"):
        return "full"
    if below(warn_mb, "low") or (previous == "full" and below(warn_mb, "full")):
        return "low"
    return "ok"


async def in_own_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh daemon thread: a call that never returns cannot hold up the daemon's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            value: T | None = fn()
            exc: BaseException | None = None
        except BaseException as err:  # handed to the awaiting task, not swallowed
            value, exc = None, err
        # RuntimeError: the loop closed while we were blocked; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, value, exc)

    threading.Thread(target=work, name="health-probe", daemon=True).start()
    return await future


class HealthMonitor:
    """Watches clock sync, free space and writability; reports changes as events."""

    name = "health"

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        low_disk_warn_mb: int,
        min_free_mb: int,
        interval_s: float = 30.0,
        probe_dir: Path | None = None,
        sync_check: str | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.low_disk_warn_mb = low_disk_warn_mb
        self.min_free_mb = min_free_mb
        self.interval_s = interval_s
        self.sync_check = sync_check
        self.probe_path = (probe_dir or (store.path.parent if store.path else store.image_dir)) / PROBE_NAME
        self._beat = clock.monotonic()
        self._clock_since: datetime | None = None
        self.last: Observation | None = None
        self.clock_state: str | None = store.get_kv(KV_CLOCK)
        self.disk: DiskState | None = self._stored_disk_state()
        self.writable = True

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> HealthMonitor:
        cfg = runtime.config.store
        return cls(
            runtime.store,
            runtime.clock,
            low_disk_warn_mb=cfg.low_disk_warn_mb,
            min_free_mb=cfg.min_free_mb,
            interval_s=cfg.health_interval_s,
            sync_check=runtime.config.clock.sync_check,
        )

    def _stored_disk_state(self) -> DiskState | None:
        value = self.store.get_kv(KV_DISK)
        return value if value in ("ok", "low", "full") else None  # type: ignore[return-value]

    # -- probing (worker thread) ----------------------------------------------------------------
    def probe(self) -> Observation:
        """Look at the clock, the disk and the state directory. Blocking: runs off the event loop."""
        synchronised = self.clock.is_synchronised()
        try:
            free: int | None = self.store.free_bytes()
        except OSError as exc:
            return Observation(synchronised, None, False, f"free space unknown: {exc.strerror}")
        try:
            # Open for writing without writing: EROFS on a card remounted read-only, no wear on a good one.
            fd = os.open(self.probe_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
        except OSError as exc:
            return Observation(synchronised, free, False, f"state directory not writable: {exc.strerror}")
        return Observation(synchronised, free, True)

    # -- reacting (event loop) ------------------------------------------------------------------
    def _event(self, kind: str, message: str, level: Level, detail: dict[str, Any], kv: tuple[str, str] | None) -> bool:
        try:
            with self.store.transaction(durable=False):
                add_event(self.store, kind, message, level=level, detail=detail)
                if kv is not None:
                    self.store.set_kv(*kv)
        except GatewayError as exc:
            # Not recorded (full or broken disk): keep the old state so the next probe tries again.
            _logger.error("health: could not record %s: %s", kind, type(exc).__name__)
            return False
        (_logger.info if level == "info" else _logger.warning)("health: %s: %s", kind, message)
        return True

    def apply(self, obs: Observation) -> None:
        """Turn an observation into events, on state changes only."""
        self.last = obs
        if self._clock_since is None:
            self._clock_since = self.clock.utc_now()  # "since at least": the state before this start is unknown
        clock_state = "synchronised" if obs.synchronised else "untrusted"
        if clock_state != self.clock_state:
            kv = (KV_CLOCK, clock_state)
            if clock_state == "untrusted":
                recorded = self._event(
                    "clock_untrusted",
                    "the system clock is not synchronised: new readings are stored with time_trusted=false",
                    "warning",
                    {"sync_check": self.sync_check} if self.sync_check else {},
                    kv,
                )
            elif self.clock_state is None:  # first start, already synchronised: nothing to report
                recorded = self._remember(kv)
            else:
                recorded = self._event("clock_synchronised", "the system clock is synchronised again", "info", {}, kv)
            if recorded:
                self.clock_state = clock_state
                self._clock_since = self.clock.utc_now()

        if obs.free_bytes is not None:
            state = disk_state(
                obs.free_bytes, warn_mb=self.low_disk_warn_mb, floor_mb=self.min_free_mb, previous=self.disk
            )
            if state != self.disk:
                detail = {
                    "free_mb": round(obs.free_bytes / MB, 1),
                    "warn_mb": self.low_disk_warn_mb,
                    "floor_mb": self.min_free_mb,
                }
                kv = (KV_DISK, state)
                if state == "full":
                    ok = self._event(
                        "disk_full", "free space is below the floor: new intake is refused", "error", detail, kv
                    )
                elif state == "low":
                    ok = self._event("disk_low", "free space is low", "warning", detail, kv)
                elif self.disk is None:
                    ok = self._remember(kv)
                else:
                    ok = self._event("disk_ok", "free space is back above the warning level", "info", detail, kv)
                if ok:
                    self.disk = state

        if obs.writable != self.writable:
            if obs.writable:
                ok = self._event("store_writable", "the state directory takes writes again", "info", {}, None)
            else:
                ok = self._event("store_unwritable", obs.error or "state directory not writable", "error", {}, None)
            if ok or not obs.writable:
                self.writable = obs.writable

    def _remember(self, kv: tuple[str, str]) -> bool:
        try:
            self.store.set_kv(*kv)
        except GatewayError:
            return False
        return True

    async def check(self) -> Observation:
        """One probe and its events."""
        obs = await in_own_thread(self.probe)
        self.apply(obs)
        self._beat = self.clock.monotonic()
        return obs

    # -- Component ------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)

    def healthy(self) -> bool:
        """False when a probe has not come back for three intervals (a hung disk or a stuck loop)."""
        return self.clock.monotonic() - self._beat < 3 * self.interval_s

    def snapshot(self) -> dict[str, Any]:
        obs = self.last
        return {
            "clock": {
                "synchronised": None if obs is None else obs.synchronised,
                "since": None if self._clock_since is None else iso(self._clock_since),
            },
            "disk": {
                "state": self.disk,
                "free_mb": None if obs is None or obs.free_bytes is None else round(obs.free_bytes / MB, 1),
                "warn_mb": self.low_disk_warn_mb,
                "floor_mb": self.min_free_mb,
            },
            "store_writable": self.writable,
            "error": None if obs is None else obs.error,
            "last_check_age_s": round(self.clock.monotonic() - self._beat, 1),
        }


def components(runtime: Runtime) -> list[Component]:
    """The health monitor (always on)."""
    return [HealthMonitor.from_runtime(runtime)]
