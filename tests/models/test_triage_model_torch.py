"""Live torch-versus-onnxruntime checks (skipped where torch is not installed, e.g. CI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.retina import fundus_files, read_bgr, require_real_model

from gateway.retina import preprocess
from models.triage import evaluate

torch = pytest.importorskip("torch", reason="torch is only in the training extra (.[train])")

from models.triage.export import export_onnx  # noqa: E402
from models.triage.model import ProbabilityModel, build_model  # noqa: E402
from models.triage.train import RUNS_DIR, load_checkpoint, referable_net  # noqa: E402

SIZE = preprocess.INPUT_SIZE
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def photos(n: int) -> np.ndarray:
    return np.concatenate([preprocess.prepare_input(read_bgr(p), SIZE) for p in fundus_files("valid", n)])


def torch_probs(wrapper: ProbabilityModel, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return wrapper(torch.from_numpy(x)).numpy()


def test_export_path_matches_torch(tmp_path) -> None:
    """The exporter (ImageNet backbone, seeded head, flip TTA) gives torch's outputs within 1e-4."""
    torch.manual_seed(0)
    wrapper = ProbabilityModel(build_model(pretrained=True), flip_tta=True).eval()
    export_onnx(wrapper, SIZE, tmp_path / "m.onnx")
    x = photos(4)
    (onnx_probs,) = evaluate.open_session(tmp_path / "m.onnx").run(None, {"image": x})
    np.testing.assert_allclose(onnx_probs, torch_probs(wrapper, x), rtol=0, atol=evaluate.PARITY_TOLERANCE)


def test_shipped_members_match_their_training_checkpoints() -> None:
    """Each fold network the ensemble is built from (its fp32 export, one view) gives its checkpoint's outputs."""
    model = require_real_model()
    weights = json.loads(model.with_suffix(".json").read_text())["weights"]
    runs = [RUNS_DIR / m for m in weights["members"]]
    if not all((run / "model.pt").is_file() and run.with_suffix(".onnx").is_file() for run in runs):
        pytest.skip("no local training checkpoints (run scripts/train-model)")
    x = photos(4)
    for run in runs:
        net, _ = load_checkpoint(run)
        wrapper = ProbabilityModel(referable_net(net), flip_tta=weights["views_per_member"] == 2).eval()
        (onnx_probs,) = evaluate.open_session(run.with_suffix(".onnx")).run(None, {"image": x})
        np.testing.assert_allclose(onnx_probs, torch_probs(wrapper, x), rtol=0, atol=evaluate.PARITY_TOLERANCE)
