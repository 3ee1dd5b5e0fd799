"""What the daemon's parts share: the Component protocol, and the Runtime context passed to each.

The asyncio core (meters, retina, forwarder, health) and the web threads meet only here:

- ``DeskBus``: typed requests (:mod:`gateway.desk`) from the pages (a thread) to the core (the event loop),
  routed by their type, thread-safe.
- ``Board``: small thread-safe boards of typed records the core publishes for the pages (download and photo
  progress, devices seen), and the camera preview the retina component offers.

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
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.desk import CameraPreview, DeskProgress, DeskRequest, DeviceEntry
from gateway.errors import DeskUnavailable
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


@runtime_checkable
class DeskServer(Protocol):
    """A component that serves desk requests: it declares their types, and consumes
    ``runtime.desk.queue(t)`` for each."""

    @property
    def serves(self) -> tuple[type[DeskRequest], ...]:
        """The request types this component serves (as configured)."""
        ...


R = TypeVar("R", bound=DeskRequest)
V = TypeVar("V")


class DeskBus:
    """Thread-safe hand-over of desk requests from the web threads to components on the event loop.

    Requests are routed by their type: one queue per request class, created by the component that serves it
    (or by the daemon from the component's declared :attr:`DeskServer.serves`).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[type[DeskRequest], asyncio.Queue[Any]] = {}
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the running event loop (the daemon does this once)."""
        self._loop = loop

    def queue(self, request_type: type[R]) -> asyncio.Queue[R]:
        """The queue a component consumes for ``request_type`` (created on first use)."""
        with self._lock:
            queue: asyncio.Queue[R] = self._queues.setdefault(request_type, asyncio.Queue())
            return queue

    def handles(self, request_type: type[DeskRequest]) -> bool:
        """True when some component consumes requests of exactly ``request_type``."""
        with self._lock:
            return request_type in self._queues

    def submit(self, request: DeskRequest) -> None:
        """Hand a request to the core from any thread.

        Raises:
            DeskUnavailable: nobody serves requests of this type (or the core is not running).
        """
        loop = self._loop
        with self._lock:
            q = self._queues.get(type(request))
        if loop is None or q is None or loop.is_closed():
            name = type(request).__name__
            raise DeskUnavailable(f"no running component serves {name}", request_type=name)
        loop.call_soon_threadsafe(q.put_nowait, request)


class Board(Generic[V]):
    """A small thread-safe keyed store of typed records (progress of desk requests, devices seen), oldest first.

    Records are frozen: a change is a new record, made from the old one with :meth:`update`. Every change
    bumps :attr:`version` and wakes the threads in :meth:`wait_newer` (the pages' pushed events wait there, on
    a condition: no polling loop).
    """

    def __init__(self, keep: int = 200) -> None:
        self._items: dict[str, V] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._keep = keep

    @property
    def version(self) -> int:
        """How many changes the board has seen (read it before the records, then wait for a newer one)."""
        with self._lock:
            return self._version

    def wait_newer(self, version: int, timeout: float) -> int:
        """Block until the board changed after ``version`` or ``timeout`` seconds passed; the version now."""
        with self._changed:
            self._changed.wait_for(lambda: self._version > version, timeout)
            return self._version

    def put(self, key: str, value: V) -> None:
        """Set the record for ``key`` (it becomes the newest)."""
        self.update(key, lambda _: value)

    def update(self, key: str, change: Callable[[V | None], V]) -> V:
        """Replace the record for ``key`` with ``change(old)`` (old is None when absent), atomically."""
        with self._lock:
            value = change(self._items.pop(key, None))
            self._items[key] = value
            while len(self._items) > self._keep:
                self._items.pop(next(iter(self._items)))
            self._version += 1
            self._changed.notify_all()
            return value

    def get(self, key: str) -> V | None:
        """The record for ``key``, if any."""
        with self._lock:
            return self._items.get(key)

    def items(self) -> list[tuple[str, V]]:
        """Entries, oldest first."""
        with self._lock:
            return list(self._items.items())

    def remove(self, key: str) -> None:
        """Forget ``key``."""
        with self._lock:
            if self._items.pop(key, None) is not None:
                self._version += 1
                self._changed.notify_all()


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
    progress: Board[DeskProgress] = field(default_factory=Board)
    """request id -> MeterProgress | RetinaProgress (a download's target and meter, a photo's outcome)."""
    devices: Board[DeviceEntry] = field(default_factory=Board)
    """device id -> DeviceEntry (no patient data)."""
    camera_preview: CameraPreview | None = None
    """The live camera preview, offered by the retina component when it runs."""
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
