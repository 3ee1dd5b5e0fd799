"""Static int8 (QDQ) quantisation, judged under the same out-of-fold protocol as the fp32 model.

``export.py`` quantises each cross-validation fold's ONNX export (``runs/cv/fold<F>.onnx``) with
:func:`quantise_folds`, calibrating on photos of that fold's *training* patients only, scores the fold's
held-out photos with the int8 network, and derives the int8 variant's own thresholds and figures from those
int8 OOF predictions exactly as for fp32 (:func:`models.triage.evaluate.oof_report`). The rule
(:func:`int8_no_worse`, MODEL_CARD.md): the int8 members ship only if int8 is no worse at the "refer"
operating point. ``python -m models.triage.quantize`` prints the comparison of the last export as JSON
(with one member's size and single-core latency in each precision).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
from models.triage.data import Sample, read_bgr
from models.triage.folds import patient_folds

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs"
CALIBRATION = 64
"""Calibration photos per fold network."""


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


def int8_no_worse(fp32: Mapping[str, Any], int8: Mapping[str, Any]) -> bool:
    """The shipping rule: int8's specificity at its own "refer" threshold (per-eye sensitivity >= 0.92 by
    construction) and its nested "refer" sensitivity are both no lower than fp32's (:func:`refer_point` figures)."""
    return bool(
        int8["refer"]["specificity"] >= fp32["refer"]["specificity"]
        and int8["nested_refer"]["sensitivity"] >= fp32["nested_refer"]["sensitivity"]
    )


def quantise_folds(
    fp32: Sequence[Path], samples: Sequence[Sample], data_dir: Path, size: int, calibration: int = CALIBRATION
) -> list[Path]:
    """Quantise each fold network ``fp32[f]`` to ``fold<F>.int8.onnx`` beside it, calibrated on ``calibration``
    photos drawn (one seeded generator, folds in order) from that fold's training patients only."""
    rng = np.random.default_rng(0)
    out = []
    for f, held in enumerate(patient_folds(samples, len(fp32))):
        fit = np.setdiff1d(np.arange(len(samples)), held)
        picked = rng.choice(fit, calibration, replace=False)
        calib = [data_dir / samples[i].file for i in sorted(picked)]
        out.append(quantise(fp32[f], fp32[f].with_suffix(".int8.onnx"), calib, size))
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the fp32/int8 comparison of the last export (OOF figures at "refer", size and latency), as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS)
    args = parser.parse_args(argv)
    size = int(json.loads((HERE / "referable_dr.json").read_text())["input_size"])
    out: dict[str, object] = {}
    for name, suffix in (("fp32", ".onnx"), ("int8", ".int8.onnx")):
        member = args.runs / "cv" / f"fold0{suffix}"
        report = evaluate.oof_report(evaluate.read_oof(args.runs / f"oof_predictions.{name}.csv"))
        out[name] = {"member_bytes": member.stat().st_size, "member_latency_ms_1core": latency_ms(member, size),
                     **refer_point(report)}  # fmt: skip
    fp32, int8 = out["fp32"], out["int8"]
    assert isinstance(fp32, dict) and isinstance(int8, dict)
    out["int8_ships"] = int8_no_worse(fp32, int8)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
