"""Appliance health: the clock's sync state, free disk space and whether the store's disk takes writes.

:class:`HealthMonitor` is a daemon component. Every ``store.health_interval_s`` it probes, in a thread of
its own (a failing SD card can block a system call for minutes):

- the clock: synchronised or not (``clock.sync_check``). Readings taken while it is not are stored with
  ``time_trusted = false`` by the download session; nothing is corrected silently;
- free space on the store's file system against ``store.low_disk_warn_mb`` (warning) and
  ``store.min_free_mb`` (intake stops, see :meth:`gateway.store.Store.check_intake`);
- that the state directory still opens for writing (a card that went read-only, EROFS).

The same module holds **the health model** (:func:`assess`): one pure function from a typed snapshot of the
gateway (:class:`HealthFacts`) and the thresholds of ``[health]`` (:class:`HealthThresholds`) to a
:class:`Health` (green / amber / red and the named problems). The status page's badge, ``/healthz`` and
``/metrics`` all show its answer; nothing else decides what is healthy.

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
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.errors import ErrorInfo, GatewayError
from gateway.runtime import Component, Runtime
from gateway.store import Store
from gateway.store.db import iso
from gateway.store.events import Level as EventLevel
from gateway.store.events import add_event

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


# -- the health model (pure) ---------------------------------------------------------------------------------------
class Level(StrEnum):
    """How the gateway is, as the badge shows it (:attr:`rank` orders them)."""

    GREEN = "green"
    """Nothing to do."""
    AMBER = "amber"
    """Look soon: data still flows, or will once the cause is gone."""
    RED = "red"
    """Data is not reaching the hospital, or a part of the gateway is down (``/healthz`` answers 503)."""

    @property
    def rank(self) -> int:
        """0 green, 1 amber, 2 red (the ``cg_health_level`` gauge)."""
        return list(Level).index(self)


class ProblemKind(StrEnum):
    """What can be wrong; each has one level (or two, by a threshold) and its own ``/metrics`` gauge."""

    STORE_UNAVAILABLE = "store_unavailable"
    """The database does not answer (red)."""
    STORE_UNWRITABLE = "store_unwritable"
    """The state directory takes no writes (red)."""
    BROKER_DOWN = "broker_down"
    """The link to the platform's broker is down: amber, red after ``health.broker_down_s``."""
    OUTBOX_LATE = "outbox_late"
    """The oldest message the platform has not confirmed is older than ``health.oldest_unsent_s`` (amber)."""
    DISK_LOW = "disk_low"
    """Free space below ``store.low_disk_warn_mb`` (amber)."""
    DISK_FULL = "disk_full"
    """Free space below ``store.min_free_mb``: intake is refused (red)."""
    CLOCK_UNTRUSTED = "clock_untrusted"
    """The system clock is not synchronised: new readings are stored with time_trusted = false (amber)."""
    COMPONENT_FAILING = "component_failing"
    """A daemon component is stuck or not running (red)."""
    COMPONENT_RESTARTED = "component_restarted"
    """A component failed and was restarted within ``health.restart_window_s`` (amber)."""
    MODEL_MISSING = "model_missing"
    """The triage model could not be loaded: photos are stored and sent without triage (amber)."""


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """The forwarder's link to the broker (``Forwarder.link_status()``)."""

    state: str
    online: bool
    down_for_s: float | None
    """Seconds since the link was last online (since the forwarder started, when it never was); None online."""
    last_error: ErrorInfo | None = None
    last_error_at: str | None = None
    """When ``last_error`` happened (ISO 8601, UTC)."""


@runtime_checkable
class ReportsLink(Protocol):
    """A component that keeps the link to the platform (the forwarder)."""

    def link_status(self) -> LinkFacts:
        """The link's state now."""
        ...


@runtime_checkable
class ReportsModel(Protocol):
    """A component that needs the triage model (the retina service)."""

    def model_problem(self) -> str | None:
        """Why the model is not loaded, or None when it is."""
        ...


@dataclass(frozen=True, slots=True)
class ComponentFacts:
    """One daemon component: healthy or not, and what the supervisor did for it."""

    name: str
    healthy: bool
    restarts: int = 0
    last_failure: str | None = None
    """The last failure's exception type (never its text)."""
    last_failure_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class HealthFacts:
    """Everything the health model looks at, gathered once by ``services`` (no patient data)."""

    store_error: str | None
    """Why the database did not answer (the error's type), or None."""
    store_writable: bool
    link: LinkFacts | None
    """None when no forwarder runs (a CLI command, a test without one): nothing to judge."""
    oldest_unsent_age_s: float | None
    disk_free_bytes: int | None
    clock_synchronised: bool
    components: tuple[ComponentFacts, ...] = ()
    model_error: str | None = None
    """Why the triage model is not loaded, when the retina component runs without it."""


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """The limits of ``[health]`` and the store's free-space levels, in seconds and bytes."""

    broker_down_s: float = 120.0
    oldest_unsent_s: float = 1800.0
    restart_window_s: float = 3600.0
    disk_warn_bytes: int = 1000 * 1024 * 1024
    disk_floor_bytes: int = 200 * 1024 * 1024

    @classmethod
    def from_config(cls, config: GatewayConfig) -> HealthThresholds:
        """The thresholds ``config`` sets."""
        return cls(
            broker_down_s=config.health.broker_down_s,
            oldest_unsent_s=config.health.oldest_unsent_s,
            restart_window_s=config.health.restart_window_s,
            disk_warn_bytes=config.store.low_disk_warn_mb * MB,
            disk_floor_bytes=config.store.min_free_mb * MB,
        )


@dataclass(frozen=True, slots=True)
class Problem:
    """One named problem: what, how bad, about which part, the measured value against its limit."""

    kind: ProblemKind
    level: Level
    subject: str | None = None
    """The component, or the link state / error type it is about (an id, never patient data)."""
    value: float | None = None
    """Seconds or bytes, as the kind says."""
    limit: float | None = None

    def describe(self) -> str:
        """One English line for ``/healthz`` and logs, e.g. ``broker_down: unreachable for 245 s (limit 120 s)``."""
        head = f"{self.kind}: {self.subject}" if self.subject else str(self.kind)
        value, limit = self.value, self.limit
        if value is None:
            return head
        if self.kind is ProblemKind.COMPONENT_RESTARTED:
            return f"{head} restarted {value:.0f} time(s)"
        if self.kind in (ProblemKind.DISK_LOW, ProblemKind.DISK_FULL):
            return f"{head} {value / MB:.0f} MB free (limit {(limit or 0) / MB:.0f} MB)"
        what = "oldest unconfirmed message" if self.kind is ProblemKind.OUTBOX_LATE else "for"
        return f"{head} {what} {value:.0f} s (limit {limit or 0:.0f} s)"

    def as_json(self) -> dict[str, Any]:
        """The problem for ``/api/status`` and ``/healthz``."""
        return {"kind": str(self.kind), "level": str(self.level), "subject": self.subject, "value": self.value,
                "limit": self.limit, "text": self.describe()}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Health:
    """The health model's answer: the worst level among the problems (green with none)."""

    level: Level
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """False when red: ``/healthz`` answers 503."""
        return self.level is not Level.RED

    def as_json(self) -> dict[str, Any]:
        """For ``/healthz`` and ``/api/status``."""
        return {"ok": self.ok, "level": str(self.level), "problems": [p.as_json() for p in self.problems]}


def assess(facts: HealthFacts, limits: HealthThresholds) -> Health:
    """The one health model: which problems ``facts`` show under ``limits``, red ones first."""
    found: list[Problem] = []
    if facts.store_error is not None:
        found.append(Problem(ProblemKind.STORE_UNAVAILABLE, Level.RED, facts.store_error))
    if not facts.store_writable:
        found.append(Problem(ProblemKind.STORE_UNWRITABLE, Level.RED))
    link = facts.link
    if link is not None and not link.online:
        down = link.down_for_s or 0.0
        level = Level.RED if down >= limits.broker_down_s else Level.AMBER
        found.append(Problem(ProblemKind.BROKER_DOWN, level, link.state, down, limits.broker_down_s))
    age = facts.oldest_unsent_age_s
    if age is not None and age >= limits.oldest_unsent_s:
        found.append(Problem(ProblemKind.OUTBOX_LATE, Level.AMBER, None, round(age, 1), limits.oldest_unsent_s))
    free = facts.disk_free_bytes
    if free is not None and limits.disk_floor_bytes and free < limits.disk_floor_bytes:
        found.append(Problem(ProblemKind.DISK_FULL, Level.RED, None, free, limits.disk_floor_bytes))
    elif free is not None and limits.disk_warn_bytes and free < limits.disk_warn_bytes:
        found.append(Problem(ProblemKind.DISK_LOW, Level.AMBER, None, free, limits.disk_warn_bytes))
    if not facts.clock_synchronised:
        found.append(Problem(ProblemKind.CLOCK_UNTRUSTED, Level.AMBER))
    for c in facts.components:
        if not c.healthy:
            found.append(Problem(ProblemKind.COMPONENT_FAILING, Level.RED, c.name))
        elif c.restarts and c.last_failure_age_s is not None and c.last_failure_age_s < limits.restart_window_s:
            found.append(Problem(ProblemKind.COMPONENT_RESTARTED, Level.AMBER, c.name, float(c.restarts)))
    if facts.model_error is not None:
        found.append(Problem(ProblemKind.MODEL_MISSING, Level.AMBER, facts.model_error))
    found.sort(key=lambda p: -p.level.rank)  # stable: the order above within a level
    level = found[0].level if found else Level.GREEN
    return Health(level, tuple(found))


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
    def _event(
        self, kind: str, message: str, level: EventLevel, detail: dict[str, Any], kv: tuple[str, str] | None
    ) -> bool:
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
