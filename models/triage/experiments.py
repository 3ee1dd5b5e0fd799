"""Test-time variants for the misses, under the same out-of-fold protocol (torch; fold networks only).

``python -m models.triage.experiments`` scores every photo with the fold network that never saw its patient
(``runs/cv/fold<F>/``), once per variant, and derives each variant's own thresholds and figures exactly as
for the shipped recipe (:func:`models.triage.evaluate.oof_report`):

* ``flip2``: the shipped recipe (image and its mirror, logits averaged);
* ``single``: the image alone;
* ``dihedral8``: the four right-angle rotations of the image and of its mirror (rotation-invariant lesions);
* ``size288`` / ``size320``: the shipped flip pair on a larger input (the networks are fully convolutional;
  small lesions such as microaneurysms cover more pixels).

``--runs models/triage/runs/s320`` scores fold networks *trained* at another size (``train --size 320 --runs
...``) the same way; the card reports both.

Nothing here changes what ships unless the card says so; the output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from gateway.retina import preprocess
from models.triage import evaluate
from models.triage.data import fundus_dir, load_dataset
from models.triage.folds import DEFAULT_K, patient_folds
from models.triage.train import RUNS_DIR, fold_dir, load_checkpoint, referable_net

Views = Callable[[torch.Tensor], list[torch.Tensor]]


def _flip2(x: torch.Tensor) -> list[torch.Tensor]:
    return [x, torch.flip(x, dims=[3])]


def _dihedral8(x: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(v, k, dims=[2, 3]) for v in _flip2(x) for k in range(4)]


VARIANTS: dict[str, tuple[int | None, Views]] = {
    "flip2": (None, _flip2),  # None: the size the networks were trained at
    "single": (None, lambda x: [x]),
    "dihedral8": (None, _dihedral8),
    "size288": (288, _flip2),
    "size320": (320, _flip2),
}


def scores(net: torch.nn.Module, squares: npt.NDArray[np.uint8], size: int, views: Views) -> npt.NDArray[np.float64]:
    """Sigmoid of the mean logit over ``views`` of each preprocessed square."""
    out = []
    with torch.no_grad():
        for start in range(0, len(squares), 16):
            x = torch.from_numpy(
                np.concatenate([preprocess.to_model_input(sq, size) for sq in squares[start : start + 16]])
            )
            logits = torch.stack([net(v)[:, 0] for v in views(x)]).mean(dim=0)
            out.append(torch.sigmoid(logits).double().numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    """Score the OOF photos under every variant; print each variant's OOF figures and misses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    parser.add_argument("--runs", type=Path, default=RUNS_DIR, help="runs directory with cv/fold<F>/ networks")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    data = load_dataset(fundus_dir())
    names = args.variants.split(",")
    probs = {n: np.full(len(data.samples), np.nan) for n in names}
    for f, held in enumerate(patient_folds(data.samples, args.k)):
        trained, cfg = load_checkpoint(fold_dir(args.runs, f))
        net = referable_net(trained).eval()
        for n in names:
            size, views = VARIANTS[n]
            probs[n][held] = scores(net, data.squares[held], size or cfg.size, views)
    result: dict[str, object] = {}
    for n in names:
        rows = evaluate.oof_rows(data.samples, probs[n], args.k)
        evaluate.write_oof(rows, args.runs / f"oof_predictions.{n}.csv")
        report = evaluate.oof_report(rows)
        eye = report["per_eye"]
        misses = report["misses_at_refer"]
        assert isinstance(eye, dict) and isinstance(misses, list)
        result[n] = {
            "auc": report["auc"],
            "auc_ci95": report["auc_ci95_patient_bootstrap"],
            "refer_specificity": eye["refer"]["specificity"],
            "nested_refer": report["nested_refer"],
            "misses": len(misses),
            "misses_by_grade": {g: sum(m["dr_grade"] == g for m in misses) for g in (2, 3, 4)},
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
