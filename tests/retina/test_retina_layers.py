"""The retina area's layering: one module opens cameras, one runs the model, the judging code is pure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from support import degrade
from support.imports import gateway_modules, scan_file

from gateway.retina import quality

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
PURE = ("gateway.retina.imaging", "gateway.retina.quality", "gateway.wire.chunks")
IO_MODULES = {"os", "socket", "subprocess", "sqlite3", "sqlite_utils", "onnxruntime", "paho", "flask", "threading"}


def test_only_source_opens_cameras() -> None:
    users = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "VideoCapture(" in p.read_text(encoding="utf-8")
    )
    assert users == ["retina/source.py"]


def test_pure_modules_do_no_io() -> None:
    """Lazy, TYPE_CHECKING and importlib imports count (the shared walker, tests/support/imports.py)."""
    modules = gateway_modules()
    for name in PURE:
        bad = modules[name].roots() & IO_MODULES
        assert not bad, f"{name} imports {sorted(bad)}"
    bad = scan_file(Path(degrade.__file__)).roots() & IO_MODULES  # the calibration generator (test support)
    assert not bad, f"support/degrade.py imports {sorted(bad)}"


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 96), st.integers(1, 96), st.just(3))))
def test_any_image_array_gets_a_verdict(image: np.ndarray) -> None:
    verdict = quality.assess(image)
    assert verdict.ok or (verdict.reasons and set(verdict.reasons) <= set(quality.REASONS))
