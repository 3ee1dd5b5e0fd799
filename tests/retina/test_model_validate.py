"""``gateway model validate``: a hospital's graded photos through the gateway's gate, preprocessing and model.

The report's figures must equal what the model's developers compute (``models/triage/evaluate.py``) on the same
photos: both go through ``gateway.retina.metrics``, and this checks the whole path (CSV, decode, gate, model).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.degrade import degrade
from support.retina import build_tiny_model, fundus_jpeg, require_fundus, require_real_model

from gateway.cli import main
from gateway.emulate.camera import synthetic_fundus
from gateway.errors import LabelsError
from gateway.retina import metrics, quality
from gateway.retina.validation import read_labels
from models.triage import evaluate
from models.triage.data import Sample, read_bgr
from models.triage.data import read_labels as read_dev_labels


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def validate(tmp_path: Path, images: Path, labels: Path, model: Path) -> tuple[int, dict, str]:
    out = tmp_path / "report"
    code = main(["model", "validate", "--images", str(images), "--labels", str(labels), "--model", str(model),
                 "--out", str(out), "-c", str(tmp_path / "none.toml")])  # fmt: skip
    return code, json.loads((out / "report.json").read_text()), (out / "report.html").read_text()


def same_as_evaluate(report: dict, model: Path, images: Path, samples: list[Sample]) -> None:
    sidecar = json.loads(model.with_suffix(".json").read_text())
    thresholds = {k: sidecar["thresholds"][k] for k in ("refer", "high_specificity")}
    expected = evaluate.evaluate_files(model, images, samples, sidecar["input_size"], thresholds)
    assert evaluate.differences(expected, report["at_model_thresholds"]) == []
    probs = evaluate.score_files(evaluate.open_session(model), images, [s.file for s in samples], sidecar["input_size"])
    suggested = metrics.choose_thresholds([s.referable for s in samples], probs)
    assert evaluate.differences(suggested, report["suggested_thresholds"]["thresholds"]) == []


def test_synthetic_set_equals_evaluate_and_reports_ungradable(tmp_path: Path) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    rows, samples = [], []
    for p in range(12):
        for eye in "LR":
            name = f"pat{p:02d}_{eye}.jpg"
            (images / name).write_bytes(fundus_jpeg(seed=100 + 2 * p + (eye == "R"), eye=eye))
            grade = (p * 7 + (eye == "R")) % 5
            rows.append({"file": name, "eye": eye, "patient": f"H-{p:03d}", "grade": grade})
            samples.append(Sample(name, "local", f"H-{p:03d}", grade, int(grade >= 2)))
    cv2.imwrite(str(images / "dark.png"), degrade("underexposed", synthetic_fundus(3), seed=3))
    rows.append({"file": "dark.png", "eye": "L", "patient": "H-900", "grade": 3})
    rows.append({"file": "missing.jpg", "eye": "R", "patient": "H-900", "grade": 0})
    model = build_tiny_model(tmp_path / "tiny.onnx", thresholds={"refer": 0.6, "high_specificity": 0.7})
    code, report, html = validate(tmp_path, images, write_csv(tmp_path / "labels.csv", rows), model)
    assert code == 0
    assert report["counts"] == {"scored": 24, "ungradable": 1, "unreadable": 1}
    assert report["ungradable_share"] == pytest.approx(1 / 25, abs=1e-4) and "too_dark" in report["ungradable_reasons"]
    same_as_evaluate(report, model, images, samples)
    per_patient = report["at_model_thresholds"]["per_patient"]["refer"]
    assert per_patient["tp"] + per_patient["fn"] == report["at_model_thresholds"]["n_referable_patients"]
    # self-contained page: inline SVG ROC, no script, no network; no file names or patient ids
    assert (
        "<svg" in html
        and "<polyline" in html
        and "<script" not in html
        and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    for text in (html, json.dumps(report)):
        assert "pat00" not in text and "H-00" not in text and "missing.jpg" not in text


def test_real_photos_equal_evaluate(tmp_path: Path) -> None:
    model = require_real_model()
    folder = require_fundus()
    chosen = [s for s in read_dev_labels(folder) if s.split == "valid"][:40]
    gradable = [s for s in chosen if quality.assess(read_bgr(folder / s.file)).ok]
    assert len({s.referable for s in gradable}) == 2
    rows = [{"file": s.file, "eye": s.file[-5], "patient": s.patient_id, "grade": s.dr_grade} for s in gradable]
    code, report, _ = validate(tmp_path, folder, write_csv(tmp_path / "labels.csv", rows), model)
    assert code == 0 and report["counts"]["scored"] == len(gradable)
    same_as_evaluate(report, model, folder, gradable)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("file,eye\na.jpg,L\n", 0, "patient"),
        ("file,eye,patient,grade\na.jpg,L,P1,7\n", 2, "grade"),
        ("file,eye,patient,referable\na.jpg,L,P1,maybe\n", 2, "referable"),
    ],
)
def test_bad_labels_name_the_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelsError) as err:
        read_labels(path)
    assert err.value.line == line and problem in err.value.problem


def test_labels_accept_grade_or_referable(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffFile,Eye,Patient,Grade,Referable\na.jpg,l,P1,1,\nb.jpg,R,P1,,yes\n")
    a, b = read_labels(path)
    assert (a.grade, a.referable, a.eye) == (1, False, "L") and (b.grade, b.referable) == (None, True)
    assert np.isclose(metrics.roc_auc([0, 1], [0.2, 0.8]), 1.0)
