"""models.triage.metrics: AUC, patient bootstrap, operating points (numpy only)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models.triage import metrics


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * labels, 1)  # rounding makes ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(brute_auc(labels, scores))


def test_auc_is_nan_with_one_class() -> None:
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.4]))


def test_bootstrap_ci_brackets_the_auc_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100)
    scores = rng.random(100) + 0.8 * labels
    groups = [f"p{i // 2}" for i in range(100)]
    lo, hi = metrics.bootstrap_auc_ci(labels, scores, groups, n_boot=300)
    assert lo < metrics.roc_auc(labels, scores) < hi
    assert (lo, hi) == metrics.bootstrap_auc_ci(labels, scores, groups, n_boot=300)


def test_operating_points() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.75, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.95, 0.99])
    refer = metrics.threshold_for_sensitivity(labels, scores, 0.9)
    assert refer.sensitivity >= 0.9
    assert metrics.operating_point(labels, scores, refer.threshold) == refer
    # the next candidate up loses sensitivity below the target
    assert refer.threshold == pytest.approx(0.45) and refer.specificity == 0.75
    high = metrics.threshold_for_specificity(labels, scores, 0.95)
    assert high.specificity == 1.0 and high.threshold == pytest.approx(0.775)
    by_grade = metrics.sensitivity_by_grade([0, 0, 2, 2], [0.1, 0.9, 0.9, 0.9], 0.5)
    assert by_grade == {"0": 0.5, "2": 1.0}


def test_per_patient_refers_when_either_eye_is() -> None:
    labels = [0, 1, 0, 0, 1, 1]
    scores = [0.1, 0.3, 0.9, 0.2, 0.4, 0.6]
    patients = ["b", "b", "a", "a", "c", "c"]
    y, s, names = metrics.per_patient(labels, scores, patients)
    assert names == ["a", "b", "c"] and y.tolist() == [False, True, True] and s.tolist() == [0.9, 0.3, 0.6]
    c = metrics.confusion(y, s, names, 0.5, n_boot=50)
    assert (c.tp, c.fn, c.fp, c.tn) == (1, 1, 1, 0) and c.sensitivity == 0.5 and c.specificity == 0.0


def test_nested_threshold_is_chosen_without_the_fold_it_is_applied_to() -> None:
    # fold 1's positives score low: a threshold chosen on fold 0 alone misses them, one chosen on all would not
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.85, 0.95, 0.1, 0.2, 0.3, 0.15, 0.4, 0.45, 0.05, 0.1])
    folds = np.array([0] * 8 + [1] * 4)
    pooled = metrics.threshold_for_sensitivity(labels, scores, 0.92)
    nested = metrics.nested_operating_point(labels, scores, folds, 0.92)
    assert pooled.sensitivity == 1.0 and nested.sensitivity == pytest.approx(4 / 6)


def test_summary_counts_and_intervals() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    scores = rng.random(80) * 0.6 + 0.4 * labels
    patients = [f"p{i // 2}" for i in range(80)]
    grades = np.where(labels == 1, 2 + rng.integers(0, 3, 80), rng.integers(0, 2, 80))
    thresholds = metrics.choose_thresholds(labels, scores)
    summary = metrics.summarise(labels, scores, patients, thresholds, grades, n_boot=200)
    eye = summary.per_eye["refer"]
    assert eye.sensitivity >= metrics.REFER_SENSITIVITY and eye.tp + eye.fn == labels.sum()
    assert eye.sensitivity_ci95[0] <= eye.sensitivity <= eye.sensitivity_ci95[1]
    assert summary.n_patients == 40 and sum(summary.images_by_grade.values()) == 80
    doc = summary.as_dict()
    assert doc["per_patient"]["refer"]["tp"] + doc["per_patient"]["refer"]["fn"] == summary.n_referable_patients
    points = metrics.roc_curve(labels, scores)
    assert points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)
