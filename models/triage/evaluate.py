"""Evaluate the shipped ONNX model on the valid split (onnxruntime + numpy + OpenCV; no torch).

Photos are read from the shared data directory and preprocessed with
``gateway.retina.preprocess.prepare_input``, exactly as the gateway does. The "refer" threshold is
the highest one with sensitivity >= 0.90 on valid; the "high_specificity" one is the lowest with
specificity >= 0.95. ``python -m models.triage.evaluate --check`` recomputes everything and fails
if it differs from ``referable_dr.json`` (which the model card quotes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from gateway.retina import preprocess
from models.triage import metrics
from models.triage.data import Sample, fundus_dir, read_bgr, read_labels

HERE = Path(__file__).resolve().parent
DEFAULT_ONNX = HERE / "referable_dr.onnx"
DEFAULT_SIDECAR = HERE / "referable_dr.json"
REFER_SENSITIVITY = 0.90
HIGH_SPECIFICITY = 0.95
PARITY_TOLERANCE = 1e-4
"""Largest absolute difference in probability accepted between torch and onnxruntime."""
METRIC_TOLERANCE = 1e-3
"""Largest difference accepted when re-deriving the published metrics."""
BATCH = 16


def tensor_sha256(x: npt.NDArray[np.float32]) -> str:
    """SHA-256 of a float32 C-contiguous array's bytes (checks preprocessing bit for bit)."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def open_session(onnx_path: Path, threads: int = 0) -> ort.InferenceSession:
    """Create a CPU onnxruntime session (``threads=0`` lets onnxruntime choose)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def score_files(session: ort.InferenceSession, data_dir: Path, files: list[str], size: int) -> npt.NDArray[np.float64]:
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
class Evaluation:
    """Valid-split metrics of one model."""

    n_images: int
    n_patients: int
    n_referable: int
    auc: float
    auc_ci95: tuple[float, float]
    refer: metrics.OperatingPoint
    high_spec: metrics.OperatingPoint
    referred_by_grade_refer: dict[str, float]
    referred_by_grade_high_spec: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready metrics, rounded to 4 decimals (thresholds to 6)."""

        def point(p: metrics.OperatingPoint) -> dict[str, float]:
            return {
                "threshold": round(p.threshold, 6),
                "sensitivity": round(p.sensitivity, 4),
                "specificity": round(p.specificity, 4),
            }

        return {
            "split": "valid",
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "n_referable": self.n_referable,
            "auc": round(self.auc, 4),
            "auc_ci95_patient_bootstrap": [round(v, 4) for v in self.auc_ci95],
            "refer": point(self.refer),
            "high_specificity": point(self.high_spec),
            "referred_fraction_by_grade": {
                "refer": {k: round(v, 4) for k, v in self.referred_by_grade_refer.items()},
                "high_specificity": {k: round(v, 4) for k, v in self.referred_by_grade_high_spec.items()},
            },
        }


def compute(samples: list[Sample], probs: npt.NDArray[np.float64]) -> Evaluation:
    """Metrics and both operating points for ``samples`` scored ``probs``."""
    labels = np.array([s.referable for s in samples])
    grades = np.array([s.dr_grade for s in samples])
    refer = metrics.threshold_for_sensitivity(labels, probs, REFER_SENSITIVITY)
    high = metrics.threshold_for_specificity(labels, probs, HIGH_SPECIFICITY)
    return Evaluation(
        n_images=len(samples),
        n_patients=len({s.patient_id for s in samples}),
        n_referable=int(labels.sum()),
        auc=metrics.roc_auc(labels, probs),
        auc_ci95=metrics.bootstrap_auc_ci(labels, probs, [s.patient_id for s in samples]),
        refer=refer,
        high_spec=high,
        referred_by_grade_refer=metrics.sensitivity_by_grade(grades, probs, refer.threshold),
        referred_by_grade_high_spec=metrics.sensitivity_by_grade(grades, probs, high.threshold),
    )


def evaluate(onnx_path: Path, data_dir: Path, size: int, split: str = "valid") -> Evaluation:
    """Score every photo of ``split`` with the ONNX model and compute the metrics."""
    samples = [s for s in read_labels(data_dir) if s.split == split]
    probs = score_files(open_session(onnx_path), data_dir, [s.file for s in samples], size)
    return compute(samples, probs)


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: print valid metrics as JSON; with ``--check`` compare them to the sidecar."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX)
    parser.add_argument("--sidecar", type=Path, default=DEFAULT_SIDECAR)
    parser.add_argument("--check", action="store_true", help="fail if the sidecar's metrics differ")
    args = parser.parse_args(argv)
    sidecar = json.loads(args.sidecar.read_text())
    result = evaluate(args.onnx, fundus_dir(), int(sidecar["input_size"])).as_dict()
    print(json.dumps(result, indent=1))
    if args.check:
        diffs = differences(sidecar["metrics"], result)
        for d in diffs:
            print("MISMATCH", d, file=sys.stderr)
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
