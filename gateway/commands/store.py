"""Store subcommands: ``gateway export``, ``gateway import`` and ``gateway prune``.

``export`` is safe while the daemon runs; ``import`` is for a replacement Pi with the daemon stopped (it
refuses while the daemon holds the store's instance lock, :mod:`gateway.store.instance`);
``prune`` applies the retention policy now instead of waiting for the daemon's next run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.commands.common import EXIT_OK, add_config_argument, config_from, positive_int


def _print(summary: dict[str, Any]) -> None:
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))


def _cmd_export(args: argparse.Namespace) -> int:
    from gateway.services import export_backup

    summary = export_backup(config_from(args), args.to)
    print(f"backup written to {summary.path}")
    _print({"counts": summary.counts, "images": summary.images, "missing_images": summary.missing_images})
    return EXIT_OK


def _cmd_import(args: argparse.Namespace) -> int:
    from gateway.services import import_backup

    summary = import_backup(config_from(args), args.source, force=args.force)
    print(f"backup restored into {summary.path}")
    for path in summary.set_aside:
        print(f"previous store kept as {path}")
    _print({"counts": summary.counts, "images": summary.images})
    return EXIT_OK


def _cmd_prune(args: argparse.Namespace) -> int:
    from gateway.runtime import open_runtime
    from gateway.services import GatewayServices

    services = GatewayServices(open_runtime(config_from(args)))
    try:
        result = services.prune(args.days)
    finally:
        services.close()
    _print(result.as_dict())
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``export``, ``import`` and ``prune`` to the ``gateway`` command."""
    export = subparsers.add_parser(
        "export", help="write a consistent backup of the store (safe while the gateway runs)"
    )
    add_config_argument(export)
    export.add_argument(
        "--to", type=Path, required=True, metavar="PATH", help="new directory, or a file ending .tar or .tar.gz"
    )
    export.set_defaults(func=_cmd_export)

    restore = subparsers.add_parser(
        "import", help="restore a backup into this gateway's store (stop the gateway first)"
    )
    add_config_argument(restore)
    restore.add_argument(
        "--from", dest="source", type=Path, required=True, metavar="PATH", help="backup directory or tar file"
    )
    restore.add_argument(
        "--force", action="store_true", help="replace a store that holds data (the old files are kept, renamed)"
    )
    restore.set_defaults(func=_cmd_import)

    prune_cmd = subparsers.add_parser("prune", help="delete data the platform confirmed, older than retention_days")
    add_config_argument(prune_cmd)
    prune_cmd.add_argument(
        "--days", type=positive_int, default=None, help="override store.retention_days for this run (at least 1)"
    )
    prune_cmd.set_defaults(func=_cmd_prune)
