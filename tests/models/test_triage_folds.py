"""The out-of-fold protocol's split: whole patients per fold, stratified by "any eye referable", reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from support.retina import REPO_ROOT, require_fundus

from models.triage import evaluate
from models.triage.data import Sample, read_labels
from models.triage.folds import DEFAULT_K, fold_of, patient_folds

OOF = REPO_ROOT / "models" / "triage" / "oof_predictions.csv"


def synthetic(n_patients: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for p in range(n_patients):
        for eye in "LR":
            grade = int(rng.choice(5, p=[0.45, 0.15, 0.25, 0.1, 0.05]))
            samples.append(Sample(f"p{p:03d}_{eye}.jpg", "train", f"pat-{p}", grade, int(grade >= 2)))
    rng.shuffle(samples)  # labels files are not sorted by patient
    return samples


def check_split(samples: list[Sample], k: int) -> None:
    folds = patient_folds(samples, k)
    assert len(folds) == k
    flat = np.concatenate(folds)
    assert sorted(flat.tolist()) == list(range(len(samples))), "every photo in exactly one fold"
    owner: dict[str, int] = {}
    for f, idx in enumerate(folds):
        for i in idx:
            assert owner.setdefault(samples[i].patient_id, f) == f, f"{samples[i].patient_id} is in two folds"
    # stratification: referable patients (either eye) and the rest spread evenly, within one patient
    for positive in (True, False):
        counts = [
            len({samples[i].patient_id for i in idx if any(
                s.referable for s in samples if s.patient_id == samples[i].patient_id) == positive})
            for idx in folds
        ]  # fmt: skip
        assert max(counts) - min(counts) <= 1, counts
    assert np.array_equal(fold_of(samples, k), fold_of(samples, k))  # seeded: the same split every time


@pytest.mark.parametrize(("n_patients", "k", "seed"), [(40, 5, 0), (239, 5, 1), (17, 4, 2)])
def test_folds_are_patient_disjoint_and_stratified(n_patients: int, k: int, seed: int) -> None:
    check_split(synthetic(n_patients, seed), k)


def test_real_split_covers_all_478_photos() -> None:
    samples = read_labels(require_fundus())
    assert len(samples) == 478 and {s.split for s in samples} == {"train", "valid"}  # train+valid together
    check_split(samples, DEFAULT_K)


def test_shipped_oof_predictions_follow_the_split() -> None:
    if not OOF.is_file():
        pytest.skip("models/triage/oof_predictions.csv not there yet (scripts/train-model)")
    rows = evaluate.read_oof(OOF)
    samples = read_labels(require_fundus())
    assert [r.file for r in rows] == [s.file for s in samples]
    assert [r.fold for r in rows] == fold_of(samples).tolist()


def test_bad_k_is_refused() -> None:
    with pytest.raises(ValueError):
        patient_folds(synthetic(3, 0), 4)
