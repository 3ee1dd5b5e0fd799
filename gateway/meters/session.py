"""One meter download, whatever the transport: cursor, clock correction, patient link, dedupe, progress.

The session drives a :class:`~gateway.meters.MeterDriver` and writes through the store's unit of work for a
download (:class:`~gateway.store.downloads.DownloadWriter`: a transaction to begin, one per batch, one to
finish), so a link that drops part way keeps everything that arrived; the next download resumes after the
highest stored sequence (the store's unique reading identity makes any overlap harmless).

A blood pressure cuff (``MeterInfo.measures``) is downloaded the same way into blood pressure readings. On a
multi-user cuff with a ``cuff_user`` chosen at the desk only that user's measurements are the patient's: the
other users' are stored without a patient (kept, never attributed to this one, counted in ``other_users``).
With no cuff user chosen (the desk's "its one user (one-person cuff)", an auto-sync of a linked cuff) the patient's
are those of the cuff's one user (:class:`CuffOwner`): a cuff that names a second user is shared, and a
measurement is never given to the patient on the strength of an assumption its cuff contradicts.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.desk import DeskState
from gateway.errors import DeviceDisconnected, DeviceError, ErrorInfo, GatewayError, ProtocolError
from gateway.meters import MeterDriver
from gateway.records import (
    BloodPressureReading,
    ControlResult,
    CuffRecord,
    GlucoseReading,
    Measures,
    MeterInfo,
    MeterRecord,
    MeterValue,
)
from gateway.store import Store
from gateway.store import blood_pressure as store_bp
from gateway.store import readings as store_readings
from gateway.store.downloads import DownloadWriter, StoredReading

_logger = logging.getLogger(__name__)

FLAG_METER_CLOCK_IMPLAUSIBLE = "meter_clock_implausible"
FLAG_METER_CLOCK_UNKNOWN = "meter_clock_unknown"
FLAG_GATEWAY_CLOCK_UNSYNCED = "gateway_clock_unsynchronised"


@dataclass(frozen=True, slots=True)
class Progress:
    """n of N for the pages and the CLI. ``total`` is None while unknown."""

    session_id: str
    meter_id: str | None
    done: int
    total: int | None
    state: DeskState


@dataclass(frozen=True, slots=True)
class ClockCorrection:
    """How meter times are turned into trusted UTC times for one download."""

    offset_s: float
    trusted: bool
    flags: tuple[str, ...]

    def correct(self, meter_time: datetime, tz: ZoneInfo) -> datetime:
        """Meter wall-clock time -> corrected aware UTC time."""
        local = (meter_time + timedelta(seconds=self.offset_s)).replace(tzinfo=tz)
        return local.astimezone(UTC)


def measure_clock(
    meter_now: datetime | None,
    gateway_now: datetime,
    *,
    tz: ZoneInfo,
    gateway_synchronised: bool,
    max_skew: timedelta,
) -> ClockCorrection:
    """Offset between the meter's clock and the gateway's, and whether corrected times can be trusted.

    Pure: the gateway clock must be NTP-synchronised, the meter must report its clock, and the
    difference must be plausible (within ``max_skew``) for ``trusted``. Times are corrected either way.
    """
    flags: list[str] = []
    if not gateway_synchronised:
        flags.append(FLAG_GATEWAY_CLOCK_UNSYNCED)
    if meter_now is None:
        flags.append(FLAG_METER_CLOCK_UNKNOWN)
        return ClockCorrection(offset_s=0.0, trusted=False, flags=tuple(flags))
    gateway_local = gateway_now.astimezone(tz).replace(tzinfo=None)
    offset = gateway_local - meter_now.replace(tzinfo=None)
    if abs(offset) > max_skew:
        flags.append(FLAG_METER_CLOCK_IMPLAUSIBLE)
    return ClockCorrection(offset_s=offset.total_seconds(), trusted=not flags, flags=tuple(flags))


@dataclass(slots=True)
class CuffOwner:
    """Whose measurements on a cuff are the patient's when no cuff user was chosen: the cuff's one user.

    That user is the one the cuff named in every measurement stored before (when it named exactly one), else the
    first user this download names. A cuff that has named two or more users before is ``shared``: no user of it is
    known to be the patient, and none of its measurements is the patient's until the nurse assigns them per user.
    A measurement that names no user is the patient's only on a cuff that names none (it is a guest's otherwise).
    """

    user: int | None = None
    shared: bool = False

    @classmethod
    def from_history(cls, users: frozenset[int]) -> CuffOwner:
        """From the users the cuff named in its stored measurements."""
        if len(users) > 1:
            return cls(shared=True)
        return cls(user=next(iter(users), None))

    def is_patients(self, user_id: int | None) -> bool:
        """Whether a measurement naming ``user_id`` (None: no user) is the patient's; the first user named
        becomes the cuff's one user."""
        if self.shared:
            return False
        if user_id is None:
            return self.user is None
        if self.user is None:
            self.user = user_id
        return user_id == self.user


@dataclass(frozen=True, slots=True)
class SessionResult:
    """Outcome of one download."""

    session_id: str
    meter: MeterInfo | None
    received: int
    added: int
    """New patient readings stored."""
    duplicates: int
    state: DeskState
    """``done``, ``interrupted`` (link lost, what arrived is kept) or ``failed``."""
    error: ErrorInfo | None = None
    """The device, protocol or store error that ended the download early (type and message as data)."""
    clock: ClockCorrection | None = None
    qc_added: int = 0
    """New control-solution (quality-control) results stored: the meter's, not the patient's."""
    other_users: int = 0
    """Measurements of other users of a multi-user cuff: stored without a patient."""
    shared_cuff: bool = False
    """No cuff user was chosen for a cuff that names several: none of its measurements went to the patient."""


ProgressCallback = Callable[[Progress], None]


class DownloadSession:
    """Download one meter into the store."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        driver: MeterDriver,
        *,
        tz: ZoneInfo,
        patient_id: str | None = None,
        operator: str | None = None,
        registry: Mapping[str, str] | None = None,
        max_clock_skew: timedelta = timedelta(days=365),
        set_meter_clock: bool = False,
        on_progress: ProgressCallback | None = None,
        batch_size: int = 50,
        session_id: str | None = None,
        cuff_user: int | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.driver = driver
        self.tz = tz
        self.patient_id = patient_id
        self.operator = operator
        self.registry = dict(registry or {})
        self.max_clock_skew = max_clock_skew
        self.set_meter_clock = set_meter_clock
        self.on_progress = on_progress
        self.batch_size = batch_size
        self.cuff_user = cuff_user
        self.cuff_owner: CuffOwner | None = None
        """With no cuff user chosen, whose measurements are the patient's (set once the cuff is known)."""
        self.other_users = 0
        self.writer = DownloadWriter.begin(store, patient_id=patient_id, operator=operator, session_id=session_id)
        self.session_id = self.writer.session_id

    @classmethod
    def from_config(
        cls, store: Store, clock: Clock, driver: MeterDriver, config: GatewayConfig, **options: Any
    ) -> DownloadSession:
        """A session with the config's time zone, meter registry and clock-skew limit; ``options`` as for __init__."""
        return cls(
            store,
            clock,
            driver,
            tz=ZoneInfo(config.gateway.timezone),
            registry=config.meters.registry,
            max_clock_skew=timedelta(days=config.meters.max_clock_skew_days),
            **options,
        )

    def _progress(self, meter_id: str | None, done: int, total: int | None, state: DeskState) -> None:
        if self.on_progress is not None:
            self.on_progress(Progress(self.session_id, meter_id, done, total, state))

    def _resolve_patient(self, meter_id: str) -> str | None:
        if self.patient_id is not None:
            return self.patient_id
        return self.registry.get(meter_id) or store_readings.patient_for_meter(self.store, meter_id)

    def _since(self, info: MeterInfo) -> int | None:
        """The resume cursor: the highest sequence stored for this meter or cuff."""
        if info.measures is Measures.BLOOD_PRESSURE:
            return store_bp.last_sequence(self.store, info.meter_id)
        return store_readings.last_sequence(self.store, info.meter_id)

    def _to_stored(
        self, record: MeterRecord | CuffRecord, info: MeterInfo, correction: ClockCorrection, patient_id: str | None
    ) -> StoredReading:
        """The record as the store keeps it: a glucose reading or QC result from a meter, a blood pressure reading
        from a cuff."""
        if isinstance(record, CuffRecord):
            return self._to_blood_pressure(record, info, correction, patient_id)
        return self._to_glucose(record, info, correction, patient_id)

    def _to_blood_pressure(
        self, record: CuffRecord, info: MeterInfo, correction: ClockCorrection, patient_id: str | None
    ) -> BloodPressureReading:
        if self.cuff_user is not None:
            patients = record.user_id == self.cuff_user
        else:
            if self.cuff_owner is None:
                self.cuff_owner = CuffOwner.from_history(store_bp.cuff_users(self.store, info.meter_id))
            patients = self.cuff_owner.is_patients(record.user_id)
        if not patients:
            # Another person's measurement on a shared cuff: kept (a cuff hands each over once), never this patient's.
            self.other_users += 1
            patient_id = None
        if record.meter_time is None:  # no time stamp: the download's own time, which says nothing of when
            corrected, trusted = self.clock.utc_now(), False
        else:
            corrected, trusted = correction.correct(record.meter_time, self.tz), correction.trusted
        return BloodPressureReading(
            meter_id=info.meter_id,
            sequence=record.sequence,
            user_id=record.user_id,
            meter_time=record.meter_time,
            clock_offset_s=correction.offset_s,
            corrected_time=corrected,
            time_trusted=trusted,
            systolic=record.systolic,
            diastolic=record.diastolic,
            mean_arterial=record.mean_arterial,
            unit=record.unit,
            pulse_bpm=record.pulse_bpm,
            status=record.status,
            patient_id=patient_id,
            session_id=self.session_id,
            flags=tuple(dict.fromkeys((*record.flags, *correction.flags))),
        )

    def _to_glucose(
        self, record: MeterRecord, info: MeterInfo, correction: ClockCorrection, patient_id: str | None
    ) -> GlucoseReading | ControlResult:
        """A meter record as the store keeps it: the patient's reading, or (a control-solution test) the meter's
        quality-control result, which is never linked to the patient."""
        value = MeterValue(
            meter_id=info.meter_id,
            sequence=record.sequence,
            meter_time=record.meter_time,
            clock_offset_s=correction.offset_s,
            corrected_time=correction.correct(record.meter_time, self.tz),
            time_trusted=correction.trusted,
            value=record.value,
            unit=record.unit,
            session_id=self.session_id,
            flags=tuple(dict.fromkeys((*record.flags, *correction.flags))),
        )
        if record.is_control:
            return ControlResult(**value.shared_fields(), lot=record.control_lot, outcome=record.control_outcome)
        return GlucoseReading(
            **value.shared_fields(),
            patient_id=patient_id,
            sample_type=record.sample_type,
            sample_location=record.sample_location,
            meal=record.meal,
            tester=record.tester,
            health=record.health,
        )

    async def run(self) -> SessionResult:
        """Download everything new. Never raises for device or protocol trouble: the result says what happened."""
        info: MeterInfo | None = None
        correction: ClockCorrection | None = None
        writer = self.writer
        received = 0
        batch: list[StoredReading] = []
        resume_at: str | None = None
        """Identity of the newest record, once a newest-first meter's records were all read."""

        def flush() -> None:
            if batch:
                writer.add_batch(batch)
                batch.clear()

        try:
            info = await self.driver.read_info()
            patient_id = self._resolve_patient(info.meter_id)
            writer.meter(info, patient_id)
            correction = measure_clock(
                await self.driver.read_clock(),
                self.clock.utc_now(),
                tz=self.tz,
                gateway_synchronised=self.clock.is_synchronised(),
                max_skew=self.max_clock_skew,
            )
            since = self._since(info)
            total = writer.total = await self.driver.count_records(since)
            _logger.info(
                "download %s: meter %s since sequence %s, %s records announced, clock offset %.0f s (trusted %s)",
                self.session_id,
                info.meter_id,
                since,
                total,
                correction.offset_s,
                correction.trusted,
            )
            self._progress(info.meter_id, 0, total, DeskState.RUNNING)
            # A newest-first meter without record numbers: stop at the newest record of the last complete
            # download; everything older came then. Only a complete download moves the mark (below).
            stop_at = store_readings.resume_identity(self.store, info.meter_id) if self.driver.newest_first else None
            newest: str | None = None
            records = self.driver.records(since)
            try:
                async for record in records:
                    if since is not None and record.sequence is not None and record.sequence <= since:
                        continue
                    stored = self._to_stored(record, info, correction, patient_id)
                    identity = (
                        None if isinstance(stored, BloodPressureReading) else store_readings.reading_identity(stored)
                    )
                    if identity is not None and identity == stop_at:
                        _logger.info("download %s: reached the previous download's newest record", self.session_id)
                        break
                    newest = newest or identity
                    received += 1
                    batch.append(stored)
                    if len(batch) >= self.batch_size:
                        flush()
                    self._progress(info.meter_id, received, total, DeskState.RUNNING)
            finally:
                if isinstance(records, AsyncGenerator):
                    await records.aclose()  # also when we stopped early: the driver is between requests
            flush()
            if self.driver.newest_first:
                resume_at = newest
            if self.set_meter_clock and self.clock.is_synchronised() and not correction.trusted:
                await self.driver.set_clock(self.clock.utc_now().astimezone(self.tz).replace(tzinfo=None))
            state, error = DeskState.DONE, None
        except (DeviceError, ProtocolError) as exc:
            flush()
            state = DeskState.INTERRUPTED if isinstance(exc, DeviceDisconnected) or received else DeskState.FAILED
            error = ErrorInfo.of(exc)
            _logger.warning("download %s %s after %d records: %s", self.session_id, state, received, error)
        except GatewayError as exc:  # store refused (disk) or similar: keep what was flushed
            state, error = DeskState.FAILED, ErrorInfo.of(exc)
            _logger.error("download %s failed after %d records: %s", self.session_id, received, error)
        finally:
            try:
                await self.driver.close()
            except GatewayError as exc:
                _logger.debug("closing meter link: %s", exc)
        writer.finish(state, error, resume_identity=resume_at)
        final_total = received if state is DeskState.DONE else None
        self._progress(None if info is None else info.meter_id, received, final_total, state)
        return SessionResult(
            session_id=self.session_id,
            meter=info,
            received=received,
            added=writer.added,
            duplicates=writer.duplicates,
            state=state,
            error=error,
            clock=correction,
            qc_added=writer.qc_added,
            other_users=self.other_users,
            shared_cuff=self.cuff_owner is not None and self.cuff_owner.shared,
        )
