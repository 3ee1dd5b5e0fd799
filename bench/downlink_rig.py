"""Shared rig of the downlink benches: a private mosquitto, the reference receiver, and the real daemon running
only the forwarder (its real supervisor included) on its own event loop in a thread.

It uses only interfaces that predate issue 15 (``run_daemon``, ``Receiver.publish_raw``, the ``referrals`` and
``outbox`` tables), so the same bench measures the code before the change: run it with ``PYTHONPATH`` pointing
at a checkout of the older code (``git archive main | tar -x -C /tmp/main-src``). The JSON says which code ran.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import gateway
from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.daemon import run_daemon
from gateway.emulate.broker import BrokerOptions, MosquittoBroker
from gateway.emulate.platform import Receiver, ReceiverSettings
from gateway.forward.forwarder import components as forwarder_components
from gateway.runtime import open_runtime

SITE, GATEWAY = "chc-bench", "gw-bench"
PREFIX = f"cg/v1/{SITE}/{GATEWAY}/"


class _Failures(logging.Handler):
    """Counts the supervisor's "component forwarder failed/crashed" lines (the same on old and new code)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "gateway.daemon" and record.getMessage().startswith("component forwarder"):
            self.count += 1


class Rig:
    """``with Rig(**forward) as rig:`` a gateway (forwarder only) and a platform on a private broker."""

    def __init__(self, **forward: Any) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="cg-bench-downlink-")
        self.work = Path(self._tmp.name)
        self.broker = MosquittoBroker(self.work / "broker", BrokerOptions(extra_lines=["set_tcp_nodelay true"]))
        self.forward = {"host": "127.0.0.1", **forward}
        self.failures = _Failures()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="bench-daemon", daemon=True)
        self.receiver: Receiver | None = None

    def __enter__(self) -> Rig:
        self.broker.start()
        self.config = parse_config(
            {
                "gateway": {"site_id": SITE, "gateway_id": GATEWAY, "state_dir": str(self.work / "gw")},
                "forward": {**self.forward, "port": self.broker.port},
                "clock": {"sync_check": "assume_synced"},
                "web": {"enabled": False},
            },
            "bench",
        )
        self.runtime = open_runtime(self.config, clock=SystemClock("assume_synced"))
        self.store = self.runtime.store
        self.receiver = Receiver(ReceiverSettings(host="127.0.0.1", port=self.broker.port, db_path=self.work / "p.db"))
        self.receiver.start()
        logging.getLogger("gateway.daemon").addHandler(self.failures)
        self._thread.start()
        self.wait(lambda: self.forwarder_state() == "online", 30, "the forwarder online")
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        logging.getLogger("gateway.daemon").removeHandler(self.failures)
        if self.receiver is not None:
            self.receiver.stop()
        self.broker.stop()
        self._tmp.cleanup()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        factories = (forwarder_components,)
        self._loop.run_until_complete(
            run_daemon(self.config, runtime=self.runtime, stop=self._stop, factories=factories)
        )

    # -- what the benches look at ------------------------------------------------------------------------
    def forwarder_state(self) -> str | None:
        component = self.runtime.component("forwarder")
        return None if component is None else str(getattr(component, "state", None))

    def publish(self, relative_topic: str, payload: bytes) -> None:
        """The platform publishes one downlink message (QoS 1; returns once the broker has it)."""
        assert self.receiver is not None
        self.receiver.publish_raw(PREFIX + relative_topic, payload)

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        return self.store.scalar(sql, params or [])

    @staticmethod
    def wait(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
        """Poll ``condition``; the seconds it took. Raises TimeoutError after ``timeout_s``."""
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(what)
            time.sleep(0.01)
        return time.monotonic() - start


def code_under_test() -> str:
    """Which checkout's ``gateway`` package ran (the bench's JSON records it)."""
    return str(Path(gateway.__file__).resolve().parent.parent)
