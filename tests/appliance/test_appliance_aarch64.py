"""Every runtime dependency resolves to binary wheels for Raspberry Pi OS 64-bit (needs PyPI: slow only)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_runtime_dependencies_have_aarch64_wheels() -> None:
    proc = subprocess.run(
        [str(REPO / "scripts" / "check-aarch64")], capture_output=True, text=True, timeout=900, cwd=REPO
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    print(summary)
    assert proc.returncode == 0 and summary["ok"] is True, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["aarch64_wheels"] >= 4  # numpy, opencv, onnxruntime, pydantic-core at least
