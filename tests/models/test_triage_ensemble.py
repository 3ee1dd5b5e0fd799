"""The shipped ensemble: one ONNX graph, mean of the fold networks' logits, rebuilt byte for byte from its members.

The merge is checked on tiny members built with ``onnx.helper`` (runs in CI, no torch); the shipped file is
checked against the sidecar, and, where the fold networks of the last ``scripts/train-model`` are on this
machine (``models/triage/runs/``, git-ignored), rebuilt from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.retina import REPO_ROOT, require_real_model

from models.triage import ensemble, evaluate, quantize

RUNS = REPO_ROOT / "models" / "triage" / "runs"


def member(weight: float, bias: float, qdq: bool = False) -> onnx.ModelProto:
    """image (N,3,4,4) -> sigmoid(weight * mean(image) + bias) (N,1); with ``qdq`` the output is Q/DQ'd as in int8."""
    inits = [
        numpy_helper.from_array(np.array(weight, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array(bias, dtype=np.float32), "b"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["m2"]),
        helper.make_node("Mul", ["m2", "w"], ["scaled"]),
        helper.make_node("Add", ["scaled", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p" if qdq else "referable_probability"]),
    ]
    inits.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "shape"))
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(1 / 255, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(0, dtype=np.uint8), "zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["p", "scale", "zero"], ["pq"]),
            helper.make_node("DequantizeLinear", ["pq", "scale", "zero"], ["referable_probability"]),
        ]
    graph = helper.make_graph(
        nodes,
        "member",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("referable_probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_merge_is_the_sigmoid_of_the_mean_of_the_members_logits(tmp_path: Path) -> None:
    params = [(2.0, -1.0, True), (-3.0, 0.5, False), (0.5, 4.0, True)]  # the last saturates its int8 output
    paths = []
    for i, (w, b, qdq) in enumerate(params):
        paths.append(tmp_path / f"m{i}.onnx")
        onnx.save(member(w, b, qdq), str(paths[i]))
    out = ensemble.build(paths, tmp_path / "ensemble.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 4, 4)).astype(np.float32)
    (probs,) = evaluate.open_session(out).run(None, {"image": x})
    mean_image = x.mean(axis=(1, 2, 3))
    expected = 1 / (1 + np.exp(-np.mean([w * mean_image + b for w, b, _ in params], axis=0)))
    assert probs.shape == (5, 1)
    # The members' logits, not their (int8-rounded, saturated) probabilities, are averaged.
    np.testing.assert_allclose(probs[:, 0], expected, rtol=0, atol=1e-6)
    assert ensemble.member_count(out) == 3
    again = ensemble.build(paths, tmp_path / "again.onnx")
    assert evaluate.file_sha256(again) == evaluate.file_sha256(out)  # deterministic: same members, same bytes


def test_a_member_without_a_final_sigmoid_is_refused() -> None:
    bad = member(1.0, 0.0)
    bad.graph.node[-1].op_type = "Relu"
    with pytest.raises(ensemble.MemberShapeError) as refused:
        ensemble.merge([member(1.0, 0.0), bad])
    assert refused.value.member == 1


def test_int8_ships_only_if_no_worse_at_refer() -> None:
    fp32 = {"refer": {"specificity": 0.80}, "nested_refer": {"sensitivity": 0.91}}
    assert quantize.int8_no_worse(fp32, {"refer": {"specificity": 0.80}, "nested_refer": {"sensitivity": 0.91}})
    assert not quantize.int8_no_worse(fp32, {"refer": {"specificity": 0.79}, "nested_refer": {"sensitivity": 0.95}})
    assert not quantize.int8_no_worse(fp32, {"refer": {"specificity": 0.85}, "nested_refer": {"sensitivity": 0.90}})


def test_shipped_file_is_the_ensemble_the_sidecar_describes() -> None:
    model = require_real_model()
    sidecar = json.loads(model.with_suffix(".json").read_text())
    weights = sidecar["weights"]
    assert weights["kind"] == "ensemble"
    folds = sidecar["metrics"]["protocol"].split("-fold")[0]
    assert ensemble.member_count(model) == len(weights["members"]) == int(folds)  # every fold network
    points = weights["refer_point"]
    assert (weights["precision"] == "int8") == quantize.int8_no_worse(points["fp32"], points["int8"])
    assert sidecar["thresholds"] == points[weights["precision"]]["thresholds"]  # thresholds of what ships


def test_shipped_ensemble_is_rebuilt_from_the_local_fold_networks() -> None:
    """Where ``scripts/train-model`` ran here: merging its member files gives the shipped file, byte for byte."""
    model = require_real_model()
    weights = json.loads(model.with_suffix(".json").read_text())["weights"]
    suffix = ".int8.onnx" if weights["precision"] == "int8" else ".onnx"
    members = [RUNS / f"{m}{suffix}" for m in weights["members"]]
    if not all(p.is_file() for p in members):
        pytest.skip("no local fold networks (run scripts/train-model)")
    rebuilt = ensemble.build(members, RUNS / "rebuilt-ensemble.onnx")
    try:
        assert evaluate.file_sha256(rebuilt) == evaluate.file_sha256(model)
    finally:
        rebuilt.unlink()
