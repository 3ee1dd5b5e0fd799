"""The published figures of the triage model, from its out-of-fold predictions (onnxruntime + numpy; no torch).

``oof_predictions.csv`` (shipped next to the model; ids, grades and probabilities, no pixels) holds, for
every one of the 478 developer photos, the referable probability given by the cross-validation fold
model that never saw that patient (``export.py`` writes it by running each fold's ONNX export through
``gateway.retina.preprocess.prepare_input``). From it this module derives, with the gateway's own metrics
(:mod:`gateway.retina.metrics`):

- the thresholds: "refer" = highest with OOF per-eye sensitivity >= 0.92, "high_specificity" = lowest with
  specificity >= 0.95;
- pooled OOF AUC per eye and per patient with patient-bootstrap CIs, sensitivity/specificity per eye and
  per patient at both thresholds with CIs, per-grade referral rates;
- the nested estimate (threshold chosen on the other folds, applied to each fold), which does not reuse
  the predictions it is reported on;
- the misses at "refer" (with ``--misses``, also their quality-gate verdict and metrics, from the photos).

``python -m models.triage.evaluate --check`` recomputes everything and fails if it differs from
``referable_dr.json`` (which the model card quotes), or if the ONNX file's SHA-256 is not the sidecar's.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gateway.retina import preprocess, quality
from models.triage import metrics
from models.triage.data import Sample, fundus_dir, read_bgr, read_labels
from models.triage.folds import DEFAULT_K, fold_of

HERE = Path(__file__).resolve().parent
DEFAULT_ONNX = HERE / "referable_dr.onnx"
DEFAULT_SIDECAR = HERE / "referable_dr.json"
DEFAULT_OOF = HERE / "oof_predictions.csv"
PARITY_TOLERANCE = 1e-4
# reference_outputs.json (the shipped file's own outputs at export): int8 kernels round slightly differently
# on other CPUs (AVX2, AVX-512 VNNI, NEON), so the check allows more than the fp32 torch/ONNX parity.
REFERENCE_TOLERANCE = 5e-3
"""Largest absolute difference in probability accepted between torch and onnxruntime."""
METRIC_TOLERANCE = 1e-3
"""Largest difference accepted when re-deriving the published metrics."""
BATCH = 16
OOF_FIELDS = ("file", "patient_id", "eye", "dr_grade", "referable", "fold", "probability")


def tensor_sha256(x: npt.NDArray[np.float32]) -> str:
    """SHA-256 of a float32 C-contiguous array's bytes (checks preprocessing bit for bit)."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_session(onnx_path: Path, threads: int = 0) -> ort.InferenceSession:
    """Create a CPU onnxruntime session (``threads=0`` lets onnxruntime choose)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def score_files(
    session: ort.InferenceSession, data_dir: Path, files: Sequence[str], size: int
) -> npt.NDArray[np.float64]:
    """Referable probabilities for photo files, preprocessed with :func:`preprocess.prepare_input`."""
    out: list[npt.NDArray[np.float64]] = []
    for start in range(0, len(files), BATCH):
        batch = np.concatenate(
            [preprocess.prepare_input(read_bgr(data_dir / f), size) for f in files[start : start + BATCH]]
        )
        (probs,) = session.run(["referable_probability"], {"image": batch})
        out.append(np.asarray(probs, dtype=np.float64)[:, 0])
    return np.concatenate(out)


@dataclass(frozen=True, slots=True)
class OofRow:
    """One photo's out-of-fold prediction."""

    file: str
    patient_id: str
    eye: str
    dr_grade: int
    referable: int
    fold: int
    probability: float


def write_oof(rows: Sequence[OofRow], path: Path) -> None:
    """Write OOF predictions as CSV (probabilities to 8 significant digits, enough for float32)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(OOF_FIELDS)
        for r in rows:
            writer.writerow([r.file, r.patient_id, r.eye, r.dr_grade, r.referable, r.fold, f"{r.probability:.8g}"])


def read_oof(path: Path = DEFAULT_OOF) -> list[OofRow]:
    """Read ``oof_predictions.csv``."""
    with path.open(newline="") as fh:
        return [
            OofRow(
                file=row["file"],
                patient_id=row["patient_id"],
                eye=row["eye"],
                dr_grade=int(row["dr_grade"]),
                referable=int(row["referable"]),
                fold=int(row["fold"]),
                probability=float(row["probability"]),
            )
            for row in csv.DictReader(fh)
        ]


def oof_rows(samples: Sequence[Sample], probs: npt.ArrayLike, k: int = DEFAULT_K) -> list[OofRow]:
    """OOF rows for ``samples`` (all developer photos, in labels order) scored ``probs``."""
    p = np.asarray(probs, dtype=np.float64)
    folds = fold_of(samples, k)
    return [
        OofRow(s.file, s.patient_id, s.file.rsplit("_", 1)[-1][0], s.dr_grade, s.referable, int(f), float(v))
        for s, f, v in zip(samples, folds, p, strict=True)
    ]


def summarise(
    labels: npt.ArrayLike, scores: npt.ArrayLike, patients: Sequence[str], grades: npt.ArrayLike,
    thresholds: Mapping[str, float],
) -> dict[str, object]:  # fmt: skip
    """:func:`metrics.summarise` as JSON (the structure ``gateway model validate`` reports too)."""
    return metrics.summarise(labels, scores, patients, thresholds, grades).as_dict()


def oof_report(rows: Sequence[OofRow]) -> dict[str, object]:
    """Thresholds, metrics and the nested estimate from OOF predictions (what the sidecar publishes)."""
    y = np.array([r.referable for r in rows])
    s = np.array([r.probability for r in rows])
    patients = [r.patient_id for r in rows]
    folds = np.array([r.fold for r in rows])
    thresholds = metrics.choose_thresholds(y, s)
    report = summarise(y, s, patients, [r.dr_grade for r in rows], thresholds)
    nested = metrics.nested_operating_point(y, s, folds)
    decided, _ = metrics.nested_decisions(y, s, folds)
    nested_ci = metrics.confusion(y, decided.astype(np.float64), patients, 0.5)
    report["protocol"] = (
        f"{len(set(folds.tolist()))}-fold cross-validation over all {len(rows)} developer photos, patient-grouped, "
        "stratified by any eye referable; out-of-fold predictions of the fold models"
    )
    report["thresholds"] = {k: round(v, 6) for k, v in thresholds.items()}
    report["nested_refer"] = {
        "method": "refer threshold chosen on the other folds' OOF predictions, applied to each held-out fold",
        "mean_threshold": round(nested.threshold, 6),
        "sensitivity": round(nested.sensitivity, 4),
        "sensitivity_ci95": [round(v, 4) for v in nested_ci.sensitivity_ci95],
        "specificity": round(nested.specificity, 4),
        "specificity_ci95": [round(v, 4) for v in nested_ci.specificity_ci95],
    }
    report["misses_at_refer"] = [
        {"file": r.file, "dr_grade": r.dr_grade, "probability": round(r.probability, 4)}
        for r in sorted(rows, key=lambda r: r.probability)
        if r.referable and r.probability < thresholds["refer"]
    ]
    return report


def validation_summary(report: Mapping[str, object]) -> dict[str, object]:
    """The short summary a model is installed with (``gateway model list`` and the status page show it)."""
    eye = report["per_eye"]
    patient = report["per_patient"]
    assert isinstance(eye, dict) and isinstance(patient, dict)
    return {
        "method": report["protocol"],
        "n_images": report["n_images"],
        "n_patients": report["n_patients"],
        "auc": report["auc"],
        "auc_ci95": report["auc_ci95_patient_bootstrap"],
        "refer": {
            "sensitivity": eye["refer"]["sensitivity"],
            "specificity": eye["refer"]["specificity"],
            "patient_sensitivity": patient["refer"]["sensitivity"],
            "patient_specificity": patient["refer"]["specificity"],
        },
        "high_specificity": {
            "sensitivity": eye["high_specificity"]["sensitivity"],
            "specificity": eye["high_specificity"]["specificity"],
        },
    }


QUALITY_KEYS = ("luma_mean", "clipped", "focus", "texture", "field_inside", "illum_slope")


def miss_details(rows: Sequence[OofRow], threshold: float, data_dir: Path) -> dict[str, object]:
    """Every referable photo under ``threshold`` (grade, probability, the gateway's quality verdict and metrics),
    and the median quality metrics of the referable photos that were caught, for comparison."""
    misses: list[dict[str, object]] = []
    caught: list[dict[str, float]] = []
    for r in sorted(rows, key=lambda r: r.probability):
        if not r.referable:
            continue
        verdict = quality.assess(read_bgr(data_dir / r.file))
        picked = {k: round(float(verdict.metrics[k]), 4) for k in QUALITY_KEYS if k in verdict.metrics}
        if r.probability >= threshold:
            caught.append(picked)
            continue
        misses.append({"file": r.file, "dr_grade": r.dr_grade, "probability": round(r.probability, 4),
                       "quality_ok": verdict.ok, "reasons": list(verdict.reasons), "metrics": picked})  # fmt: skip
    medians = {k: round(float(np.median([c[k] for c in caught if k in c])), 4) for k in QUALITY_KEYS}
    return {"misses": misses, "caught_referable_median": medians, "n_caught_referable": len(caught)}


def evaluate_files(
    onnx_path: Path, data_dir: Path, samples: Sequence[Sample], size: int, thresholds: Mapping[str, float]
) -> dict[str, object]:
    """Score photos with an ONNX model and summarise them at ``thresholds`` (no thresholds chosen here)."""
    probs = score_files(open_session(onnx_path), data_dir, [s.file for s in samples], size)
    return summarise(
        [s.referable for s in samples], probs, [s.patient_id for s in samples], [s.dr_grade for s in samples],
        thresholds,
    )  # fmt: skip


def differences(published: object, recomputed: object, path: str = "") -> list[str]:
    """List where two JSON-like metric trees differ (numbers beyond :data:`METRIC_TOLERANCE`)."""
    if isinstance(published, dict) and isinstance(recomputed, dict):
        keys = sorted(set(published) | set(recomputed))
        return [d for k in keys for d in differences(published.get(k), recomputed.get(k), f"{path}.{k}")]
    if isinstance(published, list) and isinstance(recomputed, list) and len(published) == len(recomputed):
        return [
            d
            for i, (a, b) in enumerate(zip(published, recomputed, strict=True))
            for d in differences(a, b, f"{path}[{i}]")
        ]
    if isinstance(published, int | float) and isinstance(recomputed, int | float):
        return [] if abs(published - recomputed) <= METRIC_TOLERANCE else [f"{path}: {published} != {recomputed}"]
    return [] if published == recomputed else [f"{path}: {published!r} != {recomputed!r}"]


def check(onnx_path: Path, sidecar: Mapping[str, object], rows: Sequence[OofRow]) -> list[str]:
    """Everything that does not match between the shipped files (empty: all consistent)."""
    report = oof_report(rows)
    problems = differences(sidecar["metrics"], report)
    problems += differences(sidecar["thresholds"], report["thresholds"], ".thresholds")
    problems += differences(sidecar.get("validation"), validation_summary(report), ".validation")
    if sidecar.get("sha256") != file_sha256(onnx_path):
        problems.append(f".sha256: {onnx_path.name} is not the file the sidecar describes")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Entry point: print the OOF report as JSON; ``--check`` compares it to the sidecar."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    parser.add_argument("--sidecar", type=Path, default=DEFAULT_SIDECAR)
    parser.add_argument("--oof", type=Path, default=DEFAULT_OOF)
    parser.add_argument("--check", action="store_true", help="fail if the sidecar's figures differ")
    parser.add_argument("--misses", action="store_true", help="quality verdicts of the misses (reads the photos)")
    args = parser.parse_args(argv)
    rows = read_oof(args.oof)
    report = oof_report(rows)
    if args.misses:
        thresholds = report["thresholds"]
        assert isinstance(thresholds, dict)
        report["misses_at_refer"] = miss_details(rows, thresholds["refer"], fundus_dir())
    print(json.dumps(report, indent=1))
    if args.check:
        sidecar = json.loads(args.sidecar.read_text())
        problems = check(args.onnx, sidecar, rows)
        labels = {s.file: s for s in read_labels(fundus_dir())} if (fundus_dir() / "labels.csv").is_file() else {}
        problems += [f"{r.file}: label differs from labels.csv" for r in rows
                     if r.file in labels and (labels[r.file].dr_grade, labels[r.file].patient_id)
                     != (r.dr_grade, r.patient_id)]  # fmt: skip
        for p in problems:
            print("MISMATCH", p, file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
