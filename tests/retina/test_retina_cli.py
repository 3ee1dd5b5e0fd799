"""``gateway triage IMAGE... [--json]``: per image verdict, probability, decision, model version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.retina import build_tiny_model, fundus_jpeg

from gateway.cli import main


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.jpg"
    good.write_bytes(fundus_jpeg(seed=2))
    dark = tmp_path / "dark.png"
    import cv2
    from support.degrade import degrade

    from gateway.emulate.camera import synthetic_fundus

    cv2.imwrite(str(dark), degrade("underexposed", synthetic_fundus(3), seed=3))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(fundus_jpeg(seed=4)[:4000])
    return {"good": good, "dark": dark, "cut": cut, "missing": tmp_path / "missing.jpg"}


def test_json_lines_one_object_per_image(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_tiny_model(tmp_path / "m.onnx")
    args = ["triage", "--json", "--model", str(model), "-c", str(tmp_path / "none.toml")]
    code = main([*args, *(str(files[k]) for k in ("good", "dark", "cut", "missing"))])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # two files could not be assessed
    assert [Path(r["file"]).name for r in rows] == ["good.jpg", "dark.png", "cut.jpg", "missing.jpg"]
    good, dark, cut, missing = rows
    for row in rows:
        assert {"file", "quality", "referable_probability", "decision", "model_version"} <= set(row)
        assert row["model_version"] == "tiny-test-1"
    assert good["quality"]["ok"] is True and good["decision"] in ("refer", "rescreen")
    assert 0.0 <= good["referable_probability"] <= 1.0
    assert dark["quality"]["ok"] is False and "too_dark" in dark["quality"]["reasons"]
    assert dark["decision"] == "ungradable" and dark["referable_probability"] is None
    assert cut["quality"] is None and "truncated" in cut["error"]
    assert missing["quality"] is None and "cannot read" in missing["error"]


def test_text_output(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model = build_tiny_model(tmp_path / "m.onnx")
    code = main(["triage", "--model", str(model), "-c", str(tmp_path / "none.toml"), str(files["good"])])
    out = capsys.readouterr()
    assert code == 0
    assert "good.jpg: quality OK; referable p=" in out.out and "model tiny-test-1, refer at p>=0.5" in out.out
    assert "not a diagnosis" in out.err


def test_missing_model_exits_2(tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["triage", "--model", str(tmp_path / "nope.onnx"), "-c", str(tmp_path / "none.toml"), str(files["good"])]
    )
    assert code == 2 and "ModelError" in capsys.readouterr().err
