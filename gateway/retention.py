"""The retention task: a daemon component that applies the disk policy (:mod:`gateway.store.retention`) every
few hours.

It does not prune by age on an unsynchronised clock (the clock may be years off) unless free space is below
the low-disk warning level; the bodies of acked messages, which need no clock, go either way. The pruning
itself (what goes, in which order, in bounded passes) is the store's; the task runs the passes one at a
time in a worker thread until none is left, so the event loop (watchdog, forwarder) runs between them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.errors import GatewayError
from gateway.runtime import Component, Runtime
from gateway.store import Store
from gateway.store.retention import Pruner, PruneResult

_logger = logging.getLogger(__name__)

INTERVAL_S = 6 * 3600.0
FIRST_RUN_DELAY_S = 120.0


class RetentionTask:
    """Daemon component: prune every ``interval_s`` (first run shortly after start)."""

    name = "retention"

    def __init__(
        self,
        store: Store,
        retention_days: int,
        *,
        low_disk_warn_mb: int = 0,
        interval_s: float = INTERVAL_S,
        first_delay_s: float = FIRST_RUN_DELAY_S,
    ) -> None:
        self.store = store
        self.retention_days = retention_days
        self.low_disk_warn_mb = low_disk_warn_mb
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self.last: PruneResult | None = None
        self.last_error: str | None = None

    def healthy(self) -> bool:
        # Pruning is housekeeping: a failed run is reported (snapshot, log), never a reason to restart.
        return True

    def disk_low(self) -> bool:
        """Free space below the low-disk warning level (pruning then goes ahead even on an untrusted clock)."""
        return bool(self.low_disk_warn_mb) and self.store.free_bytes() < self.low_disk_warn_mb * 1024 * 1024

    def pruner(self) -> Pruner:
        """The next run, honouring the clock rule (by age only on a trusted clock or a low disk)."""
        by_age = self.store.clock.is_synchronised() or self.disk_low()
        if not by_age:
            _logger.info("retention: the clock is not synchronised; only acked message bodies are dropped")
        pruner = Pruner(self.store, self.retention_days, by_age=by_age)
        if not by_age:
            pruner.result.skipped = "clock not synchronised"
        return pruner

    def run_once(self) -> PruneResult:
        """One whole run, all its passes at once (tests, tools)."""
        self.last = self.pruner().run()
        return self.last

    async def run_passes(self) -> PruneResult:
        """One whole run, a pass at a time in a worker thread: the loop runs between passes."""
        pruner = self.pruner()
        # The store's lock serialises each pass with the loop's writes; each pass is a few short transactions.
        while await asyncio.to_thread(pruner.run_pass):
            pass
        pruner.log()
        self.last = pruner.result
        return pruner.result

    async def run(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            try:
                await self.run_passes()
                self.last_error = None
            except GatewayError as exc:
                self.last_error = type(exc).__name__
                _logger.error("retention: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.interval_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "retention_days": self.retention_days,
            "last": None if self.last is None else self.last.as_dict(),
            "last_error": self.last_error,
        }


def components(runtime: Runtime) -> list[Component]:
    """The retention task (always on)."""
    cfg = runtime.config.store
    return [RetentionTask(runtime.store, cfg.retention_days, low_disk_warn_mb=cfg.low_disk_warn_mb)]
