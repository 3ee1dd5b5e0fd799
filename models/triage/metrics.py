"""Binary-classification metrics for the triage model (numpy only, no torch).

AUC is the Mann-Whitney statistic (ties count one half). Confidence intervals come from a
percentile bootstrap that resamples *patients* (both eyes together), because the two eyes of one
patient are not independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc_ci(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    groups: Sequence[str],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling whole groups (patients) with replacement."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    names = sorted(set(groups))
    members = [np.flatnonzero(np.asarray(groups) == g) for g in names]
    rng = np.random.default_rng(seed)
    aucs: list[float] = []
    for _ in range(n_boot):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        auc = roc_auc(y[pick], s[pick])
        if not np.isnan(auc):
            aucs.append(auc)
    lo, hi = np.quantile(aucs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


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
    """The highest threshold whose sensitivity is at least ``target`` (best specificity given it)."""
    best: OperatingPoint | None = None
    for t in _candidates(scores):
        point = operating_point(labels, scores, float(t))
        if point.sensitivity >= target:
            best = point
    if best is None:
        raise ValueError("no threshold reaches the target sensitivity")
    return best


def threshold_for_specificity(labels: npt.ArrayLike, scores: npt.ArrayLike, target: float) -> OperatingPoint:
    """The lowest threshold whose specificity is at least ``target`` (best sensitivity given it)."""
    for t in _candidates(scores):
        point = operating_point(labels, scores, float(t))
        if point.specificity >= target:
            return point
    raise ValueError("no threshold reaches the target specificity")


def sensitivity_by_grade(grades: npt.ArrayLike, scores: npt.ArrayLike, threshold: float) -> dict[str, float]:
    """Fraction of images of each ICDR grade at or above ``threshold`` ("referred"), keyed by grade."""
    g = np.asarray(grades)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    return {str(int(k)): float(pred[g == k].mean()) for k in np.unique(g)}
