"""Export the trained networks, derive the OOF predictions and thresholds, write the shipped files.

Reads ``runs/cv/fold<F>/`` (the cross-validation networks written by ``train.py``) and writes:

* ``runs/cv/fold<F>.onnx`` and ``runs/cv/fold<F>.int8.onnx``: each fold network's fp32 ONNX export and its
  static int8 version, calibrated on photos of that fold's *training* patients only (:mod:`quantize`);
* ``runs/oof_predictions.fp32.csv`` / ``runs/oof_predictions.int8.csv``: every photo scored by the fold
  network (fp32 / int8) that never saw its patient, through ``gateway.retina.preprocess.prepare_input``;

and next to this file:

* ``referable_dr.onnx``: the **ensemble** of the fold networks in one graph (:mod:`ensemble`: mean of their
  logits, then sigmoid); the int8 members when int8 is no worse than fp32 at the "refer" operating point
  under the OOF protocol (:func:`quantize.int8_no_worse`), else the fp32 members (refused above 20 MB).
  Input ``image`` float32 ``(N, 3, S, S)``, output ``referable_probability`` float32 ``(N, 1)``;
* ``oof_predictions.csv``: the OOF predictions of the shipped variant's fold networks (ids and numbers, no
  pixels), from which the thresholds and every published figure come (``evaluate.py --check``);
* ``referable_dr.json``: the sidecar ``gateway model install`` checks: version, SHA-256, input contract,
  thresholds, validation summary, the ensemble and int8 decision, and the full OOF report;
* ``reference_outputs.json``: the shipped file's onnxruntime probabilities for a few photos plus a
  checksum of each preprocessed tensor (a test without torch re-checks file and preprocessing).

``--ship final`` ships the refit on all photos (``runs/final/``, fp32) instead; see MODEL_CARD.md for why
the ensemble ships. Everything here is deterministic given the checkpoints.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from gateway.retina import preprocess
from models.triage import ensemble, evaluate, quantize
from models.triage.data import Sample, fundus_dir, read_bgr, read_labels
from models.triage.folds import DEFAULT_K, patient_folds
from models.triage.model import ProbabilityModel
from models.triage.train import RUNS_DIR, TrainConfig, fold_dir, load_checkpoint, referable_net

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "referable_dr.onnx"
SIDECAR_PATH = HERE / "referable_dr.json"
REFERENCE_PATH = HERE / "reference_outputs.json"
MODEL_VERSION = "referable-dr-lite0x3-int8-2026.12.1"
OPSET = 17
N_REFERENCE = 16
MAX_BYTES = 20 * 1024 * 1024
# Views per member: the image and its mirror (logits averaged). One view halves the model time, but its int8
# members failed the int8 rule and its fp32 ensemble is 39 MiB (MODEL_CARD.md, "What was tried").
VIEWS = 2


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


def export_run(run: Path, path: Path, views: int = VIEWS) -> TrainConfig:
    """Export the network saved in ``run`` to ``path`` (``views``: 1 image, 2 image and mirror); return its config."""
    net, cfg = load_checkpoint(run)
    export_onnx(ProbabilityModel(referable_net(net), flip_tta=views == 2).eval(), cfg.size, path)
    return cfg


def score_oof(members: Sequence[Path], samples: Sequence[Sample], data_dir: Path, size: int) -> list[evaluate.OofRow]:
    """Score every photo with the member (fold network) that held its patient out."""
    k = len(members)
    probs = np.full(len(samples), np.nan)
    for f, held in enumerate(patient_folds(samples, k)):
        session = evaluate.open_session(members[f])
        probs[held] = evaluate.score_files(session, data_dir, [samples[i].file for i in held], size)
    assert not np.isnan(probs).any(), "every photo is in exactly one fold"
    return evaluate.oof_rows(samples, probs, k)


def reference_outputs(onnx_path: Path, size: int, data_dir: Path) -> dict[str, object]:
    """The shipped file's probabilities and input checksums for the first :data:`N_REFERENCE` valid photos."""
    files = [s.file for s in read_labels(data_dir) if s.split == "valid"][:N_REFERENCE]
    session = evaluate.open_session(onnx_path)
    entries: dict[str, dict[str, object]] = {}
    for name in files:
        x = preprocess.prepare_input(read_bgr(data_dir / name), size)
        (prob,) = session.run(["referable_probability"], {"image": x})
        entries[name] = {"probability": float(prob[0, 0]), "input_sha256": evaluate.tensor_sha256(x)}
    return {
        "input_size": size,
        "tolerance_abs": evaluate.REFERENCE_TOLERANCE,
        "note": "onnxruntime outputs of the shipped file on the shared photos at export; pixels are not stored",
        "images": entries,
    }


def build_sidecar(
    cfg: TrainConfig, onnx: Path, report: dict[str, object], weights: dict[str, object]
) -> dict[str, object]:
    """The ``referable_dr.json`` contents: what ``gateway model install`` checks, and the OOF report."""
    return {
        "model_version": MODEL_VERSION,
        "sha256": evaluate.file_sha256(onnx),
        "input_size": cfg.size,
        "input": "image",
        "output": "referable_probability",
        "input_contract": {"name": "image", "shape": ["batch", 3, cfg.size, cfg.size], "dtype": "float32"},
        "preprocessing": "gateway.retina.preprocess.prepare_input",
        "thresholds": report["thresholds"],
        "validation": evaluate.validation_summary(report),
        "trained_on": {
            "dataset": "SRahimDR DR-image-dataset (Rahim S. S., 2025), all 478 developer photos (train+valid)",
            "split": "thresholds and figures: out-of-fold predictions of a patient-grouped cross-validation "
            "(see metrics.protocol); they estimate the training procedure, the shipped weights were not "
            "scored on held-out patients",
            "licence": "academic, non-commercial use with attribution",
            "label": "referable = ICDR grade >= 2",
        },
        "training_config": asdict(cfg),
        "weights": weights,
        "metrics": report,
    }


def export_folds(runs: Path, k: int) -> tuple[list[Path], TrainConfig]:
    """Export every fold network to ``runs/cv/fold<F>.onnx``; return the paths and the (shared) config."""
    paths = [fold_dir(runs, f).with_suffix(".onnx") for f in range(k)]
    configs = [export_run(fold_dir(runs, f), path) for f, path in enumerate(paths)]
    return paths, configs[0]


def ship_ensemble(runs: Path, k: int, data_dir: Path) -> tuple[TrainConfig, list[evaluate.OofRow], dict[str, object]]:
    """Fold exports, int8 members, both OOF sets, the int8 decision and the merged ``referable_dr.onnx``."""
    samples = read_labels(data_dir)
    fp32, cfg = export_folds(runs, k)
    int8 = quantize.quantise_folds(fp32, samples, data_dir, cfg.size)
    rows = {"fp32": score_oof(fp32, samples, data_dir, cfg.size), "int8": score_oof(int8, samples, data_dir, cfg.size)}
    for name, variant_rows in rows.items():
        evaluate.write_oof(variant_rows, runs / f"oof_predictions.{name}.csv")
    points = {name: quantize.refer_point(evaluate.oof_report(r)) for name, r in rows.items()}
    shipped = "int8" if quantize.int8_no_worse(points["fp32"], points["int8"]) else "fp32"
    ensemble.build(int8 if shipped == "int8" else fp32, ONNX_PATH)
    if ONNX_PATH.stat().st_size > MAX_BYTES:
        raise SystemExit(f"export: the {shipped} ensemble is {ONNX_PATH.stat().st_size} bytes, over {MAX_BYTES}")
    weights = {
        "kind": "ensemble",
        "members": [f"cv/fold{f}" for f in range(k)],
        "combine": "mean of the members' logits, then sigmoid (one ONNX graph)",
        "views_per_member": VIEWS,
        "precision": shipped,
        "int8_rule": "int8 ships if, under the OOF protocol, its specificity at its own refer threshold and its "
        "nested refer sensitivity are both no lower than fp32's",
        "refer_point": points,
    }
    return cfg, rows[shipped], weights


def ship_refit(runs: Path, k: int, data_dir: Path) -> tuple[TrainConfig, list[evaluate.OofRow], dict[str, object]]:
    """The refit network (``runs/final/``, fp32) with the fp32 fold networks' OOF predictions."""
    samples = read_labels(data_dir)
    fp32, cfg = export_folds(runs, k)
    export_run(runs / "final", ONNX_PATH)
    weights = {"kind": "refit", "run": "final", "views_per_member": VIEWS, "precision": "fp32"}
    return cfg, score_oof(fp32, samples, data_dir, cfg.size), weights


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m models.triage.export [--ship ensemble|final]``; prints the OOF report as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=RUNS_DIR)
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    parser.add_argument("--ship", choices=("ensemble", "final"), default="ensemble")
    args = parser.parse_args(argv)
    data_dir = fundus_dir()
    ship = ship_ensemble if args.ship == "ensemble" else ship_refit
    cfg, rows, weights = ship(args.runs, args.k, data_dir)
    evaluate.write_oof(rows, evaluate.DEFAULT_OOF)
    report = evaluate.oof_report(evaluate.read_oof(evaluate.DEFAULT_OOF))  # exactly what --check re-derives
    REFERENCE_PATH.write_text(json.dumps(reference_outputs(ONNX_PATH, cfg.size, data_dir), indent=1) + "\n")
    SIDECAR_PATH.write_text(json.dumps(build_sidecar(cfg, ONNX_PATH, report, weights), indent=2) + "\n")
    print(json.dumps({"onnx": str(ONNX_PATH), "bytes": ONNX_PATH.stat().st_size, **report}, indent=1))


if __name__ == "__main__":
    main()
