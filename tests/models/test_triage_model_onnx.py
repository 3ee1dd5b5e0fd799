"""The shipped referable-DR ONNX model: interface, size, its recorded outputs, published metrics.

Runs without torch (CI installs only ``.[dev]``): ``reference_outputs.json`` holds the shipped file's own
outputs and input checksums on shared photos, written by ``scripts/train-model`` at export (the fold
networks' parity with torch is in ``test_triage_model_torch.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from support.retina import REPO_ROOT, require_fundus, require_real_model

from gateway.retina import preprocess
from gateway.retina.model_store import Candidate, verify
from models.triage import evaluate
from models.triage.data import read_bgr

TRIAGE = REPO_ROOT / "models" / "triage"
OOF = TRIAGE / "oof_predictions.csv"
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


def test_onnx_matches_its_reference_outputs_on_shared_photos() -> None:
    """Same photos, same preprocessing (checksum), same probabilities within the stated tolerance."""
    model = require_real_model()
    folder = require_fundus()
    reference = json.loads((TRIAGE / "reference_outputs.json").read_text())
    assert reference["tolerance_abs"] == evaluate.REFERENCE_TOLERANCE
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
    np.testing.assert_allclose(probs[:, 0], expected, rtol=0, atol=evaluate.REFERENCE_TOLERANCE)


def require_published() -> Path:
    """The shipped model with its out-of-fold predictions, or skip (before the first scripts/train-model)."""
    model = require_real_model()
    if not OOF.is_file():
        pytest.skip("models/triage/oof_predictions.csv not there yet (scripts/train-model)")
    return model


def test_sidecar_is_what_gateway_model_install_checks() -> None:
    """The shipped files pass the gateway's own install checks (SHA-256, input contract, validation summary)."""
    model = require_published()
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sidecar["sha256"] == evaluate.file_sha256(model)
    size = sidecar["input_size"]
    assert sidecar["input_contract"] == {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32"}
    assert verify(Candidate.beside(model), None).model_version == sidecar["model_version"]


def test_published_figures_are_rederived_and_quoted_by_the_model_card() -> None:
    """``python -m models.triage.evaluate --check`` re-derives referable_dr.json from the shipped OOF predictions;
    the card quotes the figures."""
    model = require_published()
    require_fundus()
    assert evaluate.main(["--onnx", str(model), "--check"]) == 0
    sidecar = json.loads(model.with_suffix(".json").read_text())
    figures = sidecar["metrics"]
    assert figures["n_images"] == 478 and figures["n_patients"] == 239  # all the developer photos
    card = (TRIAGE / "MODEL_CARD.md").read_text()
    quoted = [figures["auc"], *figures["auc_ci95_patient_bootstrap"], figures["patient_auc"]]
    for view in ("per_eye", "per_patient"):
        for point in ("refer", "high_specificity"):
            block = figures[view][point]
            quoted += [block["sensitivity"], block["specificity"], *block["sensitivity_ci95"]]
    quoted += [figures["nested_refer"]["sensitivity"], figures["nested_refer"]["specificity"]]
    quoted_text = [f"{q:.3f}" for q in quoted]
    missing = [q for q in quoted_text if not re.search(re.escape(q), card)]
    assert not missing, f"MODEL_CARD.md does not quote {missing}"
    assert f"{sidecar['thresholds']['refer']:.4f}" in card and sidecar["model_version"] in card
