"""Domain values shared by every layer: pure, frozen, no I/O, no JSON, no SQL."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

MGDL_PER_MMOLL = 18.016
"""mg/dL per mmol/L for glucose (molar mass 180.16 g/mol), as DESIGN §2 fixes it."""


class Unit(StrEnum):
    """Glucose concentration units, spelled as UCUM writes them."""

    MG_DL = "mg/dL"
    MMOL_L = "mmol/L"


def to_mmol_l(value: float, unit: Unit) -> float:
    """Convert a glucose concentration to mmol/L, rounded to 0.01."""
    mmol = value if unit is Unit.MMOL_L else value / MGDL_PER_MMOLL
    return round(mmol, 2)


class Meal(StrEnum):
    """Meal marker of a reading (GLS context and most serial meters carry one)."""

    BEFORE_MEAL = "before_meal"
    AFTER_MEAL = "after_meal"
    FASTING = "fasting"
    CASUAL = "casual"
    BEDTIME = "bedtime"


class SampleType(StrEnum):
    """What was measured, as the Bluetooth Glucose Service names it (Glucose Measurement, Type nibble).

    A serial meter records no sample type; its driver names what the meter is labelled for. ``None`` on a
    record means unknown (``docs/contract.md`` says how each is coded).
    """

    CAPILLARY_WHOLE_BLOOD = "capillary_whole_blood"
    CAPILLARY_PLASMA = "capillary_plasma"
    VENOUS_WHOLE_BLOOD = "venous_whole_blood"
    VENOUS_PLASMA = "venous_plasma"
    ARTERIAL_WHOLE_BLOOD = "arterial_whole_blood"
    ARTERIAL_PLASMA = "arterial_plasma"
    UNDETERMINED_WHOLE_BLOOD = "undetermined_whole_blood"
    UNDETERMINED_PLASMA = "undetermined_plasma"
    INTERSTITIAL_FLUID = "interstitial_fluid"
    CONTROL_SOLUTION = "control_solution"


class Tester(StrEnum):
    """Who took the sample (Glucose Measurement Context, Tester nibble)."""

    SELF = "self"
    HEALTH_CARE_PROFESSIONAL = "health_care_professional"
    LAB_TEST = "lab_test"


class Health(StrEnum):
    """The patient's state of health when the sample was taken (Glucose Measurement Context, Health nibble)."""

    MINOR_HEALTH_ISSUES = "minor_health_issues"
    MAJOR_HEALTH_ISSUES = "major_health_issues"
    DURING_MENSES = "during_menses"
    UNDER_STRESS = "under_stress"
    NO_HEALTH_ISSUES = "no_health_issues"


class QcOutcome(StrEnum):
    """A control-solution test's verdict, where the meter gives one."""

    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "fail"


class Eye(StrEnum):
    """Laterality of a retinal photo."""

    LEFT = "L"
    RIGHT = "R"


class Field(StrEnum):
    """Photographic field of a retinal photo."""

    DISC = "disc"
    MACULA = "macula"


class TriageDecision(StrEnum):
    """Advisory per-eye decision. ``ungradable`` counts as refer, as screening programmes do."""

    REFER = "refer"
    RESCREEN = "rescreen"
    UNGRADABLE = "ungradable"


def eye_decision(decisions: Iterable[TriageDecision | str]) -> TriageDecision:
    """One eye's advisory decision from its images' decisions: refer when any gradable image says refer,
    rescreen when gradable images exist and none does, ungradable when none could be graded (or none)."""
    gradable = [TriageDecision(d) for d in decisions if TriageDecision(d) is not TriageDecision.UNGRADABLE]
    if not gradable:
        return TriageDecision.UNGRADABLE
    return TriageDecision.REFER if TriageDecision.REFER in gradable else TriageDecision.RESCREEN


class Measures(StrEnum):
    """What a device measures: the kind of record its download stores."""

    GLUCOSE = "glucose"
    BLOOD_PRESSURE = "blood_pressure"


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterInfo:
    """What a meter (or a blood pressure cuff) says about itself. ``meter_id`` is stable across visits
    (family + serial)."""

    meter_id: str
    family: str
    transport: str
    serial: str
    model: str | None = None
    firmware: str | None = None
    address: str | None = None
    measures: Measures = Measures.GLUCOSE


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterRecord:
    """One stored record as a meter driver decodes it, before clock correction and patient link.

    ``meter_time`` is the meter's own wall-clock time (naive), whatever its clock says.
    """

    sequence: int | None
    meter_time: datetime
    value: float
    unit: Unit
    sample_type: str | None = None
    sample_location: str | None = None
    meal: Meal | None = None
    tester: Tester | None = None
    health: Health | None = None
    control_solution: bool = False
    """A quality-control test with control solution, not the patient's blood: the session stores it as a
    :class:`ControlResult`, never as a :class:`GlucoseReading`."""
    control_lot: str | None = None
    control_outcome: QcOutcome | None = None
    flags: tuple[str, ...] = ()

    @property
    def is_control(self) -> bool:
        """A control-solution test, whichever way the meter says so (a flag, or the sample type)."""
        return self.control_solution or self.sample_type == SampleType.CONTROL_SOLUTION


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterValue:
    """A glucose value from a meter's memory, clock-corrected, as the store keeps it: what a patient's
    :class:`GlucoseReading` and a meter's :class:`ControlResult` have in common."""

    meter_id: str
    sequence: int | None
    meter_time: datetime
    clock_offset_s: float
    """Gateway clock minus meter clock, measured at download (seconds)."""
    corrected_time: datetime
    """``meter_time + clock_offset_s`` as an aware UTC datetime."""
    time_trusted: bool
    value: float
    unit: Unit
    session_id: str | None = None
    flags: tuple[str, ...] = ()

    @property
    def mmol_l(self) -> float:
        """The value in canonical mmol/L."""
        return to_mmol_l(self.value, self.unit)

    def shared_fields(self) -> dict[str, Any]:
        """This value's :class:`MeterValue` fields by name, to build a reading or a QC result from them."""
        return {f.name: getattr(self, f.name) for f in fields(MeterValue)}


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucoseReading(MeterValue):
    """A reading ready for the store: the meter's record plus clock correction and patient link."""

    patient_id: str | None = None
    sample_type: str | None = None
    """A :class:`SampleType` value, ``reserved_<n>`` for a code the GLS specification reserves, or None."""
    sample_location: str | None = None
    meal: Meal | None = None
    tester: Tester | None = None
    health: Health | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlResult(MeterValue):
    """A meter's quality-control test with control solution: never a patient's glucose, never linked to one.

    Kept apart from readings (own table, own message ``cg.qc/1``), shown to the nurse as the meter's QC
    history. ``lot`` and ``outcome`` only where the meter records them.
    """

    lot: str | None = None
    outcome: QcOutcome | None = None


MMHG_PER_KPA = 7.50062
"""mmHg per kPa (1 mmHg = 133.322 Pa), as the issue fixes it for blood pressure."""


class PressureUnit(StrEnum):
    """Blood pressure units as a cuff reports them (Blood Pressure Measurement flags bit 0)."""

    MMHG = "mmHg"
    KPA = "kPa"


def to_mmhg(value: float, unit: PressureUnit) -> float:
    """A pressure in mmHg, rounded to 0.1 (cuffs report whole mmHg, or kPa to 0.1)."""
    return round(value * MMHG_PER_KPA if unit is PressureUnit.KPA else value, 1)


class CuffStatus(StrEnum):
    """What a cuff says about one measurement (Measurement Status of the Blood Pressure Measurement)."""

    BODY_MOVEMENT = "body_movement"
    CUFF_TOO_LOOSE = "cuff_too_loose"
    IRREGULAR_PULSE = "irregular_pulse"
    PULSE_ABOVE_RANGE = "pulse_rate_above_range"
    PULSE_BELOW_RANGE = "pulse_rate_below_range"
    IMPROPER_POSITION = "improper_measurement_position"


@dataclass(frozen=True, slots=True, kw_only=True)
class CuffRecord:
    """One measurement as a blood pressure cuff driver decodes it, before clock correction and patient link.

    ``meter_time`` is the cuff's own wall-clock time (naive), None when the cuff sent no time stamp;
    ``user_id`` is the cuff's user (multi-user cuffs), None when it does not say.
    """

    sequence: int | None
    meter_time: datetime | None
    user_id: int | None
    systolic: float
    diastolic: float
    mean_arterial: float | None
    unit: PressureUnit
    pulse_bpm: float | None = None
    status: tuple[CuffStatus, ...] = ()
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BloodPressureReading:
    """A blood pressure reading ready for the store: the cuff's record plus clock correction and patient link.

    Values are kept as the cuff reported them (``unit``); the ``*_mmhg`` properties give them in mmHg.
    """

    meter_id: str
    sequence: int | None
    user_id: int | None
    meter_time: datetime | None
    clock_offset_s: float
    corrected_time: datetime
    """The cuff's time corrected by the measured offset, aware UTC (the gateway's own time when the cuff sent
    none: then ``time_trusted`` is false)."""
    time_trusted: bool
    systolic: float
    diastolic: float
    mean_arterial: float | None
    unit: PressureUnit
    pulse_bpm: float | None = None
    status: tuple[CuffStatus, ...] = ()
    patient_id: str | None = None
    session_id: str | None = None
    flags: tuple[str, ...] = ()

    @property
    def systolic_mmhg(self) -> float:
        """Systolic pressure in mmHg."""
        return to_mmhg(self.systolic, self.unit)

    @property
    def diastolic_mmhg(self) -> float:
        """Diastolic pressure in mmHg."""
        return to_mmhg(self.diastolic, self.unit)

    @property
    def mean_arterial_mmhg(self) -> float | None:
        """Mean arterial pressure in mmHg (None when the cuff gave none)."""
        return None if self.mean_arterial is None else to_mmhg(self.mean_arterial, self.unit)


@dataclass(frozen=True, slots=True)
class FieldCircle:
    """The camera's circular field as the quality gate found it, in the analysed image's pixels."""

    cx: float
    cy: float
    r: float


@dataclass(frozen=True, slots=True)
class ImageBox:
    """A rectangle of the analysed image (pixels): one tile of a region the gate marked."""

    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityGeometry:
    """Where the quality gate saw its reasons, for the technician's overlay (pixels of the analysed image,
    ``width`` x ``height``; the page scales them onto the photo, whatever size it shows it at).

    ``circle`` is the detected field; ``dark``, ``bright`` and ``blurred`` are tiles of the field that are too
    dark (or much darker than the rest), clipped, or without fine detail; each is filled only when a reason
    of its kind failed the photo. Never part of the message contract: a page aid, recomputable from the image.
    """

    width: int
    height: int
    circle: FieldCircle | None = None
    dark: tuple[ImageBox, ...] = ()
    bright: tuple[ImageBox, ...] = ()
    blurred: tuple[ImageBox, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityVerdict:
    """Image-quality gate result: ``ok`` or the reasons a technician can act on, and where in the image it saw
    them (``geometry``; None when not computed)."""

    ok: bool
    reasons: tuple[str, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    geometry: QualityGeometry | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TriageResult:
    """Advisory referable-DR triage of one image; not a diagnosis."""

    referable_probability: float | None
    decision: TriageDecision
    model_version: str
    thresholds: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """One retinal photo with its verdicts. The image itself lives on disk under its SHA-256."""

    capture_id: str
    sha256: str
    size_bytes: int
    media_type: str
    width: int
    height: int
    eye: Eye
    field: Field
    source: str
    captured_at: datetime
    quality: QualityVerdict
    triage: TriageResult | None = None
    patient_id: str | None = None
    session_id: str | None = None
    operator: str | None = None


class ReferralHold(StrEnum):
    """Why a stored referral decision is held for review instead of being shown as a patient's."""

    PATIENT_MISMATCH = "patient_mismatch"
    """It names a photo taken here of one patient, and the id of another patient."""
    UNKNOWN_PATIENT = "unknown_patient"
    """It names a patient this gateway never saw (no reading, photo, desk session or meter link), and no photo
    taken here: a decision sent to the wrong clinic, or a mistyped id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Referral:
    """A grader's decision sent down by the platform for a capture or a patient."""

    referral_id: str
    decision: str
    capture_id: str | None = None
    patient_id: str | None = None
    note: str | None = None
    grader: str | None = None
    decided_at: datetime | None = None


class OutboxMessage(NamedTuple):
    """One up message waiting in the outbox. ``topic`` is relative to the configured topic prefix.

    Either ``payload`` holds the bytes, or ``body_ref`` names where the store reads them at send time
    (image chunks: ``image:<sha256>:<offset>:<length>``), so big images are not copied into SQLite.

    A NamedTuple rather than a frozen dataclass: the claim builds one per message drained, and a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost about a third of the claim's CPU.
    Immutable all the same.
    """

    seq: int
    message_id: str
    kind: str
    topic: str
    payload: bytes | None
    body_ref: str | None
    properties: Mapping[str, str]
    attempts: int
    created_at: str
