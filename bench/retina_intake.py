"""Retina intake on one core: a 2000x2000 JPEG to quality verdict and to triage result; RSS with the model.

Pinned to one CPU (``os.sched_setaffinity``) with OpenCV and onnxruntime on one thread, as on a busy Pi.
The image is a shared fundus photo enlarged to 2000x2000 (black padding) when the shared data is there,
else a synthetic fundus frame from the camera emulator. The model is the shipped
``models/triage/referable_dr.onnx`` when present, else a tiny stand-in with the same interface (the
output says which: the triage time then measures everything but the real network).

RSS is measured in a child process that imports the daemon's modules, loads the model once and takes the
image into a real store three times (``VmRSS`` and the peak ``VmHWM`` from ``/proc/self/status``).

    .venv/bin/python bench/retina_intake.py [--repeat 15] [--model PATH.onnx]

Targets: verdict <= 0.3 s, triage result <= 1 s, RSS <= 200 MB. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGETS = {"quality_s": 0.3, "triage_s": 1.0, "rss_mb": 200.0}
SIDE = 2000


def pin_one_core() -> int:
    """Pin this process to its first allowed CPU; return that CPU."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def make_jpeg() -> tuple[bytes, str]:
    """A 2000x2000 fundus JPEG and where it came from."""
    import cv2
    import numpy as np

    from gateway.emulate.camera import synthetic_fundus

    folder = Path(os.environ.get("CG_FUNDUS_DIR") or REPO.parent / "shared" / "data" / "fundus")
    photos = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if photos:
        raw = cv2.imread(str(photos[0]), cv2.IMREAD_COLOR)
        assert raw is not None
        photo = np.asarray(raw, dtype=np.uint8)
        scale = SIDE / max(photo.shape[:2])
        big = cv2.resize(
            photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)), interpolation=cv2.INTER_CUBIC
        )
        canvas = np.zeros((SIDE, SIDE, 3), np.uint8)
        y0, x0 = (SIDE - big.shape[0]) // 2, (SIDE - big.shape[1]) // 2
        canvas[y0 : y0 + big.shape[0], x0 : x0 + big.shape[1]] = big
        source = "shared photo enlarged to 2000x2000"
    else:
        canvas = synthetic_fundus(1, (SIDE, SIDE))
        source = "synthetic fundus 2000x2000"
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return bytes(buf.tobytes()), source


def model_path(workdir: Path) -> tuple[Path, str]:
    """The shipped model, or a tiny stand-in with the same interface."""
    from gateway.retina.triage import DEFAULT_MODEL

    if DEFAULT_MODEL.is_file() and DEFAULT_MODEL.with_suffix(".json").is_file():
        return DEFAULT_MODEL, "shipped"
    sys.path.insert(0, str(REPO / "tests"))
    from support.retina import build_tiny_model

    return build_tiny_model(workdir / "tiny.onnx", input_size=224), "tiny stand-in (real model file absent)"


def rss_child(jpeg_path: Path, model: Path, workdir: Path, *, low_memory: bool = True) -> dict[str, float]:
    """In a fresh process: the daemon's imports, the model loaded, three intakes into a store; RSS figures."""
    import gateway.daemon  # noqa: F401  (the daemon's import graph, as in production)
    from gateway.clock import SystemClock
    from gateway.records import Eye, Field
    from gateway.retina.intake import CaptureMeta, RetinaIntake
    from gateway.retina.triage import TriageModel
    from gateway.store import open_store

    store = open_store(workdir / "rss.db", workdir / "images", clock=SystemClock("assume_synced"))
    intake = RetinaIntake(store, TriageModel(model, threads=1, low_memory=low_memory))
    data = jpeg_path.read_bytes()
    for _ in range(3):
        intake.take(data, CaptureMeta(eye=Eye.RIGHT, field=Field.MACULA, source="upload"))
        store.db.execute("DELETE FROM captures")  # so the next take is not a duplicate
    status = Path("/proc/self/status").read_text()
    kb = {
        line.split(":")[0]: int(line.split()[1]) for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM"))
    }
    return {"rss_mb": round(kb["VmRSS"] / 1024, 1), "peak_rss_mb": round(kb["VmHWM"] / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the last printed line is JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument(
        "--no-low-memory", action="store_true", help="onnxruntime defaults (retina.model.low_memory off)"
    )
    parser.add_argument("--rss-child", nargs=3, metavar=("JPEG", "MODEL", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cpu = pin_one_core()
    import cv2

    cv2.setNumThreads(1)
    if args.rss_child:
        jpeg, model_file, work = (Path(p) for p in args.rss_child)
        print(json.dumps(rss_child(jpeg, model_file, work, low_memory=not args.no_low_memory)))
        return 0

    from gateway.retina import imaging, quality
    from gateway.retina.intake import WORKING_SIDE
    from gateway.retina.triage import TriageModel

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, source = make_jpeg()
        onnx_path, model_kind = (args.model, "given") if args.model else model_path(work)
        model = TriageModel(onnx_path, threads=1, low_memory=not args.no_low_memory)
        limits = {"max_bytes": 30 * 1024 * 1024, "max_pixels": 40_000_000}
        q_times, t_times, m_times = [], [], []
        verdict = None
        result = None
        for _ in range(args.repeat + 1):  # the first round warms caches and is dropped
            t0 = time.perf_counter()
            decoded = imaging.decode(data, **limits, reduce_to=WORKING_SIDE)  # as intake.assess_bytes does
            verdict = quality.assess(decoded.image)
            t1 = time.perf_counter()
            m0 = time.perf_counter()
            result = model.triage(decoded.image, verdict)
            t2 = time.perf_counter()
            q_times.append(t1 - t0)
            t_times.append(t2 - t0)
            m_times.append(t2 - m0)
        q_times, t_times, m_times = q_times[1:], t_times[1:], m_times[1:]
        jpeg_path = work / "bench.jpg"
        jpeg_path.write_bytes(data)
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(jpeg_path), str(onnx_path), str(work)]
            + (["--no-low-memory"] if args.no_low_memory else []),
            capture_output=True,
            text=True,
            check=True,
        )
        rss = json.loads(child.stdout.strip().splitlines()[-1])
    assert verdict is not None and result is not None
    figures: dict[str, Any] = {
        "bench": "retina_intake",
        "image": f"{SIDE}x{SIDE} JPEG, {len(data) / 1e6:.2f} MB ({source})",
        "cpu": cpu,
        "model": f"{model.model_version} ({model_kind})",
        "low_memory": not args.no_low_memory,
        "repeat": args.repeat,
        "quality_s_median": round(statistics.median(q_times), 4),
        "quality_s_max": round(max(q_times), 4),
        "triage_s_median": round(statistics.median(t_times), 4),
        "triage_s_max": round(max(t_times), 4),
        "model_only_s_median": round(statistics.median(m_times), 4),
        "verdict_ok": verdict.ok,
        "decision": str(result.decision),
        **rss,
        "targets": TARGETS,
    }
    figures["within_targets"] = (
        figures["quality_s_median"] <= TARGETS["quality_s"]
        and figures["triage_s_median"] <= TARGETS["triage_s"]
        and figures["peak_rss_mb"] <= TARGETS["rss_mb"]
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
