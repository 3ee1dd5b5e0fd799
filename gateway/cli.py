"""The ``gateway`` command.

Each subcommand loads the config, calls one service and maps GatewayError to a one-line message and a
non-zero exit code. Areas add their subcommands through ``register(subparsers)`` in their own
``commands`` module (listed in ``COMMAND_MODULES``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import pwd
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError, GatewayError
from gateway.logs import setup_logging

COMMAND_MODULES: tuple[str, ...] = (
    "gateway.forward.commands",  # outbox stats | retry
    "gateway.emulate.commands",  # receiver, receiver refer
    "gateway.meters.commands",  # meters list | scan | sync
    "gateway.retina.commands",  # triage
    "gateway.web.commands",  # user add | list | disable
    "gateway.store.commands",  # export, import
)

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


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import COMPONENT_FACTORIES, run_daemon
    from gateway.emulate import synthetic

    config = config_from(args)
    # The demo's synthetic meter runs only when the config's [demo] section asks for it (demo, crash tests).
    return asyncio.run(run_daemon(config, factories=(*COMPONENT_FACTORIES, synthetic.components)))


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


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args)


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The full argument parser (areas' subcommands included)."""
    parser = argparse.ArgumentParser(
        prog="gateway", description="Clinic gateway: meters and retinal photos to the hospital platform."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway daemon (systemd runs this)")
    add_config_argument(run)
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser("demo", help="run a self-contained demo: broker, receiver, emulated meters and camera, pages")
    demo.add_argument(
        "--state-dir", type=Path, default=None, help="where the demo keeps its data (default: ./state/demo)"
    )
    demo.add_argument("--web-port", type=int, default=8080, help="port of the pages (default 8080)")
    demo.add_argument("--no-ble", action="store_true", help="skip the emulated Bluetooth meter")
    demo.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    demo.set_defaults(func=_cmd_demo)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config file; list every problem with its key path")
    check.add_argument("file", type=Path)
    check.add_argument(
        "--user",
        default=None,
        help="check the secret files as this user reads them (owner and mode); default: whoever runs the check",
    )
    check.set_defaults(func=_cmd_config_check)

    for module_name in modules:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    if not logging.getLogger().handlers:  # as basicConfig would, but with the escaping formatter of gateway.logs
        setup_logging("WARNING")  # a command that loads its config sets its own level and format
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
    except ConfigError as exc:
        print(f"gateway: configuration problems in {exc.source}:", file=sys.stderr)
        for key, message in exc.problems:
            print(f"  {key}: {message}", file=sys.stderr)
        return EXIT_ERROR
    except GatewayError as exc:
        print(f"gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
