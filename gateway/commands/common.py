"""What every subcommand shares: exit codes and the ``-c/--config FILE`` option."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.logs import setup_logging

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_ERROR = 2

DEFAULT_CONFIG = Path(os.environ.get("CG_CONFIG", "/etc/clinic-gateway/gateway.toml"))


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
