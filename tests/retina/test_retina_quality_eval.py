"""Keeps docs/quality-gate.md and the shipped thresholds honest: recalibrate on train, report on valid (slow)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.retina import REPO_ROOT, fundus_dir, require_fundus


@pytest.mark.slow
def test_shipped_thresholds_are_the_calibrated_ones_and_the_doc_matches() -> None:
    require_fundus()
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "quality_eval.py"), "--jobs", "2", "--data", str(fundus_dir())],
        capture_output=True,
        text=True,
        check=True,
        timeout=1200,
    )
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["shipped_equals_calibrated"] is True
    valid = result["valid"]
    assert valid["summary"]["clean_false_reject"] <= 0.05
    doc = (REPO_ROOT / "docs" / "quality-gate.md").read_text(encoding="utf-8")
    assert f"**{valid['kinds']['clean']['rejected']:.1%}**" in doc
    for kind in ("defocus", "motion", "underexposed", "overexposed", "uneven", "vignetting", "jpeg_damage"):
        entry = valid["kinds"][kind]
        assert f"| {kind} | 118 | {entry['rejected']:.1%} | {entry['detected']:.1%}" in doc, kind
