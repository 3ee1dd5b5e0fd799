"""The service facade: everything the pages and the CLI may ask of the gateway.

``web/`` and the ``gateway`` subcommands call only this (the CLI also opens the runtime); it reads the store
and the runtime boards, and hands desk requests to the asyncio core through the DeskBus. It never touches a
device, the broker or the model itself. :class:`GatewayServices` is the facade; its cohesive parts hang off
it: ``services.users`` (:class:`UserAdmin`: the pages' users, every change audited) and ``services.outbox``
(:class:`OutboxAdmin`: counts, parked messages, retry, dead letters). The records and errors the callers
need (:class:`UserRow`, :class:`LoginThrottled`, ...) are re-exported here, so that nothing above the
facade imports the store.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.desk import (
    BleSyncRequest,
    DeskKind,
    DeskProgress,
    DeskState,
    DeviceEntry,
    MeterProgress,
    RetinaCaptureRequest,
    RetinaPhotoRequest,
    RetinaProgress,
    RetinaUploadRequest,
)
from gateway.errors import CaptureError, DeskUnavailable, GatewayError
from gateway.glucose_stats import GlucoseRanges, GlucoseSummary, summarize
from gateway.health import (
    ComponentFacts,
    Health,
    HealthFacts,
    HealthMonitor,
    HealthThresholds,
    Level,
    LinkFacts,
    ProblemKind,
    ReportsLink,
    ReportsModel,
    assess,
)
from gateway.meters import sync_request_type
from gateway.records import Eye, Field, QualityGeometry, TriageDecision
from gateway.runtime import Component, Runtime
from gateway.store import assignments as store_assignments
from gateway.store import audit, queue_samples
from gateway.store import backup as store_backup
from gateway.store import blood_pressure as store_bp
from gateway.store import captures as store_captures
from gateway.store import dead_letters as store_dead_letters
from gateway.store import logins as store_logins
from gateway.store import qc as store_qc
from gateway.store import readings as store_readings
from gateway.store import referrals as store_referrals
from gateway.store import sessions as store_sessions
from gateway.store import users as store_users
from gateway.store.assignments import AssignResult, ReadingKind, UnassignedGroup
from gateway.store.audit import AuditEntry
from gateway.store.blood_pressure import BloodPressureReadingRow
from gateway.store.captures import CaptureRow, Delivery
from gateway.store.db import Store, iso, new_id
from gateway.store.events import StoredEvent, recent_events
from gateway.store.logins import LoginThrottled
from gateway.store.outbox import Outbox, OutboxStats, ParkedMessage
from gateway.store.qc import QcResultRow
from gateway.store.queue_samples import QueueSample
from gateway.store.readings import MeterRow, ReadingRow
from gateway.store.referrals import ReferralRow
from gateway.store.retention import PruneResult, prune
from gateway.store.sessions import SessionRow
from gateway.store.startup import QUARANTINE_KEY
from gateway.store.users import ROLES, Role, UserError, UserRow

__all__ = [
    "ROLES",
    "AssignResult",
    "BloodPressureReadingRow",
    "BloodPressureRow",
    "BloodPressureTarget",
    "DeskSession",
    "DeskUnavailable",
    "DeviceView",
    "GatewayServices",
    "Health",
    "Level",
    "LoginThrottled",
    "MeterRow",
    "OutboxAdmin",
    "OutboxSummary",
    "ProblemKind",
    "QcResultRow",
    "ReadingKind",
    "ReadingRow",
    "ReadingsPage",
    "Role",
    "SessionRow",
    "TodaySession",
    "UnassignedGroup",
    "UserAdmin",
    "UserError",
    "UserRow",
    "VisitPicture",
    "export_backup",
    "import_backup",
]
"""The facade and what its callers need; LoginThrottled, ROLES, Role, UserError, UserRow and the store's typed rows
(SessionRow, ReadingRow, MeterRow, QcResultRow, BloodPressureReadingRow) are the store's, re-exported here so that
nothing above the facade imports the store."""


@dataclass(frozen=True, slots=True)
class DeskSession:
    """A desk session or request as a desk page shows it: the core's live progress (or, once the core has
    forgotten it, the stored session's), with the stored session's patient.

    ``stored_error`` is the stored session's error text, shown when no live progress says more.
    """

    session_id: str
    progress: DeskProgress
    patient_id: str | None = None
    meter_id: str | None = None
    stored_error: str | None = None

    @property
    def kind(self) -> DeskKind:
        """Which desk the session belongs to."""
        return self.progress.kind

    @property
    def state(self) -> DeskState:
        """Where it stands."""
        return self.progress.state

    @property
    def finished(self) -> bool:
        """Nothing more will happen."""
        return self.progress.state.finished

    @property
    def error_text(self) -> str | None:
        """What went wrong, for the page."""
        return str(self.progress.error) if self.progress.error is not None else self.stored_error


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device for the pages: what the store knows of a meter, with the core's live state over it (no patient
    data). ``last_error`` is what the page shows: the live error's type, or the stored reason."""

    device_id: str
    kind: str
    transport: str | None = None
    family: str | None = None
    model: str | None = None
    state: str | None = None
    port: str | None = None
    last_seen: str | None = None
    last_sync: str | None = None
    last_error: str | None = None
    downloadable: bool = False
    """A desk download can work: a cable or Bluetooth meter whose transport is served (not the demo's
    synthetic meter, whose readings arrive by themselves)."""

    def as_json(self) -> dict[str, Any]:
        """The status endpoint's JSON for this device."""
        return {
            "device_id": self.device_id,
            "kind": self.kind,
            "transport": self.transport,
            "family": self.family,
            "model": self.model,
            "state": self.state,
            "port": self.port,
            "last_seen": self.last_seen,
            "last_sync": self.last_sync,
            "last_error": self.last_error,
        }


def _live_device(device_id: str, entry: DeviceEntry, stored: DeviceView | None) -> DeviceView:
    """``stored`` (or a bare view) with the live entry's state, connection and last error over it."""
    base = stored or DeviceView(device_id=device_id, kind=str(entry.kind), transport=entry.transport)
    return replace(
        base,
        state=str(entry.state),
        transport=entry.transport or base.transport,
        family=entry.family or base.family,
        port=entry.port,
        # The live board keeps the error as data; the page shows its type (a message may quote the device).
        last_error=None if entry.last_error is None else entry.last_error.type,
    )


QUEUE_WINDOWS_H = (0.25, 1.0, 3.0, 6.0, 24.0)
"""The queue chart's windows (hours); the samples are kept for the longest."""


def auto_window(samples: list[QueueSample], now: datetime) -> float:
    """The smallest chart window (of :data:`QUEUE_WINDOWS_H`) that shows all recent activity, so that a
    backlog is not a sliver at the edge of a mostly empty chart.

    Activity is a sample with messages waiting or parked; the window reaches back to the sample before
    the oldest such one (the rise is seen) with a tenth to spare. Without activity it covers the samples
    there are (a gateway started ten minutes ago shows its ten minutes), at most 6 hours.
    """
    if not samples:
        return QUEUE_WINDOWS_H[0]
    busy = [i for i, s in enumerate(samples) if s.unsent or s.parked]
    start = samples[max(0, busy[0] - 1)] if busy else samples[0]
    needed = (now - start.taken_at).total_seconds() / 3600 * 1.1
    if not busy:
        needed = min(needed, 6.0)
    return next((h for h in QUEUE_WINDOWS_H if h >= needed), QUEUE_WINDOWS_H[-1])


DESK_READINGS_PER_PAGE = 100
"""Readings on one page of a nurse's session (a first download may bring a meter's whole history)."""


QC_HISTORY_ROWS = 10
"""Control-solution results in a meter's QC panel (a meter sees a few a month)."""


@dataclass(frozen=True, slots=True)
class VisitPicture:
    """A patient's readings since the last visit and their summary (patient data: behind login)."""

    patient_id: str
    since: str
    """UTC ISO time the picture starts at: the last visit, or the window's start."""
    last_visit: str | None
    readings: list[ReadingRow]
    summary: GlucoseSummary
    ranges: GlucoseRanges


@dataclass(frozen=True, slots=True)
class ReadingsPage:
    """A page of a desk session's readings, with counts over the whole download."""

    rows: list[ReadingRow]
    total: int
    low: int
    high: int
    page: int
    """1 is the oldest page."""
    pages: int
    first: int
    """Position of the page's first reading in the download (1-based); ``last`` of its last."""
    last: int


@dataclass(frozen=True, slots=True)
class BloodPressureTarget:
    """The programme's blood pressure target (``meters.blood_pressure``): above it a reading is highlighted."""

    systolic_mmhg: int
    diastolic_mmhg: int


@dataclass(frozen=True, slots=True)
class BloodPressureRow:
    """A blood pressure reading as the nurse's page shows it (patient data: behind login): the stored reading,
    judged against the programme's target."""

    reading: BloodPressureReadingRow
    above_target: bool
    """Systolic or diastolic above the target's."""

    @classmethod
    def of(cls, reading: BloodPressureReadingRow, target: BloodPressureTarget) -> BloodPressureRow:
        """A stored reading, judged against the target."""
        above = reading.systolic_mmhg > target.systolic_mmhg or reading.diastolic_mmhg > target.diastolic_mmhg
        return cls(reading, above_target=above)


@dataclass(frozen=True, slots=True)
class TodaySession:
    """A desk session of today's list: the stored session, with what the core's live progress adds to it."""

    session: SessionRow
    error_type: str | None = None
    """The type of the failure's error, while the core remembers the session (it keeps the error as data)."""
    target: str | None = None
    """The meter asked for (BLE address, serial port or meter id), while the core remembers the request."""


class GatewayServices:
    """Facade over one Runtime (the daemon's, or a store-only one for CLI commands)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.outbox = OutboxAdmin(runtime.store)
        self.users = UserAdmin(runtime.store)
        self.photos = PhotoDesk(runtime)

    def close(self) -> None:
        """Close the store (CLI commands, when done)."""
        self.store.close()

    # -- the audit trail ------------------------------------------------------------------------
    def audit(
        self,
        *,
        actor: str,
        action: str,
        target_kind: str | None = None,
        target_id: str | None = None,
        patient_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record a desk action that stores nothing else (a refused page, a refused session) in the audit
        trail; actions that store something are audited by the call that stores it, in its transaction."""
        audit.add(self.store, actor=actor, action=action, target_kind=target_kind, target_id=target_id,
                  patient_id=patient_id, detail=detail)  # fmt: skip

    # -- IT status ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The status page's data (no patient data)."""
        cfg = self.runtime.config
        clock = self.runtime.clock
        now = clock.utc_now()
        stats = self.outbox.stats()
        oldest_age = self._oldest_unsent_age(stats)
        usage = shutil.disk_usage(self.store.image_dir)
        components = self.runtime.snapshots()
        health = self._assess(oldest_age, usage.free)
        link = self._link()
        return {
            "health": health.as_json(),
            "gateway": {
                "site_id": cfg.gateway.site_id,
                "gateway_id": cfg.gateway.gateway_id,
                "version": __version__,
                "uptime_s": int(clock.monotonic() - self.runtime.started_monotonic),
                "started_at": None if self.runtime.started_at is None else self.runtime.started_at.isoformat(),
                "now": now.isoformat(timespec="seconds"),
            },
            "clock": {"synchronised": clock.is_synchronised()},
            "broker": components.get("forwarder", {"state": "not running"}),
            "outbox": {
                "by_kind": stats.counts,
                "unsent": stats.total_unsent,
                "parked": stats.parked,
                "oldest_unsent_age_s": oldest_age,
                "parked_messages": [asdict(p) for p in self.outbox.parked(limit=10)],
            },
            "disk": {
                "free_mb": round(usage.free / 1024 / 1024, 1),
                "total_mb": round(usage.total / 1024 / 1024, 1),
                "free_bytes": usage.free,
                "total_bytes": usage.total,
                "intake_floor_mb": cfg.store.min_free_mb,
                "low": usage.free < cfg.store.low_disk_warn_mb * 1024 * 1024,
            },
            "devices": [d.as_json() for d in self.devices()],
            "components": {c.name: self._component_status(c, components) for c in self.runtime.components},
            "downlink": self.dead_letters(),
            "model": components.get("retina", {}).get("model"),
            "store": {"quarantined_file": self.store.get_kv(QUARANTINE_KEY)},
            "systemd_notify": self.runtime.notifier.snapshot(),
            "recent_errors": [
                e.as_json() for e in _with_link_error(recent_events(self.store, limit=10, min_level="warning"), link)
            ],
            "thresholds": {"page_stale_s": cfg.health.page_stale_s, "broker_down_s": cfg.health.broker_down_s},
        }

    def _component_status(self, component: Component, snapshots: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Health, the component's own snapshot, and what the supervisor did: restarts and the last failure."""
        record = self.runtime.supervision.of(component.name)
        return {
            "healthy": component.healthy(),
            **snapshots.get(component.name, {}),
            "restarts": record.restarts,
            "last_failure": record.last_failure,
            "last_failure_bug": record.last_failure_bug,
            "last_failure_at": None if record.last_failure_at is None else record.last_failure_at.isoformat(),
        }

    def dead_letters(self, limit: int = 10) -> dict[str, Any]:
        """Downlink messages that failed the contract: how many, and the newest reasons (never payloads)."""
        found = self.outbox.dead_letters(limit=limit)
        return {
            "dead_letters": found.total,
            "dead_letters_kept": found.kept,
            "recent": [
                {
                    "id": d.id,
                    "received_at": d.received_at,
                    "topic": d.topic,
                    "what": d.what,
                    "field": d.field,
                    "reason": d.reason,
                    "size_bytes": d.size_bytes,
                }
                for d in found.recent
            ],
        }

    def health(self) -> Health:
        """The one health model's answer (:func:`gateway.health.assess`) for the badge, ``/healthz`` and
        ``/metrics``: green, amber or red, with the named problems (no patient data)."""
        oldest_age: float | None = None
        free: int | None = None
        with contextlib.suppress(GatewayError):  # the store's own problem is reported by _assess
            oldest_age = self._oldest_unsent_age(self.outbox.stats())
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(self.store.image_dir).free
        return self._assess(oldest_age, free)

    def _oldest_unsent_age(self, stats: OutboxStats) -> float | None:
        if not stats.oldest_unsent_created_at:
            return None
        created = datetime.fromisoformat(stats.oldest_unsent_created_at)
        return max(0.0, (self.runtime.clock.utc_now() - created).total_seconds())

    def _link(self) -> LinkFacts | None:
        forwarder = self.runtime.component("forwarder")
        return forwarder.link_status() if isinstance(forwarder, ReportsLink) else None

    def _assess(self, oldest_unsent_age_s: float | None, disk_free_bytes: int | None) -> Health:
        """Gather the facts the health model looks at and ask it."""
        store_error: str | None = None
        try:
            self.store.scalar("SELECT 1")
        except GatewayError as exc:
            store_error = type(exc).__name__
        writable, model_error = True, None
        now = self.runtime.clock.utc_now()
        facts: list[ComponentFacts] = []
        for component in self.runtime.components:
            if isinstance(component, HealthMonitor):
                writable = component.writable
            if isinstance(component, ReportsModel):
                model_error = component.model_problem() or model_error
            record = self.runtime.supervision.of(component.name)
            age = None if record.last_failure_at is None else (now - record.last_failure_at).total_seconds()
            facts.append(ComponentFacts(component.name, component.healthy(), record.restarts, record.last_failure,
                                        age))  # fmt: skip
        snapshot = HealthFacts(
            store_error=store_error,
            store_writable=writable,
            link=self._link(),
            oldest_unsent_age_s=oldest_unsent_age_s,
            disk_free_bytes=disk_free_bytes,
            clock_synchronised=self.runtime.clock.is_synchronised(),
            components=tuple(facts),
            model_error=model_error,
        )
        return assess(snapshot, HealthThresholds.from_config(self.runtime.config))

    def devices(self) -> list[DeviceView]:
        """Devices seen: meters known to the store with the core's live state over them, then live devices the
        store does not know (a camera, a Bluetooth meter that could not be reached). No patient data."""
        live = dict(self.runtime.devices.items())
        views: list[DeviceView] = []
        for meter in store_readings.list_meters(self.store):
            stored = DeviceView(
                device_id=meter.meter_id,
                kind="meter",
                transport=meter.transport,
                family=meter.family,
                model=meter.model,
                last_seen=meter.last_seen,
                last_sync=meter.last_sync,
                last_error=meter.last_error,
            )
            entry = live.pop(stored.device_id, None)
            views.append(stored if entry is None else _live_device(stored.device_id, entry, stored))
        views.extend(_live_device(device_id, entry, None) for device_id, entry in live.items())
        return [replace(v, downloadable=self._downloadable(v)) if v.kind == "meter" else v for v in views]

    def _downloadable(self, meter: DeviceView) -> bool:
        """A desk download of ``meter`` can work: its transport is a meter link, and a component serves it."""
        if meter.transport not in ("serial", "ble"):
            return False
        return self.runtime.desk.handles(sync_request_type(meter.device_id))

    # -- desk: meters ---------------------------------------------------------------------------
    def request_meter_sync(
        self, target: str, *, patient_id: str | None, operator: str, cuff_user: int | None = None
    ) -> str:
        """Ask the core to download the meter at ``target`` (BLE address, serial port or meter id); audited.
        ``cuff_user``: on a multi-user Bluetooth cuff, the cuff user who is this patient (None: every one).

        Raises:
            DeskUnavailable: no meter component serves ``target``'s transport (nothing audited).
            IntakeRefused / DiskFull: the store cannot take readings now (nothing asked, nothing audited).
        """
        session_id = new_id()
        request_type = sync_request_type(target)  # Bluetooth targets are BLE downloads, the rest serial
        if not self.runtime.desk.handles(request_type):
            name = request_type.__name__
            raise DeskUnavailable("no meter service is running to serve this request", request_type=name)
        self.store.check_intake()  # a full store is said now, not after the nurse has waited for the meter
        detail: dict[str, Any] = {"session_id": session_id}
        options: dict[str, Any] = {}
        if cuff_user is not None and issubclass(request_type, BleSyncRequest):
            detail["cuff_user"] = options["cuff_user"] = cuff_user
        audit.add(self.store, actor=operator, action="meter_sync_requested", target_kind="meter", target_id=target,
                  patient_id=patient_id, detail=detail)  # fmt: skip
        request = request_type(request_id=session_id, target=target, patient_id=patient_id, operator=operator,
                               **options)  # fmt: skip
        self.runtime.progress.put(session_id, MeterProgress(state=DeskState.QUEUED, target=target))
        try:
            self.runtime.desk.submit(request)
        except DeskUnavailable:
            self.runtime.progress.remove(session_id)
            raise
        return session_id

    def progress(self, session_id: str) -> DeskSession | None:
        """A desk session or request: its live progress (n of N), or the stored session once the core has
        forgotten it; None when neither knows the id."""
        live = self.runtime.progress.get(session_id)
        stored = store_sessions.get_session(self.store, session_id)
        if live is None and stored is None:
            return None
        if stored is None:
            assert live is not None
            meter_id = live.meter_id if isinstance(live, MeterProgress) else None
            return DeskSession(session_id, live, meter_id=meter_id)
        if live is None:
            live = _stored_progress(stored)
        meter_id = stored.meter_id or (live.meter_id if isinstance(live, MeterProgress) else None)
        return DeskSession(session_id, live, patient_id=stored.patient_id, meter_id=meter_id,
                           stored_error=stored.error)  # fmt: skip

    def progress_version(self) -> int:
        """The desk progress board's change counter: read it before :meth:`progress`, then
        :meth:`wait_progress` for a newer one (pushed events)."""
        return self.runtime.progress.version

    def wait_progress(self, version: int, timeout: float) -> int:
        """Block (on a condition, never a polling loop) until some desk session's progress changed after
        ``version``, or ``timeout`` seconds; the version now. Callers then read :meth:`progress` again."""
        return self.runtime.progress.wait_newer(version, timeout)

    def wait_finished(self, request_id: str, timeout: float) -> DeskProgress | None:
        """Wait (on the progress board's condition) until a desk request is finished, at most ``timeout``
        seconds; its live progress then (None once the core has forgotten it). The technician's page asks
        for the photo and waits here for the verdict: the answer is then the verdict page itself."""
        deadline = time.monotonic() + timeout  # real waiting time (a test's fake clock does not move)
        while True:
            version = self.runtime.progress.version
            live = self.runtime.progress.get(request_id)
            left = deadline - time.monotonic()
            if live is None or live.state.finished or left <= 0:
                return live
            self.runtime.progress.wait_newer(version, left)

    def session_readings(
        self,
        session_id: str,
        *,
        page: int | None = None,
        low_below: float,
        high_above: float,
        per_page: int = DESK_READINGS_PER_PAGE,
    ) -> ReadingsPage:
        """One page of the readings a session stored, in meter order (patient data: behind login); the last
        page (the newest readings) unless ``page`` (1 = the oldest) says otherwise. The page also counts the
        whole download's readings below ``low_below`` and above ``high_above`` mmol/L."""
        counts = store_readings.session_counts(self.store, session_id, low_below=low_below, high_above=high_above)
        pages = max(1, -(-counts.total // per_page))
        number = pages if page is None else min(max(1, page), pages)
        offset = (number - 1) * per_page
        rows = store_readings.readings_of_session(self.store, session_id, limit=per_page, offset=offset)
        return ReadingsPage(rows, counts.total, counts.low, counts.high, page=number, pages=pages, first=offset + 1,
                            last=offset + len(rows))  # fmt: skip

    def session_qc(self, session_id: str) -> list[QcResultRow]:
        """The control-solution (quality-control) results a desk download brought, in meter order: the meter's,
        never the patient's readings (no patient data in them)."""
        return store_qc.results_of_session(self.store, session_id)

    def meter_qc_history(self, meter_id: str, *, limit: int = QC_HISTORY_ROWS) -> list[QcResultRow]:
        """A meter's quality-control history, newest first (the nurse's QC panel)."""
        return store_qc.history(self.store, meter_id, limit=limit)

    def bp_target(self) -> BloodPressureTarget:
        """The programme's blood pressure target (readings above it are highlighted at the desk)."""
        bp = self.runtime.config.meters.blood_pressure
        return BloodPressureTarget(systolic_mmhg=bp.target_systolic_mmhg, diastolic_mmhg=bp.target_diastolic_mmhg)

    def visit_blood_pressure(self, session_id: str) -> list[BloodPressureRow]:
        """The blood pressure readings of the visit a desk session belongs to, newest first (patient data: behind
        login): those this session stored, and those stored today by the same patient's other desk sessions."""
        stored = store_sessions.get_session(self.store, session_id)
        ids = {session_id}
        patient = None if stored is None else stored.patient_id
        if patient is not None:
            ids.update(s.session.session_id for s in self.sessions_today("meter") if s.session.patient_id == patient)
        target = self.bp_target()
        rows = store_bp.of_sessions(self.store, sorted(ids), patient_id=patient)
        return [BloodPressureRow.of(row, target) for row in rows]

    def sessions_today(self, kind: store_sessions.SessionKind | None = None) -> list[TodaySession]:
        """Desk sessions started since midnight in the clinic's time zone, newest first."""
        today = []
        for row in store_sessions.sessions_since(self.store, _clinic_midnight(self.runtime), kind):
            # The core's live progress keeps a failure's error as data (its type) and the target asked for.
            live = self.runtime.progress.get(row.session_id)
            error_type = None if live is None or live.error is None else live.error.type
            target = live.target if isinstance(live, MeterProgress) else None
            today.append(TodaySession(row, error_type=error_type, target=target))
        return today

    def link_meter(self, meter_id: str, patient_id: str, *, actor: str) -> None:
        """Register a meter to a patient (audited)."""
        store_readings.link_meter_to_patient(self.store, meter_id, patient_id, actor=actor)

    def visit_picture(self, patient_id: str) -> VisitPicture:
        """The patient's readings since their last visit (a desk session before today, clinic time), at most
        ``glucose.visit_window_days`` back, with the clinicians' summary (QC results are never among them)."""
        section = self.runtime.config.glucose
        now = self.runtime.clock.utc_now()
        tz = ZoneInfo(self.runtime.config.gateway.timezone)
        midnight = now.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)
        last_visit = store_sessions.last_visit_before(self.store, patient_id, iso(midnight))
        since = now - timedelta(days=section.visit_window_days)
        if last_visit is not None:
            since = max(since, datetime.fromisoformat(last_visit))
        rows = store_readings.patient_readings_since(self.store, patient_id, iso(since))
        ranges = GlucoseRanges(low=section.low_mmol_l, high=section.high_mmol_l, gmi_min_days=section.gmi_min_days,
                               gmi_min_readings=section.gmi_min_readings)  # fmt: skip
        summary = summarize([r.mmol_l for r in rows], [datetime.fromisoformat(r.corrected_time) for r in rows], ranges)
        return VisitPicture(patient_id=patient_id, since=iso(since), last_visit=last_visit, readings=rows,
                            summary=summary, ranges=ranges)  # fmt: skip

    def meter_patient(self, meter_id: str) -> str | None:
        """The patient a meter's downloads go to when none is set: the config's registry, else the desk's link
        (the order a download resolves it in)."""
        registered = self.runtime.config.meters.registry.get(meter_id)
        return registered or store_readings.patient_for_meter(self.store, meter_id)

    def unassigned_readings(self, meter_id: str | None = None) -> list[UnassignedGroup]:
        """Readings stored without a patient (auto-sync, a shared cuff's other users): glucose readings one group
        per meter, blood pressure readings one per cuff user (only ``meter_id``'s when given)."""
        return store_assignments.unassigned(self.store, meter_id)

    def assign_readings(
        self,
        meter_id: str,
        patient_id: str,
        *,
        through: int,
        actor: str,
        record: ReadingKind = ReadingKind.GLUCOSE,
        cuff_user: int | None = None,
    ) -> AssignResult:
        """Give a meter's unassigned ``record`` readings (a cuff's: ``cuff_user``'s; up to stored row ``through``,
        what the page showed) to a patient: audited, and a ``cg.assignment/1`` correction queued for the
        platform. Readings that have a patient are never changed. Raises IntakeRefused / DiskFull when the store
        cannot take the correction."""
        return store_assignments.assign(
            self.store, meter_id, patient_id, through=through, actor=actor, record=record, cuff_user=cuff_user
        )

    # -- desk logins and sessions (web area) -----------------------------------------------------
    def login_limits(self) -> store_logins.LoginLimits:
        """Login attempts allowed per user name and per client address within a minute (from config)."""
        web = self.runtime.config.web
        return store_logins.LoginLimits(
            per_user=web.login_attempts_per_minute, per_address=web.login_attempts_per_address_per_minute
        )

    def session_timeouts(self) -> store_logins.SessionTimeouts:
        """Idle and absolute lifetime of a desk session (from config)."""
        web = self.runtime.config.web
        return store_logins.SessionTimeouts(
            idle=timedelta(minutes=web.session_idle_minutes), absolute=timedelta(hours=web.session_max_hours)
        )

    def user(self, username: str) -> UserRow | None:
        """A local user of the pages (disabled ones included), or None."""
        return self.users.get(username)

    def begin_login(self, username: str, address: str) -> store_logins.LoginAttempt:
        """Check and record a login attempt atomically; raises LoginThrottled (audited) past a limit."""
        return store_logins.reserve_attempt(self.store, username=username, address=address, limits=self.login_limits())

    def login_failed(self, attempt: store_logins.LoginAttempt) -> None:
        """The attempt's name or password was wrong (it keeps counting; audited)."""
        store_logins.login_failed(self.store, attempt)

    def login_succeeded(self, attempt: store_logins.LoginAttempt) -> str:
        """Open a desk session for the attempt's user (audited); the token for the session cookie."""
        token = store_logins.login_succeeded(self.store, attempt)
        store_logins.prune_sessions(self.store, self.session_timeouts())  # sessions nobody came back to
        return token

    def desk_session(
        self, token: str, *, touch: bool = True
    ) -> tuple[store_users.UserRow, store_logins.WebSession] | None:
        """The user and session a session token opens, or None (logged out, timed out, user disabled)."""
        session = store_logins.live_session(self.store, token, self.session_timeouts(), touch=touch)
        if session is None:
            return None
        user = store_users.get_user(self.store, session.username)
        if user is None or user.disabled:
            return None
        return user, session

    def logout(self, token: str, *, actor: str) -> None:
        """End the session ``token`` opens, for every copy of its cookie (audited)."""
        store_logins.end_session(self.store, token, actor=actor)

    # -- outbox (operations) --------------------------------------------------------------------
    def retry_parked(self, kind: str | None = None) -> int:
        """Put parked messages back in the queue."""
        return self.outbox.retry_parked(kind)

    def prune(self, retention_days: int | None = None) -> PruneResult:
        """Apply the disk policy now, all passes at once (``gateway prune``); ``store.retention_days`` by
        default."""
        days = self.runtime.config.store.retention_days if retention_days is None else retention_days
        return prune(self.store, days)

    # -- status page: queue history (web area) --------------------------------------------------
    def sample_queue(self, keep_hours: float = 24.0) -> None:
        """Record the outbox depth now (the web sampler calls this every minute)."""
        stats = self.outbox.stats()
        acked_total, _ = self.outbox.ack_activity()
        queue_samples.add_sample(
            self.store,
            unsent=stats.total_unsent,
            parked=stats.parked,
            acked_total=acked_total,
            keep_since=self.runtime.clock.utc_now() - timedelta(hours=keep_hours),
        )

    def queue_history(self, hours: float | None = None) -> dict[str, Any]:
        """Outbox depth samples, the drain rate and the last ack (no patient data).

        ``hours`` picks the chart's window; None picks it from the data (:func:`auto_window`), so that the
        recent activity fills the chart instead of being a sliver at its edge.

        The drain rate is truthful: 0 while the link to the broker is down, whatever the samples say;
        otherwise acked messages per minute between the two newest samples (None with fewer than two; a
        retention prune between them would make the difference negative, which reads as 0). ``drain_state``
        says which: ``offline``, ``idle`` (nothing to send), ``draining`` or ``measuring``.
        """
        now = self.runtime.clock.utc_now()
        kept = queue_samples.samples_since(self.store, now - timedelta(hours=max(QUEUE_WINDOWS_H)))
        window = auto_window(kept, now) if hours is None else hours
        since = now - timedelta(hours=window)
        if window <= max(QUEUE_WINDOWS_H):
            samples = [s for s in kept if s.taken_at >= since]
        else:  # a longer window than the chart offers (the CLI, a script)
            samples = queue_samples.samples_since(self.store, since)
        drain = None
        if len(samples) >= 2:
            a, b = samples[-2], samples[-1]
            minutes = (b.taken_at - a.taken_at).total_seconds() / 60
            if minutes > 0:
                drain = round(max(0, b.acked_total - a.acked_total) / minutes, 2)
        link = self._link()
        unsent = self.outbox.stats().total_unsent
        if link is not None and not link.online:
            drain, state = 0.0, "offline"
        elif unsent == 0:
            state = "idle"
        else:
            state = "measuring" if drain is None else "draining"
        _, last_ack = self.outbox.ack_activity()
        return {
            "samples": [{"at": s.at, "unsent": s.unsent, "parked": s.parked} for s in samples],
            "window_hours": window,
            "windows_hours": list(QUEUE_WINDOWS_H),
            "drain_per_min": drain,
            "drain_state": state,
            "last_ack_at": last_ack,
        }

    # -- desk: retina (web area; served by gateway.retina.service on the DeskBus) -----------------
    def retina_available(self) -> bool:
        """True while the retina component is serving desk requests."""
        return self.runtime.desk.handles(RetinaCaptureRequest)

    def start_retina_session(self, patient_id: str, *, operator: str) -> str:
        """Open a retinal capture session (a visit) for a patient at the technician's desk (audited, same
        transaction); a patient who already has one today gets that one back (their photos with it), audited as
        resumed, never a second, empty visit."""
        today = [s for s in self.sessions_today("retina") if s.session.patient_id == patient_id]
        if today:
            session_id = today[0].session.session_id  # newest first
            audit.add(self.store, actor=operator, action="retina_session_resumed", target_kind="session",
                      target_id=session_id, patient_id=patient_id)  # fmt: skip
            return session_id
        session_id = new_id()
        with self.store.transaction():
            store_sessions.start_session(
                self.store, "retina", patient_id=patient_id, operator=operator, session_id=session_id
            )
            audit.add(self.store, actor=operator, action="retina_session_started", target_kind="session",
                      target_id=session_id, patient_id=patient_id)  # fmt: skip
        return session_id

    def _submit_retina(self, request: RetinaPhotoRequest, *, action: str, nbytes: int = 0,
                       retake_of: str | None = None) -> str:  # fmt: skip
        self.store.check_intake(nbytes)  # a full store is said at once, before the photo is handed over
        entry = AuditEntry(
            actor=request.operator or "",
            action=action,
            target_kind="session",
            target_id=request.session_id,
            patient_id=request.patient_id,
            detail={"request_id": request.request_id, "eye": str(request.eye), "field": str(request.field),
                    "retake_of": retake_of},
        )  # fmt: skip
        request = replace(request, audit=entry)
        self.runtime.progress.put(request.request_id, RetinaProgress(state=DeskState.QUEUED))
        try:
            self.runtime.desk.submit(request)
        except DeskUnavailable:
            self.runtime.progress.remove(request.request_id)
            raise DeskUnavailable("the retina service is not running", request_type=type(request).__name__) from None
        return request.request_id

    def request_capture(
        self,
        *,
        patient_id: str,
        eye: str,
        field: str,
        operator: str,
        session_id: str | None = None,
        retake_of: str | None = None,
    ) -> str:
        """Ask the core to take a photo with the camera now; poll :meth:`progress` with the returned id.

        The photo is audited (``retina_capture``, or ``retina_retake`` with ``retake_of``) in the transaction
        that stores it. Raises CaptureError for an eye or field that is not one; IntakeRefused / DiskFull when
        the store cannot take a photo now; DeskUnavailable when the retina service is not running.
        """
        action = "retina_retake" if retake_of else "retina_capture"
        eye_, field_ = _eye_field(eye, field)
        request = RetinaCaptureRequest(request_id=new_id(), operator=operator, patient_id=patient_id, eye=eye_,
                                       field=field_, session_id=session_id)  # fmt: skip
        return self._submit_retina(request, action=action, retake_of=retake_of)

    def upload_capture(
        self,
        data: bytes,
        *,
        patient_id: str,
        eye: str,
        field: str,
        operator: str,
        session_id: str | None = None,
        retake_of: str | None = None,
    ) -> str:
        """Hand a photo uploaded at the desk to the core; poll :meth:`progress` with the returned id.

        Audited (``retina_upload``, or ``retina_retake`` with ``retake_of``: a retake of an uploaded photo is
        another file) in the transaction that stores it. Raises CaptureError for an eye or field that is not
        one; IntakeRefused / DiskFull when the store cannot take ``data`` now; DeskUnavailable when the retina
        service is not running.
        """
        eye_, field_ = _eye_field(eye, field)
        request = RetinaUploadRequest(request_id=new_id(), operator=operator, patient_id=patient_id, eye=eye_,
                                      field=field_, session_id=session_id, data=data)  # fmt: skip
        action = "retina_retake" if retake_of else "retina_upload"
        return self._submit_retina(request, action=action, nbytes=len(data), retake_of=retake_of)

    def preview_stream(self, max_frames: int | None = None) -> tuple[str, Iterator[bytes]] | None:
        """The camera's live preview as (content type, MJPEG parts), or None when no retina component runs.

        The stream never raises: a camera that goes away ends it with a frame saying so.
        """
        preview = self.runtime.camera_preview
        if preview is None:
            return None
        return preview.preview_type, preview.preview(max_frames)

    def captures(self, *, session_id: str | None = None, limit: int = 20) -> list[CaptureRow]:
        """Stored captures, newest first (patient data: behind login)."""
        return store_captures.list_captures(self.store, session_id=session_id, limit=limit)

    def capture(self, capture_id: str) -> CaptureRow | None:
        """One stored capture with its verdicts (patient data: behind login)."""
        return store_captures.get_capture(self.store, capture_id)

    def referrals(self, *, patient_id: str | None = None, limit: int = 20) -> list[ReferralRow]:
        """Referral decisions the platform sent down, newest first, also those naming only one of the patient's
        captures (patient data: behind login)."""
        return store_referrals.list_referrals(self.store, patient_id=patient_id, limit=limit)

    # -- desk: referral inbox (web area) --------------------------------------------------------
    def referral_inbox(self, *, recent: int = 100) -> list[ReferralRow]:
        """The desk's referral decisions: all unseen ones and the ``recent`` newest, newest first, each with
        its capture's patient, eye and field when known (patient data: behind login)."""
        return store_referrals.inbox(self.store, recent=recent)

    def referral(self, referral_id: str) -> ReferralRow | None:
        """One referral decision as the inbox shows it, or None (patient data: behind login)."""
        return store_referrals.get_referral(self.store, referral_id)

    def unseen_referral_count(self) -> int:
        """How many referral decisions nobody at the desk has acknowledged yet (a count, no patient data)."""
        return store_referrals.count_unseen(self.store)

    def acknowledge_referral(self, referral_id: str, user: str) -> bool:
        """Mark a referral decision as seen by ``user`` at the desk, with its audit row in the same transaction.

        Returns False (and audits nothing) when the referral is unknown or was already acknowledged, so a
        double click or two desks acknowledging at once leave one audit row.
        """
        row = store_referrals.get_referral(self.store, referral_id)
        if row is None:
            return False
        with self.store.transaction() as db:
            if not store_referrals.mark_seen(self.store, referral_id):  # a savepoint inside this transaction
                return False
            audit.record(
                db,
                self.store,
                actor=user,
                action="referral_acknowledged",
                target_kind="referral",
                target_id=referral_id,
                patient_id=row.patient_id,
                detail={"decision": row.decision, "capture_id": row.capture_id},
            )
        return True


def _with_link_error(events: list[StoredEvent], link: LinkFacts | None) -> list[StoredEvent]:
    """Recent warnings and errors with the broker link's last error among them, newest first.

    The link's errors are not events (a flapping link would flood the events topic); the forwarder keeps
    the last one, and IT must see it with the rest ("Recent errors: none" during an outage was a lie).
    """
    if link is None or link.last_error is None or link.last_error_at is None:
        return events
    entry = StoredEvent(
        id=None,
        at=link.last_error_at,
        level="warning" if link.online else "error",
        kind="broker_link",
        message=str(link.last_error),
        detail={"state": link.state, "error": link.last_error.type},
    )
    merged = [*events, entry]
    merged.sort(key=lambda e: datetime.fromisoformat(e.at), reverse=True)
    return merged[: max(len(events), 1)]


def _clinic_midnight(runtime: Runtime) -> str:
    """Today's midnight in the clinic's time zone, as the store's UTC text (where "today" starts)."""
    tz = ZoneInfo(runtime.config.gateway.timezone)
    local_midnight = runtime.clock.utc_now().astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    return local_midnight.astimezone(UTC).isoformat(timespec="milliseconds")


def _eye_field(eye: str, field: str) -> tuple[Eye, Field]:
    """The desk's eye and field choice as values; CaptureError when they are not one."""
    try:
        return Eye(eye), Field(field)
    except ValueError:
        raise CaptureError("eye must be L or R and field disc or macula") from None


def _stored_progress(row: SessionRow) -> DeskProgress:
    """A stored session's progress, for a session the core no longer reports (after a restart)."""
    state = DeskState(row.state)
    if DeskKind(row.kind) is DeskKind.RETINA:
        return RetinaProgress(state=state)
    return MeterProgress(state=state, done=row.records_new, total=row.records_total, meter_id=row.meter_id,
                         added=row.records_new)  # fmt: skip


# -- the facade's parts ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OutboxSummary:
    """The outbox as IT sees it (``gateway outbox stats``): counts, the last ack, parked reasons; no payloads."""

    unsent: int
    parked: int
    acked_kept: int
    last_ack_at: str | None
    oldest_unsent_created_at: str | None
    by_kind: dict[str, dict[str, int]]
    parked_messages: list[ParkedMessage]


class OutboxAdmin:
    """``services.outbox``: what IT may see and do with the outbox (maintained counts: cheap at any size)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._outbox = Outbox(store)

    def stats(self) -> OutboxStats:
        """Counts per kind and state, the unsent and parked totals, the oldest unsent message's time."""
        return self._outbox.stats()

    def ack_activity(self) -> tuple[int, str | None]:
        """Acked messages still kept, and when the newest platform ack arrived."""
        return self._outbox.ack_activity()

    def parked(self, limit: int = 50) -> list[ParkedMessage]:
        """Parked messages with their reasons, oldest first (no payloads)."""
        return self._outbox.parked(limit=limit)

    def summary(self, parked_limit: int = 20) -> OutboxSummary:
        """Everything ``gateway outbox stats`` prints."""
        stats = self.stats()
        acked, last_ack = self.ack_activity()
        return OutboxSummary(
            unsent=stats.total_unsent,
            parked=stats.parked,
            acked_kept=acked,
            last_ack_at=last_ack,
            oldest_unsent_created_at=stats.oldest_unsent_created_at,
            by_kind=stats.counts,
            parked_messages=self.parked(limit=parked_limit),
        )

    def retry_parked(self, kind: str | None = None) -> int:
        """Put parked messages (of one kind) back in the queue, after IT fixed the cause."""
        return self._outbox.retry_parked(kind)

    def dead_letters(self, limit: int = 10) -> store_dead_letters.DeadLetterSummary:
        """Downlink messages that failed the contract: how many, and the newest (never payloads)."""
        return store_dead_letters.summary(self.store, limit=limit)

    def dead_letter_payload(self, dead_letter_id: int) -> tuple[bytes, int] | None:
        """The kept bytes of one dead letter and its full size, for IT's terminal (never for logs or pages)."""
        return store_dead_letters.payload_of(self.store, dead_letter_id)


class PhotoSize(StrEnum):
    """The renditions of a photo the technician's page shows: a thumbnail, and a view for the screen."""

    THUMB = "thumb"
    SCREEN = "screen"


_PHOTO_SIDES = {PhotoSize.THUMB: 320, PhotoSize.SCREEN: 1600}
_PHOTO_CACHE = 64
"""Renditions kept in memory (a thumbnail is ~20 KB, a screen view ~300 KB): a morning's gallery."""


@dataclass(frozen=True, slots=True)
class Photo:
    """A rendition of a stored photo (JPEG), with its validator: it never changes for a capture."""

    media_type: str
    data: bytes
    etag: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VisitPhoto:
    """A photo of a visit as the technician's gallery shows it (patient data: behind login)."""

    capture_id: str
    captured_at: str
    eye: Eye
    field: Field
    source: str
    """How it was taken: ``camera``, ``upload`` or ``folder`` (a retake repeats it)."""
    quality_ok: bool
    reasons: tuple[str, ...]
    decision: TriageDecision | None
    """The advisory triage (None when no model ran)."""
    referable_probability: float | None
    delivery: Delivery
    superseded_by: str | None = None
    """The later photo of the same eye and field that replaced this one in the visit (its capture id)."""
    superseded_at: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetinaVisit:
    """A technician's visit of today for the start page (patient data: behind login)."""

    session_id: str
    patient_id: str
    started_at: str
    operator: str | None
    photos: int
    gradable: int


class PhotoDesk:
    """``services.photos``: the technician's visits and their photos, the renditions the page shows, and where
    the gate saw its reasons (the overlay). Reads the store; renders with the retina area's pure functions."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._geometry: OrderedDict[str, QualityGeometry] = OrderedDict()
        self._lock = threading.Lock()

    def visit(self, session_id: str, *, limit: int = 60) -> list[VisitPhoto]:
        """A visit's photos, newest first: each with its delivery state and, when the next photo of the same
        eye and field replaced it (the retake), that photo; a gradable photo is replaced only by a gradable one."""
        rows = store_captures.list_captures(self.store, session_id=session_id, limit=limit)
        delivery = store_captures.delivery_states(self.store, [r.capture_id for r in rows])
        photos: list[VisitPhoto] = []
        replaced_by: dict[str, CaptureRow] = {}
        later: dict[tuple[Eye, Field], CaptureRow] = {}
        for row in rows:  # newest first: remember the next-newer photo of each eye and field
            key = (row.eye, row.field)
            successor = later.get(key)
            # A gradable photo is not replaced by a retake that failed the gate (that one is the outlier).
            if successor is not None and (successor.quality_ok or not row.quality_ok):
                replaced_by[row.capture_id] = successor
            later[key] = row
        for row in rows:
            successor = replaced_by.get(row.capture_id)
            photos.append(
                VisitPhoto(
                    capture_id=row.capture_id,
                    captured_at=row.captured_at,
                    eye=row.eye,
                    field=row.field,
                    source=row.source,
                    quality_ok=row.quality_ok,
                    reasons=row.quality_reasons,
                    decision=row.decision,
                    referable_probability=row.referable_probability,
                    delivery=delivery[row.capture_id],
                    superseded_by=None if successor is None else successor.capture_id,
                    superseded_at=None if successor is None else successor.captured_at,
                )
            )
        return photos

    def visits_today(self) -> list[RetinaVisit]:
        """Today's visits (since the clinic's midnight), newest first, with how many photos each has."""
        visits = []
        for row in store_sessions.sessions_since(self.store, _clinic_midnight(self.runtime), "retina"):
            photos = store_captures.list_captures(self.store, session_id=row.session_id, limit=200)
            visits.append(
                RetinaVisit(
                    session_id=row.session_id,
                    patient_id=row.patient_id or "",
                    started_at=row.started_at,
                    operator=row.operator,
                    photos=len(photos),
                    gradable=sum(1 for p in photos if p.quality_ok),
                )
            )
        return visits

    def photo(self, capture_id: str, size: PhotoSize) -> Photo | None:
        """A JPEG rendition of a stored photo (None for an unknown capture or a missing file); kept in memory
        for the next view (a capture's image never changes: its id and its hash name it).

        Raises:
            CaptureError: the stored file cannot be decoded.
        """
        key = (capture_id, str(size))
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
        if data is None:
            from gateway.retina import imaging  # OpenCV: loaded by the pages' first photo, not by every command

            original = store_captures.image_bytes(self.store, capture_id)
            if original is None:
                return None
            data = imaging.rendition(original, max_side=_PHOTO_SIDES[size], **self._limits())
            with self._lock:
                self._cache[key] = data
                while len(self._cache) > _PHOTO_CACHE:
                    self._cache.popitem(last=False)
        return Photo(media_type="image/jpeg", data=data, etag=f"{capture_id}-{size}")

    def geometry(self, capture_id: str) -> QualityGeometry | None:
        """Where the quality gate saw its reasons on a stored photo (the overlay), or None for an unknown
        capture; from the desk's live result when the core still has it, else measured again on the image (a
        page aid, never stored: the same pure gate gives the same answer)."""
        with self._lock:
            found = self._geometry.get(capture_id)
        if found is not None:
            return found
        for _, progress in reversed(self.runtime.progress.items()):
            outcome = getattr(progress, "outcome", None)
            if outcome is not None and outcome.capture_id == capture_id and outcome.geometry is not None:
                found = outcome.geometry
                break
        if found is None:
            from gateway.retina import imaging, quality
            from gateway.retina.intake import WORKING_SIDE

            original = store_captures.image_bytes(self.store, capture_id)
            if original is None:
                return None
            decoded = imaging.decode(original, reduce_to=WORKING_SIDE, **self._limits())
            found = quality.assess(decoded.image).geometry
        if found is None:  # pragma: no cover - assess always locates
            return None
        with self._lock:
            self._geometry[capture_id] = found
            while len(self._geometry) > 4 * _PHOTO_CACHE:
                self._geometry.popitem(last=False)
        return found

    def _limits(self) -> dict[str, int]:
        retina = self.runtime.config.retina
        return {"max_bytes": int(retina.max_image_mb * 1024 * 1024), "max_pixels": retina.max_pixels}


class UserAdmin:
    """``services.users``: the pages' local users. Every change is audited with its actor, in the transaction
    of the change; disabling a user or changing their password ends their sessions in it too."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, username: str) -> UserRow | None:
        """A user (disabled ones included), or None."""
        return store_users.get_user(self.store, username) if username else None

    def list(self) -> list[UserRow]:
        """Every user, by name."""
        return store_users.list_users(self.store)

    def add(self, username: str, password_hash: str, role: str, *, language: str | None = None, actor: str) -> None:
        """Create a user (UserError when the name is taken or the role unknown)."""
        with self.store.transaction() as db:
            store_users.add_user(self.store, username, password_hash, role, language=language)
            audit.record(db, self.store, actor=actor, action="user_add", target_kind="user", target_id=username,
                         detail={"role": role})  # fmt: skip

    def set_disabled(self, username: str, disabled: bool, *, actor: str) -> None:
        """Disable (ending every session of the user) or re-enable a user."""
        with self.store.transaction() as db:
            store_users.set_disabled(self.store, username, disabled)
            audit.record(db, self.store, actor=actor, action="user_disable" if disabled else "user_enable",
                         target_kind="user", target_id=username)  # fmt: skip

    def set_password(self, username: str, password_hash: str, *, actor: str) -> None:
        """Replace a user's password hash (ending every session of the user)."""
        with self.store.transaction() as db:
            store_users.set_password_hash(self.store, username, password_hash)
            audit.record(db, self.store, actor=actor, action="user_passwd", target_kind="user", target_id=username)

    def set_language(self, username: str, language: str | None, *, actor: str) -> None:
        """Remember a user's page language (None: follow the browser)."""
        with self.store.transaction() as db:
            store_users.set_language(self.store, username, language)
            audit.record(db, self.store, actor=actor, action="set_language", detail={"language": language})


def export_backup(config: GatewayConfig, to: Path) -> store_backup.BackupSummary:
    """``gateway export``: a consistent backup of the store named by ``config`` (safe while the daemon runs)."""
    gw = config.gateway
    return store_backup.export_backup(
        config.db_path, config.image_dir, to, identity={"site_id": gw.site_id, "gateway_id": gw.gateway_id}
    )


def import_backup(config: GatewayConfig, source: Path, *, force: bool = False) -> store_backup.BackupSummary:
    """``gateway import``: restore a backup into the store named by ``config`` (refused while the daemon runs)."""
    return store_backup.import_backup(source, config.db_path, config.image_dir, force=force)
