"""What the daemon's parts share: the Component protocol, and the Runtime context passed to each.

The asyncio core (meters, retina, forwarder, health) and the web threads meet only here:

- ``DeskBus``: requests from the pages (a thread) to the core (the event loop), thread-safe.
- ``Board``: small thread-safe snapshots the core publishes for the pages (download progress, devices seen).

Nothing here touches a device or the network; :func:`open_runtime` opens the store for the daemon and the
``gateway`` subcommands alike.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.notify import Notifier
from gateway.store import Store, open_store
from gateway.store.db import Origin


@runtime_checkable
class Component(Protocol):
    """A long-running part of the daemon. ``run`` returns only when cancelled (or on a fatal bug)."""

    name: str

    async def run(self) -> None:
        """Do the work until cancelled. Raise GatewayError for trouble the supervisor should restart."""
        ...

    def healthy(self) -> bool:
        """False when the component is stuck; the systemd watchdog then stops being pinged."""
        ...


@runtime_checkable
class Snapshotting(Protocol):
    """A component that reports its state to the status page (no patient data)."""

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able dict of the component's state."""
        ...


@dataclass(frozen=True, slots=True)
class DeskRequest:
    """A request from a desk page to the core. ``kind`` routes it (``meter_sync``, ``capture`` ...)."""

    kind: str
    request_id: str
    params: dict[str, Any]
    operator: str | None = None


class DeskBus:
    """Thread-safe hand-over of desk requests from the web threads to components on the event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[DeskRequest]] = {}
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the running event loop (the daemon does this once)."""
        self._loop = loop

    def queue(self, kind: str) -> asyncio.Queue[DeskRequest]:
        """The queue a component consumes for ``kind`` (created on first use, on the loop)."""
        with self._lock:
            return self._queues.setdefault(kind, asyncio.Queue())

    def handles(self, kind: str) -> bool:
        """True when some component consumes ``kind`` requests."""
        with self._lock:
            return kind in self._queues

    def submit(self, request: DeskRequest) -> bool:
        """Hand a request to the core from any thread; False when nobody serves that kind."""
        loop = self._loop
        with self._lock:
            q = self._queues.get(request.kind)
        if loop is None or q is None or loop.is_closed():
            return False
        loop.call_soon_threadsafe(q.put_nowait, request)
        return True


class Board:
    """A small thread-safe keyed store of JSON-able snapshots (progress of sessions, devices seen)."""

    def __init__(self, keep: int = 200) -> None:
        self._items: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._keep = keep

    def put(self, key: str, **values: Any) -> None:
        """Merge ``values`` into the entry for ``key`` (stamped with ``updated`` monotonic seconds)."""
        with self._lock:
            entry = self._items.pop(key, {})
            entry.update(values)
            entry["updated"] = time.monotonic()
            self._items[key] = entry
            while len(self._items) > self._keep:
                self._items.pop(next(iter(self._items)))

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._items.get(key)
            return None if entry is None else dict(entry)

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """Entries, oldest first."""
        with self._lock:
            return [(k, dict(v)) for k, v in self._items.items()]

    def remove(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


@dataclass(frozen=True, slots=True)
class ComponentRestarts:
    """What the supervisor did for one component: restarts after failures, and the last failure.

    ``last_failure`` is the exception's type name (never its text, which may quote data); ``last_failure_bug``
    is True when it was not a GatewayError (a bug, logged with its traceback).
    """

    restarts: int = 0
    last_failure: str | None = None
    last_failure_at: datetime | None = None
    last_failure_bug: bool = False


class Supervision:
    """Restart records of the daemon's components, written by the supervisor (event loop), read by the
    pages (web threads)."""

    def __init__(self) -> None:
        self._records: dict[str, ComponentRestarts] = {}
        self._lock = threading.Lock()

    def failed(self, name: str, error: BaseException, at: datetime, *, bug: bool) -> ComponentRestarts:
        """Note that ``name`` failed with ``error`` and is being restarted."""
        with self._lock:
            before = self._records.get(name, ComponentRestarts())
            record = ComponentRestarts(before.restarts + 1, type(error).__name__, at, bug)
            self._records[name] = record
            return record

    def of(self, name: str) -> ComponentRestarts:
        """The record of ``name`` (zero restarts when it never failed)."""
        with self._lock:
            return self._records.get(name, ComponentRestarts())


@dataclass
class Runtime:
    """Everything a component needs, passed explicitly (no globals)."""

    config: GatewayConfig
    store: Store
    clock: Clock
    desk: DeskBus = field(default_factory=DeskBus)
    progress: Board = field(default_factory=Board)
    """session_id -> {kind, meter_id, done, total, state, patient_id?...} (patient data: pages behind login only)."""
    devices: Board = field(default_factory=Board)
    """device_id -> {kind: meter|camera, transport, state, last_sync, last_error} (no patient data)."""
    components: list[Component] = field(default_factory=list)
    notifier: Notifier = field(default_factory=lambda: Notifier({}))
    """systemd notifications (the daemon sets its own; the default sends nothing)."""
    supervision: Supervision = field(default_factory=Supervision)
    """How often each component was restarted after a failure, and its last failure (status page)."""
    started_monotonic: float = field(default_factory=time.monotonic)
    started_at: datetime | None = None

    def component(self, name: str) -> Component | None:
        """The component called ``name``, if running."""
        return next((c for c in self.components if c.name == name), None)

    def snapshots(self) -> dict[str, dict[str, Any]]:
        """State of every component that reports one."""
        return {c.name: c.snapshot() for c in self.components if isinstance(c, Snapshotting)}


ComponentFactory = Callable[[Runtime], Iterable[Component]]


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
