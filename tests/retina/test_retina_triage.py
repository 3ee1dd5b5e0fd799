"""Triage through onnxruntime: the tiny stand-in model, every broken-model case, and the real model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.retina import build_tiny_model, fundus_files, fundus_jpeg, read_bgr, require_real_model

from gateway.errors import ModelError
from gateway.records import QualityVerdict, TriageDecision, TriageResult
from gateway.retina import imaging, quality
from gateway.retina.preprocess import prepare_input
from gateway.retina.triage import TriageModel, eye_decision

GOOD = QualityVerdict(ok=True)
BAD = QualityVerdict(ok=False, reasons=("out_of_focus",))
LIMITS = {"max_bytes": 30 * 1024 * 1024, "max_pixels": 40_000_000}


def image(seed: int = 1) -> np.ndarray:
    return imaging.decode(fundus_jpeg(seed), **LIMITS).image


def test_tiny_model_gives_a_probability_with_version_and_thresholds(tmp_path: Path) -> None:
    model = TriageModel(build_tiny_model(tmp_path / "m.onnx", thresholds={"refer": 0.3, "high_specificity": 0.7}))
    result = model.triage(image(), GOOD)
    assert result.referable_probability is not None and 0.0 <= result.referable_probability <= 1.0
    assert result.model_version == "tiny-test-1"
    assert result.thresholds == {"refer": 0.3, "high_specificity": 0.7}
    expected = TriageDecision.REFER if result.referable_probability >= 0.3 else TriageDecision.RESCREEN
    assert result.decision is expected


def test_decision_follows_the_refer_threshold(tmp_path: Path) -> None:
    low = TriageModel(build_tiny_model(tmp_path / "low.onnx", thresholds={"refer": 0.0}))
    high = TriageModel(build_tiny_model(tmp_path / "high.onnx", thresholds={"refer": 1.0}))
    assert low.triage(image(), GOOD).decision is TriageDecision.REFER
    assert high.triage(image(), GOOD).decision is TriageDecision.RESCREEN


def test_probability_depends_on_the_image_through_shared_preprocessing(tmp_path: Path) -> None:
    model = TriageModel(build_tiny_model(tmp_path / "m.onnx"))
    a, b = image(1), image(1)[:, :, ::-1].copy()  # channels swapped: a different picture
    assert model.probability(a) != pytest.approx(model.probability(b), abs=1e-4)
    # The model sees exactly preprocess.prepare_input's tensor (one implementation).
    x = prepare_input(a, 64)
    rgb_means = x.mean(axis=(2, 3))[0]
    expected = 1 / (1 + np.exp(-(2.0 * rgb_means[0] - 1.0 * rgb_means[1] - 0.5 * rgb_means[2] + 0.1)))
    assert model.probability(a) == pytest.approx(float(expected), abs=1e-5)


def test_failed_quality_is_ungradable_without_a_probability(tmp_path: Path) -> None:
    model = TriageModel(build_tiny_model(tmp_path / "m.onnx"))
    result = model.triage(image(), BAD)
    assert result.decision is TriageDecision.UNGRADABLE and result.referable_probability is None
    assert result.model_version == "tiny-test-1" and result.thresholds["refer"] == 0.5


def test_eye_decision() -> None:
    def r(decision: TriageDecision) -> TriageResult:
        return TriageResult(referable_probability=None, decision=decision, model_version="v")

    assert eye_decision([]) is TriageDecision.UNGRADABLE
    assert eye_decision([r(TriageDecision.UNGRADABLE)]) is TriageDecision.UNGRADABLE
    assert eye_decision([r(TriageDecision.UNGRADABLE), r(TriageDecision.RESCREEN)]) is TriageDecision.RESCREEN
    assert eye_decision([r(TriageDecision.RESCREEN), r(TriageDecision.REFER)]) is TriageDecision.REFER


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        TriageModel(tmp_path / "nope.onnx")


def test_missing_or_broken_sidecar(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx")
    sidecar = path.with_suffix(".json")
    sidecar.unlink()
    with pytest.raises(ModelError, match="missing"):
        TriageModel(path)
    sidecar.write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read"):
        TriageModel(path)
    sidecar.write_text(json.dumps({"model_version": "x", "input_size": 64, "thresholds": {"high_specificity": 0.9}}))
    with pytest.raises(ModelError, match=r"thresholds\.refer"):
        TriageModel(path)
    sidecar.write_text(json.dumps({"model_version": "x", "input_size": 64, "thresholds": {"refer": 1.5}}))
    with pytest.raises(ModelError, match=r"0\.\.1"):
        TriageModel(path)


def test_wrong_input_shape(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx", input_size=64, input_shape=["N", 3, 32, 32])
    with pytest.raises(ModelError, match=r"input shape .*expected \[N, 3, 64, 64\]"):
        TriageModel(path)


def test_wrong_output_name(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx", output_name="prob")
    doc = json.loads(path.with_suffix(".json").read_text())
    doc["output"] = "referable_probability"
    path.with_suffix(".json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="no output 'referable_probability'"):
        TriageModel(path)


def test_corrupt_model_file(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx")
    path.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="cannot be loaded"):
        TriageModel(path)


def test_real_model_on_shared_photos() -> None:
    model_path = require_real_model()
    files = fundus_files("valid", limit=6)
    model = TriageModel(model_path)
    meta = json.loads(model_path.with_suffix(".json").read_text())
    assert model.model_version == meta["model_version"]
    assert {"refer", "high_specificity"} <= set(model.info.thresholds)
    for path in files:
        img = read_bgr(path)
        result = model.triage(img, quality.assess(img))
        assert result.model_version == meta["model_version"] and result.thresholds == model.info.thresholds
        if result.decision is not TriageDecision.UNGRADABLE:
            assert result.referable_probability is not None and 0.0 <= result.referable_probability <= 1.0
            refer = result.referable_probability >= model.info.thresholds["refer"]
            assert result.decision is (TriageDecision.REFER if refer else TriageDecision.RESCREEN)


def test_real_model_separates_referable_photos_on_valid() -> None:
    """A coarse check that the shipped file is the trained model and not a stand-in (the model card has
    the real metrics): referable photos score higher on average than non-referable ones."""
    import csv

    model = TriageModel(require_real_model())
    folder = fundus_files("valid", limit=1)[0].parent
    with (folder / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "valid"][:40]
    scores: dict[str, list[float]] = {"0": [], "1": []}
    for row in rows:
        scores[row["referable"]].append(model.probability(read_bgr(folder / row["file"])))
    assert scores["0"] and scores["1"]
    assert np.mean(scores["1"]) > np.mean(scores["0"])


def test_low_memory_settings_give_the_same_probability(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx")
    lean, fast = TriageModel(path, low_memory=True), TriageModel(path, low_memory=False)
    assert lean.probability(image(3)) == pytest.approx(fast.probability(image(3)), abs=1e-6)
