"""The ``gateway`` command: the parser, and one-line messages for errors.

The subcommands live in :mod:`gateway.commands`, one module per area; each adds its own through
``register(subparsers)``, listed in :data:`REGISTRARS`. Each subcommand loads the config, calls the core and
maps GatewayError to a one-line message and a non-zero exit code (here).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway import __version__
from gateway.commands import config, daemon, meters, model, outbox, receiver, retina, store, users
from gateway.commands.common import EXIT_ERROR
from gateway.errors import ConfigError, GatewayError
from gateway.logs import setup_logging

Registrar = Callable[[Any], None]
"""``register(subparsers)`` of a commands module."""

REGISTRARS: tuple[Registrar, ...] = (
    daemon.register,  # run, demo
    config.register,  # config check
    outbox.register,  # outbox stats | retry | dead-letters
    receiver.register,  # receiver, receiver refer
    meters.register,  # meters list | scan | sync
    retina.register,  # triage
    model.register,  # model validate | install | rollback | list
    users.register,  # user add | list | disable | enable | passwd
    store.register,  # export, import, prune
)


def build_parser(registrars: Sequence[Registrar] = REGISTRARS) -> argparse.ArgumentParser:
    """The full argument parser (every area's subcommands)."""
    parser = argparse.ArgumentParser(
        prog="gateway", description="Clinic gateway: meters and retinal photos to the hospital platform."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in registrars:
        register(sub)
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
