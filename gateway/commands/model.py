"""``gateway model validate | install | rollback | list``: triage models as managed artefacts.

- ``validate --images DIR --labels CSV [--model FILE] [--out DIR]``: the hospital's own graded photos through
  the gateway's quality gate, preprocessing and model; writes ``report.html`` and ``report.json`` and suggests
  thresholds for that population (:mod:`gateway.retina.validation`).
- ``install FILE [--sidecar JSON] [--signature SIG]``: check the model against its sidecar (SHA-256, input
  contract, thresholds, validation summary) and, with ``retina.model.signing_key_file``, its Ed25519
  signature; copy it under the state directory and make it active. The running daemon switches to it within
  ``retina.model.watch_interval_s``, between captures. A refused model changes nothing.
- ``rollback``: the previous model becomes active again. ``list [--json]``: the kept models.

Exit status: 0 done, 1 refused (the reason is printed), 2 configuration or usage problems.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.commands.common import EXIT_OK, EXIT_PROBLEMS, add_config_argument, config_from
from gateway.config import GatewayConfig
from gateway.errors import ModelRefused
from gateway.retina.imaging import MIB
from gateway.retina.model_store import (
    Candidate,
    InstalledModel,
    ModelStore,
    describe_validation,
    model_path,
    model_root,
)
from gateway.retina.triage import TriageModel
from gateway.retina.validation import validate


def register(subparsers: Any) -> None:
    """Add ``model`` and its subcommands to the ``gateway`` command."""
    parser = subparsers.add_parser("model", help="validate, install, roll back and list triage models")
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("validate", help="validate a model on your own graded photos (HTML + JSON report)")
    p.add_argument("--images", type=Path, required=True, help="folder of the photos")
    p.add_argument("--labels", type=Path, required=True, help="CSV: file, eye, patient, grade (0-4) or referable")
    p.add_argument("--model", type=Path, default=None, help="ONNX model (default: the one the daemon runs)")
    p.add_argument("--out", type=Path, default=Path("model-validation"), help="report folder (default: %(default)s)")
    add_config_argument(p)
    p.set_defaults(func=run_validate)

    p = sub.add_parser("install", help="check a model against its sidecar (and signature) and make it active")
    p.add_argument("file", type=Path, metavar="FILE", help="the .onnx file")
    p.add_argument("--sidecar", type=Path, default=None, help="its JSON description (default: FILE with .json)")
    p.add_argument("--signature", type=Path, default=None, help="detached signature (default: SIDECAR.sig)")
    add_config_argument(p)
    p.set_defaults(func=run_install)

    p = sub.add_parser("rollback", help="make the previous model active again")
    add_config_argument(p)
    p.set_defaults(func=run_rollback)

    p = sub.add_parser("list", help="the installed models (active first)")
    p.add_argument("--json", action="store_true", help="one JSON array")
    add_config_argument(p)
    p.set_defaults(func=run_list)


def _store(config: GatewayConfig) -> ModelStore:
    return ModelStore(model_root(config.gateway.state_dir), signing_key=config.retina.model.signing_key_file)


def _line(entry: InstalledModel) -> str:
    flag = "active  " if entry.active else ("previous" if entry.previous else "        ")
    signed = "signed" if entry.signature_verified else "unsigned"
    return (
        f"{flag} {entry.model_version}  sha256 {entry.sha256[:12]}  installed {entry.installed_at}  {signed}\n"
        f"         {describe_validation(entry.validation)}"
    )


def run_validate(args: argparse.Namespace) -> int:
    """Validate a model on labelled photos and write the report."""
    config = config_from(args) if Path(args.config).is_file() else None
    retina = config.retina if config is not None else None
    path = args.model
    if path is None and config is not None:
        path = model_path(config.retina.model.path, _store(config))
    model = TriageModel(path, threads=retina.model.threads if retina else 1)
    limits = {} if retina is None else {"max_bytes": int(retina.max_image_mb * MIB), "max_pixels": retina.max_pixels}
    report = validate(args.images, args.labels, model, args.out, **limits)
    counts = report["counts"]
    print(f"{report['images']} photos: {counts['scored']} scored, {counts['ungradable']} ungradable, "
          f"{counts['unreadable']} unreadable; report in {args.out}/report.html")  # fmt: skip
    if "at_model_thresholds" in report:
        figures = report["at_model_thresholds"]
        refer = figures["per_eye"]["refer"]
        print(f"AUC {figures['auc']} {figures['auc_ci95_patient_bootstrap']}; at refer: sensitivity "
              f"{refer['sensitivity']}, specificity {refer['specificity']}")  # fmt: skip
        suggested = report["suggested_thresholds"].get("thresholds")
        if suggested:
            print(f"suggested thresholds for these photos: {json.dumps(suggested)}")
    else:
        print(report["problem"], file=sys.stderr)
        return EXIT_PROBLEMS
    return EXIT_OK


def run_install(args: argparse.Namespace) -> int:
    """Install a model; print the reason and exit 1 when it is refused."""
    store = _store(config_from(args))
    try:
        entry = store.install(Candidate.beside(args.file, args.sidecar, args.signature))
    except ModelRefused as exc:
        print(f"gateway: model not installed ({exc.reason}): {exc.detail}; the active model is unchanged",
              file=sys.stderr)  # fmt: skip
        return EXIT_PROBLEMS
    print(_line(entry))
    return EXIT_OK


def run_rollback(args: argparse.Namespace) -> int:
    """Make the previous model active again."""
    store = _store(config_from(args))
    try:
        entry = store.rollback()
    except ModelRefused as exc:
        print(f"gateway: no rollback ({exc.reason}): {exc.detail}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(_line(entry))
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Print the installed models."""
    entries = _store(config_from(args)).installed()
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=1))
    elif not entries:
        print("no installed models: the daemon runs retina.model.path or the shipped model")
    for entry in [] if args.json else entries:
        print(_line(entry))
    return EXIT_OK
