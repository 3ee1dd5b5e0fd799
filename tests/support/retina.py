"""Test support for the retina area: the shared fundus photos, a tiny ONNX model, image bytes, configs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.emulate.camera import encode, synthetic_fundus

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_MODEL = REPO_ROOT / "models" / "triage" / "referable_dr.onnx"


def fundus_dir() -> Path:
    """``$CG_FUNDUS_DIR`` or ``<repo>/../shared/data/fundus``."""
    return Path(os.environ.get("CG_FUNDUS_DIR") or REPO_ROOT.parent / "shared" / "data" / "fundus")


def require_fundus() -> Path:
    """The shared photos' folder, or skip: they are licensed for academic use and never in the repo."""
    folder = fundus_dir()
    if not (folder / "labels.csv").is_file():
        pytest.skip(f"shared fundus photos not found at {folder} (set CG_FUNDUS_DIR)")
    return folder


def fundus_files(split: str, limit: int | None = None) -> list[Path]:
    """Photos of one split (skips when the data is absent)."""
    folder = require_fundus()
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    return [folder / r["file"] for r in rows[:limit]]


def read_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path.name
    return image


def require_real_model() -> Path:
    """The shipped model file, or skip with the reason."""
    if not REAL_MODEL.is_file() or not REAL_MODEL.with_suffix(".json").is_file():
        pytest.skip(f"the triage model {REAL_MODEL.relative_to(REPO_ROOT)} (+ .json) is not there yet")
    return REAL_MODEL


def fundus_jpeg(seed: int = 1, size: tuple[int, int] = (640, 480), eye: str = "R") -> bytes:
    """JPEG bytes of a synthetic fundus-like photo that passes the quality gate."""
    return encode(synthetic_fundus(seed, size, eye), ".jpg")


def build_tiny_model(
    path: Path,
    *,
    input_size: int = 64,
    version: str = "tiny-test-1",
    thresholds: dict[str, float] | None = None,
    input_shape: list[Any] | None = None,
    output_name: str = "referable_probability",
) -> Path:
    """A tiny ONNX model with the real model's interface: ``image`` (N,3,S,S) -> ``referable_probability`` (N,1).

    It averages each channel and puts a weighted sum through a sigmoid, so its output depends on the image.
    """
    import onnx
    from onnx import TensorProto, helper

    shape = input_shape or ["N", 3, input_size, input_size]
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [2.0, -1.0, -0.5])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [1], [0.1])
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logit0"]),
            helper.make_node("Add", ["logit0", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], [output_name]),
        ],
        "tiny_triage",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 1])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    sidecar = {
        "model_version": version,
        "input_size": input_size,
        "output": output_name,
        "thresholds": thresholds or {"refer": 0.5, "high_specificity": 0.8},
    }
    path.with_suffix(".json").write_text(json.dumps(sidecar), encoding="utf-8")
    return path


def retina_config(tmp_path: Path, **retina: Any) -> GatewayConfig:
    """A config with its state under ``tmp_path`` and the given ``[retina]`` table."""
    return parse_config(
        {
            "gateway": {"site_id": "chc-test", "gateway_id": "gw-test", "state_dir": str(tmp_path / "state")},
            "clock": {"sync_check": "assume_synced"},
            "retina": retina,
        },
        check_files=False,
    )
