"""``gateway config check FILE [--user NAME]``: validate a config file, listing every problem by key path."""

from __future__ import annotations

import argparse
import pwd
from pathlib import Path
from typing import Any

from gateway.commands.common import EXIT_OK, EXIT_PROBLEMS
from gateway.config import load_config
from gateway.errors import ConfigError


def _cmd_config_check(args: argparse.Namespace) -> int:
    reader_uid = None
    if args.user is not None:
        try:
            reader_uid = pwd.getpwnam(args.user).pw_uid
        except KeyError:
            print(f"{args.file}: --user: no such user {args.user!r}")
            return EXIT_PROBLEMS
    try:
        load_config(args.file, reader_uid=reader_uid)
    except ConfigError as exc:
        for key, message in exc.problems:
            print(f"{args.file}: {key}: {message}")
        return EXIT_PROBLEMS
    print(f"{args.file}: OK")
    return EXIT_OK


def register(subparsers: Any) -> None:
    """Add ``config check`` to the ``gateway`` command."""
    config = subparsers.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file; list every problem with its key path")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--user",
        default=None,
        help="check the secret files as this user reads them (owner and mode); default: whoever runs the check",
    )
    check.set_defaults(func=_cmd_config_check)
