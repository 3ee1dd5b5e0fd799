"""Issue 15, supervisor: the forwarder under the real daemon's supervisor, against a real mosquitto.

When storing a downlink message fails (here: another process holds the database's write lock, as a backup
or ``gateway import`` might), the forwarder fails, the supervisor records it and restarts it with backoff,
and the message is not lost: it was never acknowledged to the broker, which redelivers it to the restarted
forwarder's connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from support.broker import GATEWAY, PREFIX, SITE

from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.daemon import run_daemon
from gateway.forward.forwarder import components as forwarder_components
from gateway.records import Referral
from gateway.runtime import open_runtime
from gateway.services import GatewayServices
from gateway.store import referrals
from gateway.wire import contract


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_a_referral_taken_when_the_forwarder_fails_is_redelivered_after_its_restart(
    tmp_path: Path, broker, receiver_factory
) -> None:
    state = tmp_path / "state"
    config = parse_config(
        {
            "gateway": {"site_id": SITE, "gateway_id": GATEWAY, "state_dir": str(state)},
            "forward": {"host": "127.0.0.1", "port": broker.port, "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
            "clock": {"sync_check": "assume_synced"},
            "web": {"enabled": False},
        },
        "test",
    )
    runtime = open_runtime(config, clock=SystemClock("assume_synced"))
    receiver = receiver_factory(broker)
    urgent = Referral(referral_id="urgent-1", decision="refer_urgent", patient_id="P-0042")

    async def scenario() -> None:
        stop = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(config, runtime=runtime, stop=stop, factories=(forwarder_components,)))
        await _until(lambda: (f := runtime.component("forwarder")) is not None and f.snapshot()["connected"],
                     "the forwarder online")  # fmt: skip
        forwarder = runtime.component("forwarder")
        blocker = sqlite3.connect(config.db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            payload = contract.referral_payload(urgent)
            await asyncio.to_thread(receiver.publish_raw, PREFIX + contract.TOPIC_REFERRAL, payload)
            await _until(lambda: runtime.supervision.of("forwarder").restarts >= 1, "the forwarder failing")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await _until(lambda: referrals.get_referral(runtime.store, "urgent-1") is not None, "the redelivery stored")
        assert runtime.component("forwarder") is forwarder  # the same component, restarted in place
        record = runtime.supervision.of("forwarder")
        assert (record.last_failure, record.last_failure_bug) == ("StoreError", False)
        component = GatewayServices(runtime).status()["components"]["forwarder"]
        assert component["restarts"] >= 1 and component["last_failure"] == "StoreError"
        stop.set()
        assert await daemon == 0

    asyncio.run(scenario())
