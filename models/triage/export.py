"""Export the trained networks, derive the OOF predictions and thresholds, write the shipped files.

Reads ``runs/cv/fold<F>/`` (the cross-validation networks) and ``runs/final/`` (the refit on all
photos) written by ``train.py``, and writes next to this file:

* ``oof_predictions.csv``: each photo scored by the fold network that never saw its patient, through the
  fold's ONNX export and ``gateway.retina.preprocess.prepare_input`` (ids and numbers, no pixels);
* ``referable_dr.onnx``: the refit network; input ``image`` float32 ``(N, 3, S, S)``, output
  ``referable_probability`` float32 ``(N, 1)`` (sigmoid applied; flip test-time augmentation inside);
* ``referable_dr.json``: the sidecar a gateway installs the model with (``gateway model install``):
  version, SHA-256 of the ONNX file, input contract, thresholds chosen on the OOF predictions, the
  validation summary, and the full OOF report (``evaluate.py --check`` re-derives it);
* ``reference_outputs.json``: torch probabilities of the refit network for a few photos plus a checksum of
  each preprocessed tensor, so that a test without torch can check the ONNX file and the preprocessing.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from gateway.retina import preprocess
from models.triage import evaluate
from models.triage.data import fundus_dir, read_bgr, read_labels
from models.triage.folds import DEFAULT_K, patient_folds
from models.triage.model import ProbabilityModel
from models.triage.train import RUNS_DIR, TrainConfig, fold_dir, load_checkpoint, referable_net

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "referable_dr.onnx"
SIDECAR_PATH = HERE / "referable_dr.json"
REFERENCE_PATH = HERE / "reference_outputs.json"
MODEL_VERSION = "referable-dr-lite0-2026.12.0"
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


def export_run(run: Path, path: Path) -> tuple[ProbabilityModel, TrainConfig]:
    """Export the network saved in ``run`` to ``path``; return its torch wrapper and config."""
    net, cfg = load_checkpoint(run)
    wrapper = ProbabilityModel(referable_net(net), flip_tta=cfg.flip_tta).eval()
    export_onnx(wrapper, cfg.size, path)
    return wrapper, cfg


def oof_predictions(runs: Path, data_dir: Path, k: int = DEFAULT_K) -> list[evaluate.OofRow]:
    """Score every photo with the ONNX export of the fold network that held its patient out."""
    samples = read_labels(data_dir)
    probs = np.full(len(samples), np.nan)
    for f, held in enumerate(patient_folds(samples, k)):
        onnx = fold_dir(runs, f).with_suffix(".onnx")
        _, cfg = export_run(fold_dir(runs, f), onnx)
        session = evaluate.open_session(onnx)
        probs[held] = evaluate.score_files(session, data_dir, [samples[i].file for i in held], cfg.size)
    assert not np.isnan(probs).any(), "every photo is in exactly one fold"
    return evaluate.oof_rows(samples, probs, k)


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
        "note": "torch (training framework) outputs on the shared photos; pixels are not stored",
        "images": entries,
    }


def weights_note(ship: str) -> str:
    """What the shipped weights were trained on, for the sidecar."""
    if ship == "final":
        return "refit on all 478 photos / 239 patients with the cross-validation recipe"
    return (f"the network of cross-validation {ship.replace('cv/', '')} (trained on the other folds' photos), chosen "
            "before any result was seen; its held-out patients' OOF scores are its own")  # fmt: skip


def build_sidecar(cfg: TrainConfig, onnx: Path, report: dict[str, object], ship: str = "final") -> dict[str, object]:
    """The ``referable_dr.json`` contents: what ``gateway model install`` checks, and the OOF report."""
    thresholds = report["thresholds"]
    return {
        "model_version": MODEL_VERSION,
        "sha256": evaluate.file_sha256(onnx),
        "input_size": cfg.size,
        "input": "image",
        "output": "referable_probability",
        "input_contract": {"name": "image", "shape": ["batch", 3, cfg.size, cfg.size], "dtype": "float32"},
        "preprocessing": "gateway.retina.preprocess.prepare_input",
        "thresholds": thresholds,
        "validation": evaluate.validation_summary(report),
        "trained_on": {
            "dataset": "SRahimDR DR-image-dataset (Rahim S. S., 2025), all 478 developer photos (train+valid)",
            "split": f"weights: {weights_note(ship)}; thresholds and figures: out-of-fold predictions of a "
            "patient-grouped cross-validation with the same recipe (see metrics.protocol)",
            "licence": "academic, non-commercial use with attribution",
            "label": "referable = ICDR grade >= 2",
        },
        "training_config": asdict(cfg),
        "weights_run": ship,
        "metrics": report,
    }


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m models.triage.export [--runs DIR]``; prints the OOF report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS_DIR)
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    parser.add_argument("--ship", default="final", help="run to ship, under --runs: final (refit) or cv/fold<F>")
    args = parser.parse_args(argv)
    data_dir = fundus_dir()
    rows = oof_predictions(args.runs, data_dir, args.k)
    evaluate.write_oof(rows, evaluate.DEFAULT_OOF)
    report = evaluate.oof_report(evaluate.read_oof(evaluate.DEFAULT_OOF))  # exactly what --check re-derives
    wrapper, cfg = export_run(args.runs / args.ship, ONNX_PATH)
    REFERENCE_PATH.write_text(json.dumps(reference_outputs(wrapper, cfg.size, data_dir), indent=1) + "\n")
    SIDECAR_PATH.write_text(json.dumps(build_sidecar(cfg, ONNX_PATH, report, args.ship), indent=2) + "\n")
    print(json.dumps({"onnx": str(ONNX_PATH), "bytes": ONNX_PATH.stat().st_size, **report}, indent=1))


if __name__ == "__main__":
    main()
