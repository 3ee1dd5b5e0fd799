"""Patient-grouped, stratified k-fold split of the fundus developer set (numpy only, no torch).

Every photo of a patient lands in the same fold (the two eyes of one person are not independent), and
patients are stratified by "any eye referable" so that each fold holds about the same share of the
patients the programme would refer. The split depends only on the labels and the seed, so the
evaluation side (``evaluate.py``, the tests) can rebuild it without pixels or torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from models.triage.data import Sample

DEFAULT_K = 3
DEFAULT_SEED = 20261123


def patient_groups(samples: Sequence[Sample]) -> dict[str, list[int]]:
    """Indices of each patient's photos, keyed by patient id (in first-seen order)."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(s.patient_id, []).append(i)
    return groups


def patient_folds(
    samples: Sequence[Sample], k: int = DEFAULT_K, seed: int = DEFAULT_SEED
) -> list[npt.NDArray[np.intp]]:
    """Split ``samples`` into ``k`` folds of whole patients, stratified by "any eye referable".

    Patients of each stratum are shuffled with ``seed`` and dealt round-robin, the referable stratum
    first, so fold sizes differ by at most one patient per stratum.

    Raises:
        ValueError: ``k`` is below 2 or above the number of patients.
    """
    groups = patient_groups(samples)
    if not 2 <= k <= len(groups):
        raise ValueError(f"k must be 2..{len(groups)} (patients), got {k}")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    dealt = 0
    for positive in (True, False):
        stratum = sorted(p for p, members in groups.items() if any(samples[i].referable for i in members) == positive)
        for patient in rng.permutation(np.array(stratum, dtype=object)):
            folds[dealt % k].extend(groups[str(patient)])
            dealt += 1
    return [np.array(sorted(f), dtype=np.intp) for f in folds]


def fold_of(samples: Sequence[Sample], k: int = DEFAULT_K, seed: int = DEFAULT_SEED) -> npt.NDArray[np.intp]:
    """The fold number of every sample under :func:`patient_folds`."""
    out = np.full(len(samples), -1, dtype=np.intp)
    for f, idx in enumerate(patient_folds(samples, k, seed)):
        out[idx] = f
    return out
