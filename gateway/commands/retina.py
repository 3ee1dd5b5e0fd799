"""``gateway triage IMAGE... [--json]``: quality verdict and advisory triage of image files.

IT uses it to check a model on a gateway (or a laptop) without touching the store: nothing is stored or
sent. With ``--json`` the output is JSON Lines, one object per image with the keys ``file``, ``quality``
(``ok``, ``reasons``, ``metrics``), ``referable_probability``, ``decision`` and ``model_version`` (and
``error`` when the file could not be read as an image). Exit status 0 when every file was assessed, 1
when some could not be, 2 when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.commands.common import EXIT_OK, EXIT_PROBLEMS, add_config_argument, config_from
from gateway.config import RetinaSection
from gateway.errors import CaptureError
from gateway.retina.imaging import MIB
from gateway.retina.intake import assess_bytes
from gateway.retina.triage import ADVISORY_NOTE, TriageModel


def register(subparsers: Any) -> None:
    """Add ``triage`` to the ``gateway`` command."""
    parser = subparsers.add_parser(
        "triage",
        help="quality verdict and advisory referable-DR triage of image files (nothing is stored)",
        description=f"Quality gate and triage model on image files. {ADVISORY_NOTE}",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="JPEG, PNG or TIFF files")
    parser.add_argument("--json", action="store_true", help="one JSON object per image (JSON Lines)")
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: retina.model.path)")
    add_config_argument(parser)
    parser.set_defaults(func=run_triage)


def _retina_config(args: argparse.Namespace) -> RetinaSection:
    # A config file is optional here: IT may check a model on a laptop with the default limits.
    return config_from(args).retina if Path(args.config).is_file() else RetinaSection()


def run_triage(args: argparse.Namespace) -> int:
    """Assess every image; print one line (or JSON object) per image."""
    retina = _retina_config(args)
    model = TriageModel(
        args.model or retina.model.path, threads=retina.model.threads, low_memory=retina.model.low_memory
    )
    failures = 0
    for path in args.images:
        row = assess_file(path, model, max_bytes=int(retina.max_image_mb * MIB), max_pixels=retina.max_pixels)
        failures += "error" in row
        print(json.dumps(row) if args.json else _text(row), flush=True)
    if not args.json:
        print(f"({ADVISORY_NOTE})", file=sys.stderr)
    return EXIT_PROBLEMS if failures else EXIT_OK


def assess_file(path: Path, model: TriageModel, *, max_bytes: int, max_pixels: int) -> dict[str, Any]:
    """The ``--json`` object for one file (``error`` instead of a verdict when it is not a usable image)."""
    row: dict[str, Any] = {
        "file": str(path),
        "quality": None,
        "referable_probability": None,
        "decision": None,
        "model_version": model.model_version,
    }
    try:
        data = path.read_bytes()
        found = assess_bytes(data, model, max_bytes=max_bytes, max_pixels=max_pixels)
    except OSError as exc:
        row["error"] = f"cannot read the file: {exc.strerror}"
        return row
    except CaptureError as exc:
        row["error"] = str(exc)
        return row
    row["quality"] = {
        "ok": found.quality.ok,
        "reasons": list(found.quality.reasons),
        "metrics": dict(found.quality.metrics),
    }
    if found.triage is not None:
        row["referable_probability"] = found.triage.referable_probability
        row["decision"] = str(found.triage.decision)
        row["thresholds"] = dict(found.triage.thresholds)
    if found.triage_error is not None:
        row["error"] = found.triage_error
    return row


def _text(row: dict[str, Any]) -> str:
    if row["quality"] is None:
        return f"{row['file']}: ERROR {row.get('error')}"
    quality = row["quality"]
    verdict = "quality OK" if quality["ok"] else f"quality FAILED ({', '.join(quality['reasons'])})"
    p = row["referable_probability"]
    prob = "referable p=n/a" if p is None else f"referable p={p:.3f}"
    refer = row.get("thresholds", {}).get("refer")
    rule = "" if refer is None else f", refer at p>={refer:g}"
    return f"{row['file']}: {verdict}; {prob} -> {row['decision']} (model {row['model_version']}{rule})"
