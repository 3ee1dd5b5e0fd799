"""Binary triage metrics, per eye and per patient (PURE: numpy only).

One implementation serves the model's developers (``models/triage/evaluate.py``, which re-exports these
functions through ``models/triage/metrics.py``) and a hospital's local validation (``gateway model
validate``, :mod:`gateway.retina.validation`), so both report the same numbers for the same predictions.

Conventions:

- "refer" means ``score >= threshold``; a label is 1 when the eye is referable (ICDR grade >= 2);
- **per patient** a patient is referable when either eye is, and is referred when either eye is, i.e. the
  patient's score is the maximum of the eye scores (the decision the screening programme acts on);
- AUC is the Mann-Whitney statistic (ties count one half);
- confidence intervals are percentile bootstraps that resample *patients* (both eyes together), because
  the two eyes of one person are not independent. Seeded: the same inputs give the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

REFER_SENSITIVITY = 0.92
"""The "refer" threshold is the highest with sensitivity >= this (a margin over the 0.90 target)."""
HIGH_SPECIFICITY = 0.95
"""The "high_specificity" threshold is the lowest with specificity >= this."""
N_BOOT = 2000
LEVEL = 0.95
Interval = tuple[float, float]


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    _, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # average ranks over ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: npt.ArrayLike, scores: npt.ArrayLike) -> list[tuple[float, float]]:
    """ROC points ``(1 - specificity, sensitivity)`` from (0, 0) to (1, 1), one per distinct score."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    points = [(0.0, 0.0)]
    for t in np.unique(s)[::-1]:
        pred = s >= t
        points.append((float((pred & ~y).sum() / n_neg), float((pred & y).sum() / n_pos)))
    if points[-1] != (1.0, 1.0):
        points.append((1.0, 1.0))
    return points


def _groups(groups: Sequence[str]) -> list[npt.NDArray[np.intp]]:
    names = np.asarray(groups)
    return [np.flatnonzero(names == g) for g in sorted(set(groups))]


def bootstrap_ci(
    stat: Callable[[npt.NDArray[np.intp]], float],
    groups: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Percentile bootstrap CI of ``stat(indices)``, resampling whole groups (patients) with replacement.

    Resamples where the statistic is undefined (NaN, e.g. no referable eye drawn) are skipped.
    """
    members = _groups(groups)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(n_boot):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        value = stat(pick)
        if not np.isnan(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_auc_ci(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    groups: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Percentile bootstrap CI of the AUC, resampling whole groups (patients) with replacement."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    return bootstrap_ci(lambda pick: roc_auc(y[pick], s[pick]), groups, n_boot=n_boot, seed=seed, level=level)


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """Sensitivity and specificity when ``score >= threshold`` means "refer"."""

    threshold: float
    sensitivity: float
    specificity: float


def operating_point(labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> OperatingPoint:
    """Sensitivity and specificity at ``threshold``."""
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    return OperatingPoint(
        threshold=float(threshold),
        sensitivity=float(pred[y].mean()) if y.any() else float("nan"),
        specificity=float((~pred[~y]).mean()) if (~y).any() else float("nan"),
    )


def _candidates(scores: npt.ArrayLike) -> FloatArray:
    """Candidate thresholds: midpoints between consecutive distinct scores, plus the extremes."""
    s = np.unique(np.asarray(scores, dtype=np.float64))
    mids = (s[1:] + s[:-1]) / 2.0
    return np.concatenate([[s[0]], mids, [np.nextafter(s[-1], np.inf)]])


def threshold_for_sensitivity(labels: npt.ArrayLike, scores: npt.ArrayLike, target: float) -> OperatingPoint:
    """The highest threshold whose sensitivity is at least ``target`` (best specificity given it).

    Raises:
        ValueError: no threshold reaches the target (e.g. no referable eye).
    """
    best: OperatingPoint | None = None
    for t in _candidates(scores):
        point = operating_point(labels, scores, float(t))
        if point.sensitivity >= target:
            best = point
    if best is None:
        raise ValueError("no threshold reaches the target sensitivity")
    return best


def threshold_for_specificity(labels: npt.ArrayLike, scores: npt.ArrayLike, target: float) -> OperatingPoint:
    """The lowest threshold whose specificity is at least ``target`` (best sensitivity given it).

    Raises:
        ValueError: no threshold reaches the target (e.g. no non-referable eye).
    """
    for t in _candidates(scores):
        point = operating_point(labels, scores, float(t))
        if point.specificity >= target:
            return point
    raise ValueError("no threshold reaches the target specificity")


def choose_thresholds(labels: npt.ArrayLike, scores: npt.ArrayLike) -> dict[str, float]:
    """The two operating thresholds by the project's rules (:data:`REFER_SENSITIVITY`, :data:`HIGH_SPECIFICITY`)."""
    return {
        "refer": threshold_for_sensitivity(labels, scores, REFER_SENSITIVITY).threshold,
        "high_specificity": threshold_for_specificity(labels, scores, HIGH_SPECIFICITY).threshold,
    }


def sensitivity_by_grade(grades: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """Fraction of images of each ICDR grade at or above ``threshold`` ("referred"), keyed by grade."""
    g = np.asarray(grades)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    return {str(int(k)): float(pred[g == k].mean()) for k in np.unique(g)}


referred_by_grade = sensitivity_by_grade


def per_patient(
    labels: npt.ArrayLike, scores: npt.ArrayLike, patients: Sequence[str]
) -> tuple[BoolArray, FloatArray, list[str]]:
    """One row per patient: referable when either eye is, scored by the higher eye score (sorted by id)."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    names = sorted(set(patients))
    members = _groups(patients)
    return (
        np.array([bool(y[m].any()) for m in members]),
        np.array([float(s[m].max()) for m in members]),
        names,
    )


def nested_decisions(
    labels: npt.ArrayLike, scores: npt.ArrayLike, folds: npt.ArrayLike, target: float = REFER_SENSITIVITY
) -> tuple[BoolArray, list[float]]:
    """Threshold chosen in-fold, applied out-of-fold: each fold's "refer" decisions use a threshold chosen by
    :func:`threshold_for_sensitivity` on the *other* folds' out-of-fold scores. Returns the decisions and the
    per-fold thresholds."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    f = np.asarray(folds)
    pred = np.zeros(len(s), dtype=bool)
    chosen: list[float] = []
    for fold in np.unique(f):
        inside = f != fold
        t = threshold_for_sensitivity(y[inside], s[inside], target).threshold
        chosen.append(t)
        pred[~inside] = s[~inside] >= t
    return pred, chosen


def nested_operating_point(
    labels: npt.ArrayLike, scores: npt.ArrayLike, folds: npt.ArrayLike, target: float = REFER_SENSITIVITY
) -> OperatingPoint:
    """Pooled sensitivity and specificity of :func:`nested_decisions`: an honest estimate for new patients,
    because no decision uses a threshold chosen on its own fold. ``threshold`` is the mean per-fold threshold."""
    y = np.asarray(labels, dtype=bool)
    pred, chosen = nested_decisions(labels, scores, folds, target)
    return OperatingPoint(
        threshold=float(np.mean(chosen)),
        sensitivity=float(pred[y].mean()),
        specificity=float((~pred[~y]).mean()),
    )


@dataclass(frozen=True, slots=True)
class Confusion:
    """Counts at one threshold, with patient-bootstrap CIs of sensitivity and specificity."""

    threshold: float
    tp: int
    fn: int
    fp: int
    tn: int
    sensitivity_ci95: Interval
    specificity_ci95: Interval

    @property
    def sensitivity(self) -> float:
        """tp / (tp + fn); NaN without positives."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        """tn / (tn + fp); NaN without negatives."""
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    def as_dict(self) -> dict[str, object]:
        """JSON-ready (4 decimals; threshold 6)."""
        return {
            "threshold": round(self.threshold, 6),
            "sensitivity": _r(self.sensitivity),
            "sensitivity_ci95": [_r(v) for v in self.sensitivity_ci95],
            "specificity": _r(self.specificity),
            "specificity_ci95": [_r(v) for v in self.specificity_ci95],
            "tp": self.tp,
            "fn": self.fn,
            "fp": self.fp,
            "tn": self.tn,
        }


def confusion(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    groups: Sequence[str],
    threshold: float,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Confusion:
    """Counts at ``threshold`` and bootstrap CIs (over ``groups``) of sensitivity and specificity."""
    y = np.asarray(labels, dtype=bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold

    def sens(pick: npt.NDArray[np.intp]) -> float:
        yy = y[pick]
        return float(pred[pick][yy].mean()) if yy.any() else float("nan")

    def spec(pick: npt.NDArray[np.intp]) -> float:
        yy = y[pick]
        return float((~pred[pick][~yy]).mean()) if (~yy).any() else float("nan")

    return Confusion(
        threshold=float(threshold),
        tp=int((pred & y).sum()),
        fn=int((~pred & y).sum()),
        fp=int((pred & ~y).sum()),
        tn=int((~pred & ~y).sum()),
        sensitivity_ci95=bootstrap_ci(sens, groups, n_boot=n_boot, seed=seed),
        specificity_ci95=bootstrap_ci(spec, groups, n_boot=n_boot, seed=seed),
    )


def _r(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything reported for one set of scored images at given thresholds (per eye and per patient)."""

    n_images: int
    n_patients: int
    n_referable_images: int
    n_referable_patients: int
    auc: float
    auc_ci95: Interval
    patient_auc: float
    patient_auc_ci95: Interval
    per_eye: dict[str, Confusion] = field(default_factory=dict)
    per_patient: dict[str, Confusion] = field(default_factory=dict)
    referred_by_grade: dict[str, dict[str, float]] = field(default_factory=dict)
    images_by_grade: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready metrics (4 decimals)."""
        return {
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "n_referable_images": self.n_referable_images,
            "n_referable_patients": self.n_referable_patients,
            "auc": _r(self.auc),
            "auc_ci95_patient_bootstrap": [_r(v) for v in self.auc_ci95],
            "patient_auc": _r(self.patient_auc),
            "patient_auc_ci95": [_r(v) for v in self.patient_auc_ci95],
            "per_eye": {k: v.as_dict() for k, v in self.per_eye.items()},
            "per_patient": {k: v.as_dict() for k, v in self.per_patient.items()},
            "images_by_grade": dict(self.images_by_grade),
            "referred_fraction_by_grade": {
                k: {g: round(v, 4) for g, v in by.items()} for k, by in self.referred_by_grade.items()
            },
        }


def summarise(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    patients: Sequence[str],
    thresholds: Mapping[str, float],
    grades: npt.ArrayLike | None = None,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Summary:
    """AUCs with CIs, per-eye and per-patient confusion at each threshold, per-grade referral rates."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    py, ps, names = per_patient(y, s, patients)
    by_grade: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    if grades is not None:
        g = np.asarray(grades)
        by_grade = {k: sensitivity_by_grade(g, s, t) for k, t in thresholds.items()}
        counts = {str(int(k)): int((g == k).sum()) for k in np.unique(g)}
    return Summary(
        n_images=len(s),
        n_patients=len(names),
        n_referable_images=int(y.sum()),
        n_referable_patients=int(py.sum()),
        auc=roc_auc(y, s),
        auc_ci95=bootstrap_auc_ci(y, s, patients, n_boot=n_boot, seed=seed),
        patient_auc=roc_auc(py, ps),
        patient_auc_ci95=bootstrap_auc_ci(py, ps, names, n_boot=n_boot, seed=seed),
        per_eye={k: confusion(y, s, patients, t, n_boot=n_boot, seed=seed) for k, t in thresholds.items()},
        per_patient={k: confusion(py, ps, names, t, n_boot=n_boot, seed=seed) for k, t in thresholds.items()},
        referred_by_grade=by_grade,
        images_by_grade=counts,
    )
