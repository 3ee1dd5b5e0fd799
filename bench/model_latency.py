"""Latency of the referable-DR ONNX model on one CPU core (onnxruntime, batch 1).

Usage: ``taskset -c 0 .venv/bin/python bench/model_latency.py [--runs 200]`` (the script also pins
itself to one core with ``--cpu``). Measures, on synthetic pixels (no patient data):

* ``model_ms``: the ONNX model alone on a preprocessed ``(1, 3, S, S)`` tensor, one intra-op thread;
* ``preprocess_ms``: ``gateway.retina.preprocess.prepare_input`` on a camera-sized 3872x2592 frame;
* ``quality_ms`` and ``preprocess_intake_ms``: the quality gate and ``prepare_input`` on the 1936x1296 frame
  the intake actually hands them for a camera JPEG (decoded at 1/2 size, ``intake.WORKING_SIDE``);
  ``per_image_ms`` = quality gate + preprocessing + model, the figure whose budget is 1 s;
* ``model_cpu_ms`` and ``per_image_cpu_ms``: the same as CPU time of this process (what the work costs one
  core when no other job shares it: on a busy machine the wall figures include waiting for the core);
* ``baseline_matmul_ms``: a fixed 512x512 float32 matmul in the same run, as a yardstick of this
  core's speed; ``model_vs_baseline`` is the ratio.

``pi4_estimate_ms`` scales ``model_ms`` by 6 (a Cortex-A72 at 1.5 GHz runs such int/float conv nets
about 4-8x slower than one modern x86 core); it is an estimate, not a measurement.
Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.retina import preprocess, quality  # noqa: E402

PI4_FACTOR = 6.0


def timed(fn: Callable[[], object], runs: int, warmup: int = 10) -> tuple[float, float, float]:
    """Median and 90th-percentile wall time of ``fn``, and its median CPU time, in milliseconds.

    The CPU time (``time.process_time``) leaves out the time the pinned core spent on other processes, so on
    a shared machine it is the steadier estimate of what the work costs a core of its own.
    """
    for _ in range(warmup):
        fn()
    samples, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.process_time() - start_cpu) * 1000.0)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))], statistics.median(cpu)


def synthetic_frame(height: int = 2592, width: int = 3872) -> np.ndarray:
    """A camera-sized BGR frame: a noisy orange disc on black (no patient data)."""
    rng = np.random.default_rng(0)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    yy, xx = np.ogrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.55 * height) ** 2
    frame[disc] = (40, 90, 180)
    noise = rng.integers(0, 30, size=frame.shape, dtype=np.uint8)
    return np.where(disc[..., None], frame + noise, frame).astype(np.uint8)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "triage" / "referable_dr.onnx")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cpu", type=int, default=0, help="pin to this core (-1: do not pin)")
    args = parser.parse_args(argv)
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    sidecar = json.loads(args.model.with_suffix(".json").read_text())
    size = int(sidecar["input_size"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    frame = synthetic_frame()
    x = preprocess.prepare_input(frame, size)
    model_med, model_p90, model_cpu = timed(lambda: session.run(None, {"image": x}), args.runs)
    pre_med, pre_p90, _ = timed(lambda: preprocess.prepare_input(frame, size), max(10, args.runs // 10), warmup=2)
    half = synthetic_frame(1296, 1936)
    gate_med, _, gate_cpu = timed(lambda: quality.assess(half), max(10, args.runs // 10), warmup=2)
    pre_half, _, pre_half_cpu = timed(lambda: preprocess.prepare_input(half, size), max(10, args.runs // 10), warmup=2)
    a = np.random.default_rng(1).standard_normal((512, 512)).astype(np.float32)
    base_med, _, _ = timed(lambda: a @ a, args.runs)
    print(
        json.dumps(
            {
                "bench": "model_latency",
                "model": args.model.name,
                "model_version": sidecar["model_version"],
                "input_size": size,
                "model_bytes": args.model.stat().st_size,
                "threads": 1,
                "pinned_cpu": args.cpu,
                "runs": args.runs,
                "model_ms": round(model_med, 2),
                "model_p90_ms": round(model_p90, 2),
                "model_cpu_ms": round(model_cpu, 2),
                "preprocess_ms": round(pre_med, 2),
                "preprocess_p90_ms": round(pre_p90, 2),
                "quality_ms": round(gate_med, 2),
                "preprocess_intake_ms": round(pre_half, 2),
                "per_image_ms": round(gate_med + pre_half + model_med, 2),
                "per_image_cpu_ms": round(gate_cpu + pre_half_cpu + model_cpu, 2),
                "baseline_matmul_ms": round(base_med, 3),
                "model_vs_baseline": round(model_med / base_med, 1),
                "pi4_estimate_ms": round(model_med * PI4_FACTOR, 1),
                "onnxruntime": ort.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
