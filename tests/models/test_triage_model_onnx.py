"""The shipped referable-DR ONNX model: interface, size, parity with torch, published metrics.

Runs without torch (CI installs only ``.[dev]``): the torch side is ``reference_outputs.json``,
written by ``scripts/train-model`` from the training framework on the same shared photos.
"""

from __future__ import annotations

import json
import re

import numpy as np
from support.retina import REPO_ROOT, require_fundus, require_real_model

from gateway.retina import preprocess
from models.triage import evaluate
from models.triage.data import read_bgr

TRIAGE = REPO_ROOT / "models" / "triage"
MAX_BYTES = 20 * 1024 * 1024


def test_interface_size_and_sidecar() -> None:
    model = require_real_model()
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert model.stat().st_size <= MAX_BYTES
    size = sidecar["input_size"]
    assert sidecar["output"] == "referable_probability"
    assert 0.0 < sidecar["thresholds"]["refer"] < sidecar["thresholds"]["high_specificity"] < 1.0
    session = evaluate.open_session(model, threads=1)
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(float)", [3, size, size])
    assert (out.name, out.shape[1:]) == ("referable_probability", [1])
    x = np.stack([np.zeros((3, size, size)), np.ones((3, size, size))]).astype(np.float32)
    (probs,) = session.run(None, {"image": x})
    assert probs.shape == (2, 1) and probs.dtype == np.float32
    assert np.all((probs >= 0) & (probs <= 1))


def test_onnx_matches_torch_reference_on_shared_photos() -> None:
    """Same photos, same preprocessing (checksum), same probabilities within the stated tolerance."""
    model = require_real_model()
    folder = require_fundus()
    reference = json.loads((TRIAGE / "reference_outputs.json").read_text())
    assert reference["tolerance_abs"] == evaluate.PARITY_TOLERANCE == 1e-4
    size = reference["input_size"]
    session = evaluate.open_session(model)
    names = sorted(reference["images"])
    assert len(names) >= 16
    batch = []
    for name in names:
        x = preprocess.prepare_input(read_bgr(folder / name), size)
        assert evaluate.tensor_sha256(x) == reference["images"][name]["input_sha256"], f"preprocessing drifted: {name}"
        batch.append(x)
    (probs,) = session.run(None, {"image": np.concatenate(batch)})
    expected = np.array([reference["images"][n]["probability"] for n in names])
    np.testing.assert_allclose(probs[:, 0], expected, rtol=0, atol=evaluate.PARITY_TOLERANCE)


def test_evaluation_reproduces_the_published_metrics_and_model_card() -> None:
    """``python -m models.triage.evaluate --check`` re-derives referable_dr.json; the card quotes it."""
    model = require_real_model()
    require_fundus()
    assert evaluate.main(["--onnx", str(model), "--check"]) == 0
    metrics = json.loads(model.with_suffix(".json").read_text())["metrics"]
    card = (TRIAGE / "MODEL_CARD.md").read_text()
    lo, hi = metrics["auc_ci95_patient_bootstrap"]
    quoted = [f"{metrics['auc']:.3f}", f"{lo:.3f}", f"{hi:.3f}"]
    for point in ("refer", "high_specificity"):
        quoted += [f"{metrics[point]['sensitivity']:.3f}", f"{metrics[point]['specificity']:.3f}"]
    missing = [q for q in quoted if not re.search(re.escape(q), card)]
    assert not missing, f"MODEL_CARD.md does not quote {missing}"
