"""Static int8 (QDQ) quantisation, judged under the same out-of-fold protocol as the fp32 model.

``python -m models.triage.quantize`` (after ``export.py``) quantises each cross-validation fold's ONNX export
(``runs/cv/fold<F>.onnx``), calibrating on photos of that fold's *training* patients only, scores the fold's
held-out photos with the int8 network, and derives the int8 model's own thresholds and figures from those
int8 OOF predictions exactly as for fp32 (:func:`models.triage.evaluate.oof_report`). It also quantises the
shipped refit network (``runs/referable_dr.int8.onnx``, git-ignored) for size and latency, and prints one
JSON comparison. The rule (MODEL_CARD.md): int8 ships only if it is no worse at the "refer" operating point
(specificity at its own "refer" threshold, and the nested sensitivity).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from gateway.retina import preprocess
from models.triage import evaluate
from models.triage.data import fundus_dir, read_bgr, read_labels
from models.triage.folds import DEFAULT_K, patient_folds

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"


class _PhotoReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed photos one at a time to the calibrator."""

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self._items = iter(files)
        self._size = size

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._items, None)
        return None if path is None else {"image": preprocess.prepare_input(read_bgr(path), self._size)}


def quantise(fp32: Path, int8: Path, calibration: Sequence[Path], size: int) -> Path:
    """Write the static int8 QDQ version of ``fp32`` (per-channel weights, percentile calibration)."""
    pre = int8.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    quantize_static(
        str(pre),
        str(int8),
        _PhotoReader(calibration, size),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
    )
    pre.unlink()
    return int8


def latency_ms(path: Path, size: int, runs: int = 50) -> float:
    """Median single-thread latency of one image."""
    session = evaluate.open_session(path, threads=1)
    x = np.zeros((1, 3, size, size), dtype=np.float32)
    for _ in range(5):
        session.run(None, {"image": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def refer_point(report: dict[str, object]) -> dict[str, object]:
    """The figures the shipping rule compares: the validation summary, thresholds and the nested estimate."""
    return {
        **evaluate.validation_summary(report),
        "thresholds": report["thresholds"],
        "nested_refer": report["nested_refer"],
    }


def main(argv: list[str] | None = None) -> None:
    """Quantise the fold networks and the refit, evaluate int8 under the OOF protocol, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=64, help="photos per fold (from its training patients)")
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    args = parser.parse_args(argv)
    fp32 = HERE / "referable_dr.onnx"
    size = int(json.loads(fp32.with_suffix(".json").read_text())["input_size"])
    data_dir = fundus_dir()
    samples = read_labels(data_dir)
    rng = np.random.default_rng(0)
    probs = np.full(len(samples), np.nan)
    for f, held in enumerate(patient_folds(samples, args.k)):
        fit = np.setdiff1d(np.arange(len(samples)), held)
        calib = [data_dir / samples[i].file for i in sorted(rng.choice(fit, args.calibration, replace=False))]
        int8 = quantise(RUNS / "cv" / f"fold{f}.onnx", RUNS / "cv" / f"fold{f}.int8.onnx", calib, size)
        probs[held] = evaluate.score_files(evaluate.open_session(int8), data_dir, [samples[i].file for i in held], size)
    int8_rows = evaluate.oof_rows(samples, probs, args.k)
    evaluate.write_oof(int8_rows, RUNS / "oof_predictions.int8.csv")
    calib = [data_dir / samples[i].file for i in sorted(rng.choice(len(samples), args.calibration, replace=False))]
    refit_int8 = quantise(fp32, RUNS / "referable_dr.int8.onnx", calib, size)
    out = {
        "fp32": {"bytes": fp32.stat().st_size, "latency_ms_1core": latency_ms(fp32, size),
                 **refer_point(evaluate.oof_report(evaluate.read_oof()))},
        "int8": {"bytes": refit_int8.stat().st_size, "latency_ms_1core": latency_ms(refit_int8, size),
                 **refer_point(evaluate.oof_report(int8_rows))},
    }  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
