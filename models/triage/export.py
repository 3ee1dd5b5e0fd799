"""Export a trained checkpoint to ONNX, choose the thresholds on valid and write the sidecar files.

Writes, next to this file:

* ``referable_dr.onnx``: input ``image`` float32 ``(N, 3, S, S)``, output ``referable_probability``
  float32 ``(N, 1)`` (sigmoid applied; flip test-time augmentation inside the graph when enabled);
* ``referable_dr.json``: version, input size, thresholds and valid metrics (from :mod:`evaluate`,
  i.e. from the ONNX file itself, through ``gateway.retina.preprocess``);
* ``reference_outputs.json``: torch probabilities for a few valid photos plus a checksum of each
  preprocessed tensor, so that a test without torch can check the ONNX file and the preprocessing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from gateway.retina import preprocess
from models.triage import evaluate
from models.triage.data import fundus_dir, read_bgr, read_labels
from models.triage.model import ProbabilityModel
from models.triage.train import RUNS_DIR, TrainConfig, load_checkpoint, referable_net

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "referable_dr.onnx"
SIDECAR_PATH = HERE / "referable_dr.json"
REFERENCE_PATH = HERE / "reference_outputs.json"
MODEL_VERSION = "referable-dr-lite0-2026.11.0"
OPSET = 17
N_REFERENCE = 16


def export_onnx(wrapper: ProbabilityModel, size: int, path: Path) -> None:
    """Export ``wrapper`` with a dynamic batch axis (TorchScript-based exporter, opset 17, one file)."""
    wrapper.eval()
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["referable_probability"],
        dynamic_axes={"image": {0: "batch"}, "referable_probability": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )


def reference_outputs(wrapper: ProbabilityModel, size: int, data_dir: Path) -> dict[str, object]:
    """Torch probabilities and input checksums for the first :data:`N_REFERENCE` valid photos."""
    files = [s.file for s in read_labels(data_dir) if s.split == "valid"][:N_REFERENCE]
    entries: dict[str, dict[str, object]] = {}
    with torch.no_grad():
        for name in files:
            x = preprocess.prepare_input(read_bgr(data_dir / name), size)
            prob = float(wrapper(torch.from_numpy(x))[0, 0])
            entries[name] = {"probability": prob, "input_sha256": evaluate.tensor_sha256(x)}
    return {
        "input_size": size,
        "tolerance_abs": evaluate.PARITY_TOLERANCE,
        "note": "torch (training framework) outputs on the shared valid photos; pixels are not stored",
        "images": entries,
    }


def build_sidecar(cfg: TrainConfig, result: evaluate.Evaluation) -> dict[str, object]:
    """The ``referable_dr.json`` contents for a model evaluated on valid."""
    return {
        "model_version": MODEL_VERSION,
        "input_size": cfg.size,
        "input": "image",
        "output": "referable_probability",
        "preprocessing": "gateway.retina.preprocess.prepare_input",
        "thresholds": {"refer": result.refer.threshold, "high_specificity": result.high_spec.threshold},
        "trained_on": {
            "dataset": "SRahimDR DR-image-dataset (Rahim S. S., 2025), developer split",
            "split": "train (360 images, 180 patients); thresholds chosen on valid (118 images, 59 patients)",
            "licence": "academic, non-commercial use with attribution",
            "label": "referable = ICDR grade >= 2",
        },
        "training_config": asdict(cfg),
        "metrics": result.as_dict(),
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m models.triage.export [--run DIR]``; prints the valid metrics as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=RUNS_DIR / "final")
    args = parser.parse_args(argv)
    net, cfg = load_checkpoint(args.run)
    wrapper = ProbabilityModel(referable_net(net), flip_tta=cfg.flip_tta).eval()
    export_onnx(wrapper, cfg.size, ONNX_PATH)
    data_dir = fundus_dir()
    result = evaluate.evaluate(ONNX_PATH, data_dir, cfg.size)
    REFERENCE_PATH.write_text(json.dumps(reference_outputs(wrapper, cfg.size, data_dir), indent=1) + "\n")
    SIDECAR_PATH.write_text(json.dumps(build_sidecar(cfg, result), indent=2) + "\n")
    print(json.dumps({"onnx": str(ONNX_PATH), "bytes": ONNX_PATH.stat().st_size, **result.as_dict()}, indent=1))


if __name__ == "__main__":
    main()
