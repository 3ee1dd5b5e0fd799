"""Binary-classification metrics for the triage model: the gateway's own (:mod:`gateway.retina.metrics`).

The model's developers and a hospital's ``gateway model validate`` share one implementation, so the
two report the same numbers for the same predictions. AUC is the Mann-Whitney statistic; confidence
intervals resample *patients* (both eyes together).
"""

from __future__ import annotations

from gateway.retina.metrics import (
    HIGH_SPECIFICITY,
    REFER_SENSITIVITY,
    Confusion,
    OperatingPoint,
    Summary,
    bootstrap_auc_ci,
    bootstrap_ci,
    choose_thresholds,
    confusion,
    nested_decisions,
    nested_operating_point,
    operating_point,
    per_patient,
    referred_by_grade,
    roc_auc,
    roc_curve,
    sensitivity_by_grade,
    summarise,
    threshold_for_sensitivity,
    threshold_for_specificity,
)

__all__ = [
    "HIGH_SPECIFICITY",
    "REFER_SENSITIVITY",
    "Confusion",
    "OperatingPoint",
    "Summary",
    "bootstrap_auc_ci",
    "bootstrap_ci",
    "choose_thresholds",
    "confusion",
    "nested_decisions",
    "nested_operating_point",
    "operating_point",
    "per_patient",
    "referred_by_grade",
    "roc_auc",
    "roc_curve",
    "sensitivity_by_grade",
    "summarise",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
]
