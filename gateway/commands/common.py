"""What every subcommand shares: exit codes and the ``-c/--config FILE`` option."""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.clock import clinic_time
from gateway.config import GatewayConfig, load_config
from gateway.logs import setup_logging

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2

DEFAULT_CONFIG = Path(os.environ.get("CG_CONFIG", "/etc/clinic-gateway/gateway.toml"))


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The common ``-c/--config FILE`` option."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"config file (default: $CG_CONFIG or {DEFAULT_CONFIG})",
    )


def config_from(args: argparse.Namespace) -> GatewayConfig:
    """Load the config named by ``args.config`` (raises ConfigError)."""
    config = load_config(args.config)
    setup_logging(config.logging.level, config.logging.format)
    return config


def local_time(config: GatewayConfig, value: str | datetime | None, empty: str = "-") -> str:
    """A stored time as people at the clinic read it, in every command's text output: ``2026-11-23 10:40 UTC+8``
    in ``gateway.timezone``, labelled (:func:`gateway.clock.clinic_time`, the pages' helper too). ``--json``
    output keeps the stored ISO 8601 text."""
    return clinic_time(value, ZoneInfo(config.gateway.timezone), empty=empty)
