"""Experiment: static int8 (QDQ) quantisation of the shipped ONNX model, compared on valid.

``python -m models.triage.quantize`` calibrates on train-split photos only, writes
``runs/referable_dr.int8.onnx`` (git-ignored) and prints fp32 versus int8 metrics and latency
on one core. The int8 file is shipped only if it keeps the metrics; see MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import time
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

HERE = Path(__file__).resolve().parent


class _PhotoReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds preprocessed train photos one at a time to the calibrator."""

    def __init__(self, files: list[Path], size: int) -> None:
        self._items = iter(files)
        self._size = size

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._items, None)
        return None if path is None else {"image": preprocess.prepare_input(read_bgr(path), self._size)}


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


def main(argv: list[str] | None = None) -> None:
    """Quantise, evaluate both models on valid and print a JSON comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=64, help="number of train photos")
    args = parser.parse_args(argv)
    fp32 = HERE / "referable_dr.onnx"
    size = int(json.loads(fp32.with_suffix(".json").read_text())["input_size"])
    data_dir = fundus_dir()
    train = [data_dir / s.file for s in read_labels(data_dir) if s.split == "train"]
    rng = np.random.default_rng(0)
    calib = [train[i] for i in sorted(rng.choice(len(train), args.calibration, replace=False))]
    runs = HERE / "runs"
    runs.mkdir(exist_ok=True)
    pre = runs / "referable_dr.pre.onnx"
    int8 = runs / "referable_dr.int8.onnx"
    quant_pre_process(str(fp32), str(pre))
    quantize_static(
        str(pre),
        str(int8),
        _PhotoReader(calib, size),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
    )
    out = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        result = evaluate.evaluate(path, data_dir, size).as_dict()
        out[name] = {"bytes": path.stat().st_size, "latency_ms_1core": latency_ms(path, size), **result}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
