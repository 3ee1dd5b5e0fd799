"""The retina area's layering: one module opens cameras, one runs the model, the judging code is pure."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gateway.retina import quality

PACKAGE = Path(__file__).resolve().parents[2] / "gateway"
PURE = ("retina/imaging.py", "retina/quality.py", "wire/chunks.py")
IO_MODULES = {"os", "socket", "subprocess", "sqlite3", "sqlite_utils", "onnxruntime", "paho", "flask", "threading"}


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_only_source_opens_cameras() -> None:
    users = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "VideoCapture(" in p.read_text(encoding="utf-8")
    )
    assert users == ["retina/source.py"]


def test_pure_modules_do_no_io() -> None:
    for rel in PURE:
        bad = imported(PACKAGE / rel) & IO_MODULES
        assert not bad, f"{rel} imports {sorted(bad)}"


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 96), st.integers(1, 96), st.just(3))))
def test_any_image_array_gets_a_verdict(image: np.ndarray) -> None:
    verdict = quality.assess(image)
    assert verdict.ok or (verdict.reasons and set(verdict.reasons) <= set(quality.REASONS))
